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
#include "quantppl/error_metrics.h"
#include "quantppl/error.h"
#include "quantppl/model_quantizer.h"
#include "quantppl/packed_model.h"
#include "quantppl/sha256.h"
#include "quantppl/text_windows.h"

namespace quantppl {

namespace {

std::string libtorch_version() {
  return fmt::format("{}.{}.{}", TORCH_VERSION_MAJOR, TORCH_VERSION_MINOR, TORCH_VERSION_PATCH);
}

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
  CompareReport report;
  report.model_path = options.model_path.empty() ? default_model_path() : options.model_path;
  report.text_path = options.text_path.empty() ? default_text_path() : options.text_path;
  ContractModel model = load_model_file(report.model_path, options.tokenizer_path);
  const ModelMetadata& metadata = model.metadata();

  report.max_length = options.max_length == 0 ? metadata.max_length : options.max_length;
  if (report.max_length > metadata.max_length) {
    throw UsageError(fmt::format("--max-length {} exceeds the model's max_length {} ('{}')", report.max_length,
                                 metadata.max_length, report.model_path));
  }
  const EvalText text = load_eval_text(report.text_path, model.tokenizer(), metadata.eos_token_id, report.max_length);
  const std::vector<EvalBatch> batches = make_batches(text.windows, options.mode, options.batch_size, metadata);

  // Only the selected layers are backed up; the backup is made once.
  WeightBackup backup(select_layers(model.linear_layers(), options.include, options.exclude), options.backup);
  report.backup = to_string(backup.storage());

  report.mode = to_string(options.mode);
  report.batch_size = options.batch_size;
  report.threads = options.threads;
  report.include = options.include;
  report.exclude = options.exclude;
  report.layers_quantized = static_cast<int64_t>(backup.layers().size());
  report.parameters_quantized = backup.parameter_count();
  report.model_sha256 = model.file_sha256();  // hashed while its integrity was verified
  report.text_sha256 = text.sha256;
  report.text_tokens = static_cast<int64_t>(text.token_ids.size());
  report.windows = static_cast<int64_t>(text.windows.size());
  report.libtorch_version = libtorch_version();
  report.quantppl_version = QUANTPPL_VERSION;

  // Per variant: its parameters (chosen once) and its running comparison with fp32.
  struct VariantRun {
    const Variant* variant;
    std::vector<QParams> params;
    DistributionComparison comparison;
    double seconds = 0;
  };
  report.load_seconds = seconds_since(run_started);
  std::vector<VariantRun> runs;
  runs.reserve(options.variants.size());
  for (size_t i = 0; i < options.variants.size(); ++i) {
    const Variant& variant = options.variants[i];
    VariantRun run{&variant, {}, {}, 0};
    VariantResult result;
    result.variant = variant.name;
    result.spec = canonical_spec(variant);
    result.is_fp32 = variant.is_fp32;
    result.fp32_bytes = 4 * backup.parameter_count();
    result.packed_bytes = result.fp32_bytes;
    if (!variant.is_fp32) {
      if (progress) progress("choosing parameters", 0, 1, i, options.variants.size());
      const auto started = Clock::now();
      run.params = choose_variant_params(backup, variant.config);
      apply_variant_params(backup, variant.config, run.params);
      ErrorMetrics total;
      for (size_t l = 0; l < backup.layers().size(); ++l) {
        total.merge(error_metrics(backup.original(l), backup.layers()[l].weight));
        backup.release(l);
      }
      result.weight_mse = total.mse();
      result.weight_sqnr_db = total.sqnr_db();
      result.packed_bytes = packed_size_bytes(backup.layers(), variant.config, run.params);
      run.seconds += seconds_since(started);
    }
    runs.push_back(std::move(run));
    report.results.push_back(result);
  }

  // Batch-major evaluation: fp32 first, then every variant on the same batch.
  DistributionComparison fp32_self;  // fp32 against itself: the reference's own NLL sums, and every fp32 row
  double fp32_seconds = 0;
  torch::NoGradGuard no_grad;
  // Choosing parameters left the last variant's weights in place; after
  // that, a restore is needed only when a variant ran on the previous batch.
  bool weights_original =
      std::none_of(runs.begin(), runs.end(), [](const VariantRun& r) { return !r.variant->is_fp32; });
  for (size_t b = 0; b < batches.size(); ++b) {
    const EvalBatch& batch = batches[b];
    auto started = Clock::now();
    if (!weights_original) backup.restore();
    weights_original = true;
    const ReferenceBatch reference = make_reference_batch(
        model.forward(batch.input_ids, batch.attention_mask, batch.decoder_input_ids), batch.labels, batch.label_mask);
    fp32_self.add_reference(reference);
    fp32_seconds += seconds_since(started);
    for (VariantRun& run : runs) {
      if (run.variant->is_fp32) continue;  // an fp32 row is fp32_self (below)
      started = Clock::now();
      apply_variant_params(backup, run.variant->config, run.params);
      weights_original = false;
      run.comparison.add(reference, model.forward(batch.input_ids, batch.attention_mask, batch.decoder_input_ids));
      run.seconds += seconds_since(started);
    }
    if (progress) progress("evaluating", 0, 1, b + 1, batches.size());
  }
  if (!weights_original) backup.restore();

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
    r.delta_ppl_pct = 100.0 * (r.ppl / fp32_ppl - 1.0);
    r.distribution = c.summarize();
    r.kl_mean = r.distribution.kl.mean;
    r.kl_p99 = r.distribution.kl.p99.value_or(std::numeric_limits<double>::quiet_NaN());
    r.kl_max = r.distribution.kl.max;
    r.top1_agreement = r.distribution.top1_agreement;
    r.delta_nll_mean = r.distribution.delta_nll_mean;
    r.delta_nll_ci95 = r.distribution.delta_nll_ci95;
    r.seconds = runs[i].variant->is_fp32 ? fp32_seconds : runs[i].seconds;
  }
  report.total_seconds = seconds_since(run_started);
  return report;
}

}  // namespace quantppl
