#include "quantppl/compare.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <limits>

#include <fmt/format.h>
#include <torch/torch.h>
#include <torch/version.h>

#include "quantppl/contract_model.h"
#include "quantppl/distribution_metrics.h"
#include "quantppl/engine.h"
#include "quantppl/error_metrics.h"
#include "quantppl/error.h"
#include "quantppl/model_quantizer.h"
#include "quantppl/packed_model.h"
#include "quantppl/sha256.h"
#include "quantppl/text_windows.h"

namespace quantppl {

namespace {

// Compare's weights: fp32 = the backup's originals, candidate i = variant i
// written from its prepared parameters.
//
// The batch-major loop puts every variant in place once per batch. Writing a
// variant means one fake-quantize pass over every selected weight (~50 ms for
// flan-t5-small's 60 M weights here), 2 x batches x variants passes in all,
// where a variant-major pipeline (the seed tutorial's) quantizes once per
// variant: on a 7k-token text (14 windows) that alone made quantppl slower
// than the tutorial's Python. So when every variant's weights fit in
// kVariantCacheBytes, each variant is fake-quantized once, into tensors of
// its own, and putting a variant (or fp32) in place is Tensor::set_data on
// each weight: no copy at all. The live weights' own storage is kept as the
// fp32 state (restored from the backup once, never written while cached), so
// backup.restore() and finish() still see the storage the model was loaded
// with. Otherwise (larger models, many variants) the variant is written from
// its parameters on each put, as before. Both give bit-identical weights.
constexpr int64_t kVariantCacheBytes = int64_t{4} << 30;

class VariantWeights : public WeightStates {
 public:
  VariantWeights(WeightBackup* backup, const std::vector<std::vector<std::unique_ptr<PreparedWeight>>>& prepared,
                 bool original, int64_t quantized_variant_bytes)
      : backup_(backup), prepared_(prepared), original_(original) {
    if (backup_ == nullptr) return;
    cached_ = quantized_variant_bytes <= kVariantCacheBytes;
    if (!cached_) return;
    if (!original_) backup_->restore();  // the live storage holds fp32 from here on
    original_ = true;
    for (const LinearLayer& layer : backup_->layers()) own_.push_back(layer.weight.detach());
    cache_.resize(prepared_.size());
  }
  void put_fp32() override {
    if (cached_) {
      swap_in(own_);
    } else if (!original_) {
      backup_->restore();
    }
    original_ = true;
  }
  void put(size_t i) override {
    original_ = false;
    if (!cached_) {
      apply_prepared(*backup_, prepared_[i]);
      return;
    }
    std::vector<torch::Tensor>& weights = cache_[i];
    if (weights.empty()) {
      torch::NoGradGuard no_grad;
      for (size_t l = 0; l < prepared_[i].size(); ++l) {
        torch::Tensor w = torch::empty_like(own_[l]);
        prepared_[i][l]->fake_quantize_into(backup_->original(l), w);
        backup_->release(l);
        weights.push_back(std::move(w));
      }
    }
    swap_in(weights);
  }
  // Back to the loaded storage holding fp32, and the cached variants freed.
  void finish() {
    put_fp32();
    cache_.clear();
  }

 private:
  void swap_in(const std::vector<torch::Tensor>& weights) {
    torch::NoGradGuard no_grad;
    for (size_t l = 0; l < weights.size(); ++l) {
      torch::Tensor live = backup_->layers()[l].weight;
      live.set_data(weights[l]);
    }
  }

  WeightBackup* backup_;
  const std::vector<std::vector<std::unique_ptr<PreparedWeight>>>& prepared_;
  bool original_;
  bool cached_ = false;
  std::vector<torch::Tensor> own_;                 // the loaded storage: fp32 while cached
  std::vector<std::vector<torch::Tensor>> cache_;  // per variant, filled on its first put
};

}  // namespace

CompareReport run_compare(const CompareOptions& options, const CompareProgress& progress) {
  if (options.variants.empty()) throw UsageError("--variants: nothing to evaluate");
  if (options.batch_size <= 0) throw UsageError(fmt::format("--batch-size must be >= 1, got {}", options.batch_size));
  if (options.max_length < 0) throw UsageError(fmt::format("--max-length must be >= 0, got {}", options.max_length));

  using Clock = std::chrono::steady_clock;
  const auto seconds_since = [](Clock::time_point t) {
    return std::chrono::duration<double>(Clock::now() - t).count();
  };
  const auto run_started = Clock::now();
  const bool any_quantized =
      std::any_of(options.variants.begin(), options.variants.end(), [](const Variant& v) { return !v.is_fp32; });
  EvalSetupOptions setup_options = common_setup_options(options);
  setup_options.backup = any_quantized;  // fp32 alone changes no weight: no copy
  setup_options.backup_storage = options.backup;
  EvalSetup setup = prepare_evaluation(setup_options);
  ContractModel& model = *setup.model;
  WeightBackup* backup = setup.backup.get();

  CompareReport report;
  report.provenance = setup.provenance;
  report.backup = backup != nullptr ? to_string(backup->storage()) : "none";
  report.layers_quantized = static_cast<int64_t>(setup.selected.size());
  report.parameters_quantized = setup.selected_parameters;
  if (setup.looks) {
    report.looks = static_cast<int64_t>(setup.looks->after_batches.size());
    report.stop_z = setup.looks->z;
  }

  // Calibration (once, fp32 weights in place) for the variants that need it.
  const auto calibration_started = Clock::now();
  const RunCalibration calibration =
      any_quantized ? calibrate_for_run(model, setup.selected, options.variants, options.methods) : RunCalibration{};
  if (calibration.active) report.calibration_seconds = seconds_since(calibration_started);

  // Per variant: its parameters (chosen once) and its running comparison with fp32.
  report.load_seconds = seconds_since(run_started);
  std::vector<std::vector<std::unique_ptr<PreparedWeight>>> prepared(options.variants.size());
  std::vector<Candidate> candidates(options.variants.size());
  for (size_t i = 0; i < options.variants.size(); ++i) {
    const Variant& variant = options.variants[i];
    Candidate& candidate = candidates[i];
    candidate.is_fp32 = variant.is_fp32;
    const auto band = options.gate_bands.find(variant.name);
    if (options.ci_target_pct && band != options.gate_bands.end()) candidate.gate = band->second;
    VariantResult result;
    result.variant = variant.name;
    result.spec = canonical_spec(variant);
    result.is_fp32 = variant.is_fp32;
    if (!variant.is_fp32) result.method = method_label(variant.method);
    if (variant_needs_calibration(variant)) result.calibration = calibration.provenance;
    result.fp32_bytes = 4 * setup.selected_parameters;
    result.packed_bytes = result.fp32_bytes;
    if (!variant.is_fp32) {
      if (progress) progress("choosing parameters", 0, 1, i, options.variants.size());
      const auto started = Clock::now();
      prepared[i] = prepare_method_variant(*backup, variant, calibration.view(model)).layers;
      apply_prepared(*backup, prepared[i]);
      ErrorMetrics total;
      for (size_t l = 0; l < backup->layers().size(); ++l) {
        total.merge(error_metrics(backup->original(l), backup->layers()[l].weight));
        backup->release(l);
      }
      result.weight_mse = total.mse();
      result.weight_sqnr_db = total.sqnr_db();
      result.packed_bytes = prepared_packed_bytes(*backup, *variant.format, prepared[i]);
      candidate.seconds += seconds_since(started);
      result.method_seconds = candidate.seconds;
    }
    if (setup.selected_parameters > 0) {
      result.bits_per_weight = 8.0 * static_cast<double>(*result.packed_bytes) / static_cast<double>(setup.selected_parameters);
    }
    report.results.push_back(result);
  }

  // Batch-major evaluation: fp32 first, then every variant on the same batch.
  // Choosing parameters left the last variant's weights in place.
  const size_t batch_count = setup.batches.size();
  const size_t evaluations_per_batch = 1 + static_cast<size_t>(std::count_if(
      options.variants.begin(), options.variants.end(), [](const Variant& v) { return !v.is_fp32; }));
  VariantWeights weights(backup, prepared, /*original=*/!any_quantized,
                         static_cast<int64_t>(evaluations_per_batch - 1) * 4 * setup.selected_parameters);
  const LoopResult loop = evaluate_batch_major(
      model, setup.batches, weights, candidates, setup.looks ? &*setup.looks : nullptr, options.ci_target_pct,
      [&](size_t done, size_t total) {
        if (progress) progress("evaluating", 0, 1, done == total ? batch_count : done / evaluations_per_batch, batch_count);
      });
  if (backup != nullptr) weights.finish();
  const DistributionComparison& fp32_self = loop.fp32;
  const double fp32_seconds = loop.fp32_seconds;
  struct RunView {
    const Variant* variant;
    const DistributionComparison& comparison;
    double seconds;
    bool stopped_early;
  };
  std::vector<RunView> runs;
  for (size_t i = 0; i < candidates.size(); ++i) {
    runs.push_back({&options.variants[i], candidates[i].comparison, candidates[i].seconds, candidates[i].stopped_early});
  }

  const double fp32_ppl = std::exp(fp32_self.nll_sum() / static_cast<double>(fp32_self.tokens()));
  for (size_t i = 0; i < runs.size(); ++i) {
    const DistributionComparison& c = runs[i].variant->is_fp32 ? fp32_self : runs[i].comparison;
    VariantResult& r = report.results[i];
    PerplexityResult ppl;
    ppl.nll_sum = c.nll_sum();
    ppl.nll_sq_sum = c.nll_sq_sum();
    ppl.tokens = c.tokens();
    if (!std::isfinite(ppl.nll_sum)) {
      throw DataError(fmt::format("variant {}: the negative log-likelihood is not finite: the model produced NaN or Inf logits",
                                  r.variant));
    }
    r.ppl = ppl.ppl();
    r.nll = ppl.mean_nll();
    r.ppl_stderr = ppl.ppl_stderr();
    r.tokens = ppl.tokens;
    // Early stopping: on unequal token sets only the paired ratio compares like with like (compare.h).
    r.delta_ppl_pct = c.tokens() == fp32_self.tokens() ? 100.0 * (r.ppl / fp32_ppl - 1.0)
                                                        : 100.0 * std::expm1(c.delta_nll_mean());
    r.distribution = c.summarize();
    r.kl_mean = r.distribution.kl.mean;
    r.kl_p99 = r.distribution.kl.p99.value_or(std::numeric_limits<double>::quiet_NaN());
    r.kl_max = r.distribution.kl.max;
    r.top1_agreement = r.distribution.top1_agreement;
    r.delta_nll_mean = r.distribution.delta_nll_mean;
    r.delta_nll_ci95 = r.distribution.delta_nll_ci95;
    r.seconds = runs[i].variant->is_fp32 ? fp32_seconds : runs[i].seconds;
    r.stopped_early = runs[i].stopped_early;
  }
  // Methods against their format's round to nearest, paired token by token.
  for (size_t i = 0; i < runs.size(); ++i) {
    const Variant& v = options.variants[i];
    if (v.is_fp32 || v.method == MethodKind::kRtn) continue;
    for (size_t j = 0; j < runs.size(); ++j) {
      const Variant& rtn = options.variants[j];
      if (rtn.is_fp32 || rtn.method != MethodKind::kRtn || rtn.format->spec() != v.format->spec()) continue;
      if (const auto d = paired_nll_difference(runs[i].comparison, runs[j].comparison)) {
        report.results[i].rtn_delta_nll_mean = d->mean;
        report.results[i].rtn_delta_nll_ci95 = d->ci95;
      }
      break;
    }
  }
  report.total_seconds = seconds_since(run_started);
  return report;
}

}  // namespace quantppl
