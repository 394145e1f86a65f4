#include "quantppl/sensitivity.h"

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cmath>
#include <map>
#include <numeric>
#include <sstream>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "json_rows.h"
#include <torch/torch.h>

#include "quantppl/contract_model.h"
#include "quantppl/default_paths.h"
#include "quantppl/engine.h"
#include "quantppl/error.h"
#include "quantppl/formats/uniform_format.h"
#include "quantppl/model_quantizer.h"
#include "quantppl/packed_model.h"
#include "quantppl/sha256.h"
#include "quantppl/text_windows.h"

namespace quantppl {

const char* const kDefaultKeep = "0,1,2,4,8";

namespace {

using nlohmann::ordered_json;
using json_rows::number_or_null;
using Subset = std::vector<bool>;  // subset[i]: layer i is fake-quantized

// Puts subsets of the layers in place by copying only the layers whose state changes.
class LayerSwitch {
 public:
  // Each layer's quantized weight: a method's result when `method` is given, else format's round to nearest.
  LayerSwitch(WeightBackup& backup, const WeightFormat& format,
              const std::vector<std::unique_ptr<PreparedWeight>>* method)
      : backup_(backup) {
    torch::NoGradGuard no_grad;
    backup_.restore();
    quantized_.reserve(backup_.layers().size());
    for (size_t i = 0; i < backup_.layers().size(); ++i) {
      const torch::Tensor original = backup_.original(i).contiguous();
      torch::Tensor quantized = torch::empty_like(original, torch::MemoryFormat::Contiguous);
      if (method != nullptr) {
        method->at(i)->fake_quantize_into(original, quantized);
      } else {
        format.fake_quantize_into(original, quantized, backup_.layers()[i].name);
      }
      quantized_.push_back(quantized);
    }
    current_.assign(backup_.layers().size(), false);
  }

  void set(const Subset& subset) {
    torch::NoGradGuard no_grad;
    for (size_t i = 0; i < subset.size(); ++i) {
      if (subset[i] == current_[i]) continue;
      backup_.layers()[i].weight.copy_(subset[i] ? quantized_[i] : backup_.original(i));
      current_[i] = subset[i];
    }
  }

 private:
  WeightBackup& backup_;
  std::vector<torch::Tensor> quantized_;
  Subset current_;
};

// The engine's view of a LayerSwitch: candidate i is subset i, fp32 is the empty subset.
class SubsetWeights : public WeightStates {
 public:
  SubsetWeights(LayerSwitch& layers, const std::vector<Subset>& subsets) : layers_(layers), subsets_(subsets) {}
  void put_fp32() override {
    if (!subsets_.empty()) layers_.set(Subset(subsets_.front().size(), false));
  }
  void put(size_t i) override { layers_.set(subsets_[i]); }

 private:
  LayerSwitch& layers_;
  const std::vector<Subset>& subsets_;
};

// One subset's numbers: its comparison with fp32 (or fp32 itself) over the batches it ran.
struct SubsetNumbers {
  double ppl = 0;
  double delta_ppl_pct = 0;
  double kl_mean = 0;
  double delta_nll_mean = 0;
  double delta_nll_ci95 = 0;
  int64_t tokens = 0;
  bool stopped_early = false;
};

// fp32_ppl and fp32_tokens: phase 1's reference. On the same tokens the
// perplexity ratio is taken as before the engine; on fewer (stopped early),
// it is the paired ratio exp(delta_nll_mean) on the tokens the subset ran.
SubsetNumbers numbers_of(const DistributionComparison& c, bool stopped_early, double fp32_ppl, int64_t fp32_tokens) {
  SubsetNumbers n;
  n.tokens = c.tokens();
  n.ppl = std::exp(c.nll_sum() / static_cast<double>(c.tokens()));
  n.delta_ppl_pct = c.tokens() == fp32_tokens ? 100.0 * (n.ppl / fp32_ppl - 1.0) : 100.0 * std::expm1(c.delta_nll_mean());
  n.kl_mean = c.kl_mean();
  n.delta_nll_mean = c.delta_nll_mean();
  n.delta_nll_ci95 = c.delta_nll_ci95();
  n.stopped_early = stopped_early;
  return n;
}

// Batch-major evaluation of `subsets` against fp32 on the engine; the candidates hold the results.
std::vector<Candidate> evaluate_subsets(ContractModel& model, const std::vector<EvalBatch>& batches,
                                        LayerSwitch& layers, const std::vector<Subset>& subsets, LoopResult* fp32,
                                        const SensitivityStopping& stopping, const std::string& stage,
                                        const SensitivityProgress& progress) {
  std::vector<Candidate> candidates(subsets.size());
  for (size_t s = 0; s < subsets.size(); ++s) {
    candidates[s].is_fp32 = std::none_of(subsets[s].begin(), subsets[s].end(), [](bool q) { return q; });
  }
  SubsetWeights weights(layers, subsets);
  *fp32 = evaluate_batch_major(model, batches, weights, candidates, stopping.looks, stopping.ci_target_pct,
                               [&](size_t done, size_t total) {
                                 if (progress) progress(stage, done, total);
                               });
  weights.put_fp32();
  for (size_t s = 0; s < subsets.size(); ++s) {
    if (!candidates[s].is_fp32 && !std::isfinite(candidates[s].comparison.nll_sum())) {
      throw DataError(fmt::format("model '{}': the negative log-likelihood is not finite with quantized layers: "
                                  "the model produced NaN or Inf logits",
                                  model.path()));
    }
  }
  return candidates;
}

// A causal model's part: "layers.N" for a Linear inside decoder block N (Hugging Face names it
// "model.layers.N...." for Llama/Qwen2, "transformer.h.N...." for GPT-2), "lm_head" for the head.
std::string causal_part_of(const std::string& name) {
  if (name.rfind("lm_head", 0) == 0) return "lm_head";
  size_t begin = 0;
  while (begin < name.size()) {
    const size_t end = std::min(name.find('.', begin), name.size());
    const std::string component = name.substr(begin, end - begin);
    if ((component == "layers" || component == "h") && end < name.size()) {
      const size_t digits_end = std::min(name.find('.', end + 1), name.size());
      const std::string index = name.substr(end + 1, digits_end - end - 1);
      if (!index.empty() && index.size() < 10 && std::all_of(index.begin(), index.end(), [](char c) {
            return c >= '0' && c <= '9';
          })) {
        return "layers." + std::to_string(std::stoll(index));
      }
    }
    begin = end + 1;
  }
  return "";
}

std::string part_of(const std::string& name, bool causal) {
  if (causal) return causal_part_of(name);
  if (name.rfind("encoder.", 0) == 0) return "encoder";
  if (name.rfind("decoder.", 0) == 0) return "decoder";
  if (name.rfind("lm_head", 0) == 0) return "lm_head";
  return "";
}

// Evaluates subsets once each: identical subsets share one result.
class SubsetTable {
 public:
  size_t add(const Subset& s) {
    const auto it = index_.find(s);
    if (it != index_.end()) return it->second;
    subsets_.push_back(s);
    index_.emplace(s, subsets_.size() - 1);
    return subsets_.size() - 1;
  }
  const std::vector<Subset>& subsets() const { return subsets_; }

 private:
  std::vector<Subset> subsets_;
  std::map<Subset, size_t> index_;
};

}  // namespace

std::vector<int64_t> parse_keep_list(const std::string& text) {
  std::vector<int64_t> keep;
  std::stringstream in(text);
  std::string item;
  if (text.empty()) throw UsageError("--keep: expected comma-separated non-negative integers, e.g. 0,1,2,4,8, got ''");
  while (std::getline(in, item, ',')) {
    const auto first = item.find_first_not_of(" \t");
    const auto last = item.find_last_not_of(" \t");
    const std::string trimmed = first == std::string::npos ? "" : item.substr(first, last - first + 1);
    if (trimmed.empty() || trimmed.find_first_not_of("0123456789") != std::string::npos || trimmed.size() > 9) {
      throw UsageError(fmt::format("--keep: '{}' is not a non-negative integer (expected e.g. 0,1,2,4,8) in '{}'",
                                   trimmed, text));
    }
    keep.push_back(std::stoll(trimmed));
  }
  if (!text.empty() && text.back() == ',') {
    throw UsageError(fmt::format("--keep: empty item in '{}' (expected e.g. 0,1,2,4,8)", text));
  }
  std::sort(keep.begin(), keep.end());
  keep.erase(std::unique(keep.begin(), keep.end()), keep.end());
  return keep;
}

SensitivityReport run_sensitivity(const SensitivityOptions& options, const SensitivityProgress& progress) {
  using Clock = std::chrono::steady_clock;
  const auto started = Clock::now();
  if (options.variant.is_fp32) {
    throw UsageError("--variant: sensitivity needs a quantized variant, got fp32");
  }
  if (options.batch_size <= 0) throw UsageError(fmt::format("--batch-size must be >= 1, got {}", options.batch_size));
  if (options.max_length < 0) throw UsageError(fmt::format("--max-length must be >= 0, got {}", options.max_length));
  if (options.max_tokens < 0) throw UsageError(fmt::format("--max-tokens must be >= 0, got {}", options.max_tokens));

  EvalSetupOptions setup_options = common_setup_options(options);
  setup_options.max_tokens = options.max_tokens;
  setup_options.backup = false;  // measure_sensitivity keeps its own copy of the selected layers
  EvalSetup setup = prepare_evaluation(setup_options);

  SensitivityStopping stopping;
  stopping.looks = setup.looks ? &*setup.looks : nullptr;
  stopping.ci_target_pct = options.ci_target_pct;
  // A method's weights, computed once from the originals (RTN: the format's rounding, in LayerSwitch).
  std::optional<PreparedVariant> method;
  std::optional<CalibrationProvenance> calibration;
  if (options.variant.method != MethodKind::kRtn) {
    WeightBackup backup(setup.selected);
    const RunCalibration run = calibrate_for_run(*setup.model, setup.selected, {options.variant}, options.methods);
    if (run.active) calibration = run.provenance;
    method = prepare_method_variant(backup, options.variant, run.view(*setup.model));
  }
  SensitivityReport report = measure_sensitivity(*setup.model, setup.batches, setup.selected, *options.variant.format,
                                                 options.keep, progress, stopping, method ? &method->layers : nullptr);
  report.method = method_label(options.variant.method);
  report.calibration = calibration;
  report.provenance = setup.provenance;
  report.variant = options.variant.name;
  if (setup.looks) {
    report.looks = static_cast<int64_t>(setup.looks->after_batches.size());
    report.stop_z = setup.looks->z;
  }
  report.seconds = std::chrono::duration<double>(Clock::now() - started).count();
  return report;
}

SensitivityReport measure_sensitivity(ContractModel& model, const std::vector<EvalBatch>& batches,
                                      const std::vector<LinearLayer>& selected, const WeightFormat& format,
                                      const std::vector<int64_t>& keep, const SensitivityProgress& progress,
                                      const SensitivityStopping& stopping,
                                      const std::vector<std::unique_ptr<PreparedWeight>>* method) {
  if (method != nullptr && method->size() != selected.size()) {
    throw UsageError(fmt::format("measure_sensitivity: {} prepared weights for {} layers", method->size(), selected.size()));
  }
  for (const int64_t k : keep) {
    if (k < 0) throw UsageError(fmt::format("--keep values must be >= 0, got {}", k));
  }
  SensitivityReport report;
  WeightBackup backup(selected);
  // Puts the originals back however this function is left.
  struct RestoreOnExit {
    WeightBackup& backup;
    ~RestoreOnExit() {
      try {
        backup.restore();
      } catch (...) {
      }
    }
  } restore_on_exit{backup};
  const size_t n = backup.layers().size();
  report.tokens = count_label_tokens(batches);

  LayerSwitch layers(backup, format, method);

  // Phase 1: every single layer, all layers, each part.
  SubsetTable phase1;
  for (size_t i = 0; i < n; ++i) {
    Subset s(n, false);
    s[i] = true;
    phase1.add(s);
  }
  const size_t all_index = phase1.add(Subset(n, true));
  // T5: encoder, decoder, lm_head. Causal: layers.0, layers.1, ... (in model order), then lm_head.
  const bool causal = model.metadata().is_causal();
  std::vector<std::string> part_names{"encoder", "decoder", "lm_head"};
  if (causal) {
    part_names.clear();
    for (size_t i = 0; i < n; ++i) {
      const std::string part = part_of(backup.layers()[i].name, true);
      if (part.empty() || part == "lm_head") continue;
      if (std::find(part_names.begin(), part_names.end(), part) == part_names.end()) part_names.push_back(part);
    }
    part_names.push_back("lm_head");
  }
  std::vector<std::optional<size_t>> part_index;
  std::vector<int64_t> part_layers;
  for (const std::string& part : part_names) {
    Subset s(n, false);
    int64_t count = 0;
    for (size_t i = 0; i < n; ++i) {
      s[i] = part_of(backup.layers()[i].name, causal) == part;
      count += s[i] ? 1 : 0;
    }
    part_layers.push_back(count);
    part_index.push_back(count > 0 ? std::optional<size_t>(phase1.add(s)) : std::nullopt);
  }
  LoopResult fp32;
  const std::vector<Candidate> run1 =
      evaluate_subsets(model, batches, layers, phase1.subsets(), &fp32, stopping, "single layers", progress);
  report.fp32_tokens = fp32.fp32.tokens();
  report.fp32_ppl = std::exp(fp32.fp32.nll_sum() / static_cast<double>(fp32.fp32.tokens()));
  if (!std::isfinite(report.fp32_ppl)) {
    throw DataError(fmt::format("model '{}': the fp32 perplexity is not finite", model.path()));
  }
  const auto numbers = [&](const Candidate& c) {
    return c.is_fp32 ? numbers_of(fp32.fp32, c.stopped_early, report.fp32_ppl, report.fp32_tokens)
                     : numbers_of(c.comparison, c.stopped_early, report.fp32_ppl, report.fp32_tokens);
  };
  std::vector<SubsetNumbers> sums1;
  for (const Candidate& c : run1) sums1.push_back(numbers(c));
  report.all_quantized_ppl = sums1[all_index].ppl;
  report.all_quantized_delta_ppl_pct = sums1[all_index].delta_ppl_pct;
  report.all_quantized_kl_mean = sums1[all_index].kl_mean;

  // Ranking: most damaging first by delta_ppl_pct (the paired ratio when
  // subsets stopped early on different tokens), then by perplexity; ties keep
  // the model's order (stable sort).
  std::vector<size_t> order(n);
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) {
    if (sums1[a].delta_ppl_pct != sums1[b].delta_ppl_pct) return sums1[a].delta_ppl_pct > sums1[b].delta_ppl_pct;
    return sums1[a].ppl > sums1[b].ppl;
  });
  for (size_t r = 0; r < n; ++r) {
    const size_t i = order[r];
    LayerSensitivity l;
    l.name = backup.layers()[i].name;
    l.rank = static_cast<int64_t>(r + 1);
    l.parameters = backup.original(i).numel();
    l.ppl = sums1[i].ppl;
    l.delta_ppl_pct = sums1[i].delta_ppl_pct;
    l.kl_mean = sums1[i].kl_mean;
    l.delta_nll_mean = sums1[i].delta_nll_mean;
    l.delta_nll_ci95 = sums1[i].delta_nll_ci95;
    l.tokens = sums1[i].tokens;
    l.stopped_early = sums1[i].stopped_early;
    report.layers.push_back(l);
  }
  for (size_t p = 0; p < part_names.size(); ++p) {
    PartResult part;
    part.part = part_names[p];
    part.layers = part_layers[p];
    if (part_index[p]) {
      const SubsetNumbers& s = sums1[*part_index[p]];
      part.ppl = s.ppl;
      part.delta_ppl_pct = s.delta_ppl_pct;
      part.kl_mean = s.kl_mean;
      part.delta_nll_mean = s.delta_nll_mean;
      part.delta_nll_ci95 = s.delta_nll_ci95;
    }
    report.parts.push_back(part);
  }

  // Phase 2: keep the K most damaging layers in fp32. Subsets already measured are not re-run.
  std::vector<int64_t> keep_values;
  for (const int64_t k : keep) keep_values.push_back(std::min<int64_t>(k, static_cast<int64_t>(n)));
  std::sort(keep_values.begin(), keep_values.end());
  keep_values.erase(std::unique(keep_values.begin(), keep_values.end()), keep_values.end());
  SubsetTable phase2;
  std::vector<size_t> keep_index;
  std::map<Subset, SubsetNumbers> known;
  for (size_t i = 0; i < phase1.subsets().size(); ++i) known.emplace(phase1.subsets()[i], sums1[i]);
  SubsetNumbers fp32_as_subset;  // keep L: fp32 itself, KL and NLL change 0 by construction
  fp32_as_subset.ppl = report.fp32_ppl;
  fp32_as_subset.tokens = report.fp32_tokens;
  fp32_as_subset.stopped_early = report.fp32_tokens < report.tokens;
  known.emplace(Subset(n, false), fp32_as_subset);
  std::vector<Subset> keep_subsets;
  for (const int64_t k : keep_values) {
    Subset s(n, true);
    for (int64_t r = 0; r < k; ++r) s[order[static_cast<size_t>(r)]] = false;
    keep_subsets.push_back(s);
    if (known.count(s) == 0) keep_index.push_back(phase2.add(s));
    else keep_index.push_back(SIZE_MAX);
  }
  // The keep-K subsets need fp32 logits again as their KL and NLL-change
  // reference (one forward per batch, while some subset runs); that second
  // reference's own sums are not used: fp32_ppl stays phase 1's.
  LoopResult fp32_again;
  const std::vector<Candidate> run2 =
      phase2.subsets().empty()
          ? std::vector<Candidate>{}
          : evaluate_subsets(model, batches, layers, phase2.subsets(), &fp32_again, stopping, "keep K", progress);
  for (size_t j = 0; j < keep_values.size(); ++j) {
    const SubsetNumbers s = keep_index[j] == SIZE_MAX ? known.at(keep_subsets[j]) : numbers(run2[keep_index[j]]);
    KeepResult kr;
    kr.keep = keep_values[j];
    for (int64_t r = 0; r < kr.keep; ++r) kr.kept_layers.push_back(report.layers[static_cast<size_t>(r)].name);
    kr.ppl = s.ppl;
    kr.delta_ppl_pct = s.delta_ppl_pct;
    kr.kl_mean = s.kl_mean;
    kr.delta_nll_mean = s.delta_nll_mean;
    kr.delta_nll_ci95 = s.delta_nll_ci95;
    kr.tokens = s.tokens;
    kr.stopped_early = s.stopped_early;
    report.keep.push_back(kr);
  }
  return report;
}

std::string format_sensitivity_json(const SensitivityReport& r) {
  ordered_json j = to_json(r.provenance);
  j["variant"] = r.variant;
  j["method"] = r.method;
  j["calibration"] = json_rows::calibration_json(r.calibration);
  j["tokens"] = r.tokens;
  j["fp32_tokens"] = r.fp32_tokens;
  j["looks"] = r.provenance.ci_target_pct ? ordered_json(r.looks) : ordered_json(nullptr);
  j["stop_z"] = r.provenance.ci_target_pct ? number_or_null(r.stop_z) : ordered_json(nullptr);
  j["fp32_ppl"] = r.fp32_ppl;
  j["all_quantized_ppl"] = r.all_quantized_ppl;
  j["all_quantized_delta_ppl_pct"] = r.all_quantized_delta_ppl_pct;
  j["all_quantized_kl_mean"] = r.all_quantized_kl_mean;
  j["layers"] = ordered_json::array();
  for (const LayerSensitivity& l : r.layers) {
    ordered_json o;
    o["name"] = l.name;
    o["rank"] = l.rank;
    o["parameters"] = l.parameters;
    o["ppl"] = l.ppl;
    o["delta_ppl_pct"] = l.delta_ppl_pct;
    o["kl_mean"] = l.kl_mean;
    o["delta_nll_mean"] = number_or_null(l.delta_nll_mean);
    o["delta_nll_ci95"] = number_or_null(l.delta_nll_ci95);
    o["tokens"] = l.tokens;
    o["stopped_early"] = l.stopped_early;
    j["layers"].push_back(o);
  }
  j["keep"] = ordered_json::array();
  for (const KeepResult& k : r.keep) {
    ordered_json o;
    o["keep"] = k.keep;
    o["kept_layers"] = k.kept_layers;
    o["ppl"] = k.ppl;
    o["delta_ppl_pct"] = k.delta_ppl_pct;
    o["kl_mean"] = k.kl_mean;
    o["delta_nll_mean"] = number_or_null(k.delta_nll_mean);
    o["delta_nll_ci95"] = number_or_null(k.delta_nll_ci95);
    o["tokens"] = k.tokens;
    o["stopped_early"] = k.stopped_early;
    j["keep"].push_back(o);
  }
  j["parts"] = ordered_json::array();
  for (const PartResult& p : r.parts) {
    ordered_json o;
    o["part"] = p.part;
    o["layers"] = p.layers;
    o["ppl"] = number_or_null(p.ppl);
    o["delta_ppl_pct"] = number_or_null(p.delta_ppl_pct);
    o["kl_mean"] = number_or_null(p.kl_mean);
    o["delta_nll_mean"] = number_or_null(p.delta_nll_mean);
    o["delta_nll_ci95"] = number_or_null(p.delta_nll_ci95);
    j["parts"].push_back(o);
  }
  j["seconds"] = r.seconds;
  return j.dump(2) + "\n";
}

std::string format_sensitivity_csv(const SensitivityReport& r) {
  std::vector<ordered_json> rows;
  const ordered_json provenance = to_json(r.provenance);
  for (const LayerSensitivity& l : r.layers) {
    ordered_json row;
    row["rank"] = l.rank;
    row["name"] = l.name;
    row["parameters"] = l.parameters;
    row["ppl"] = l.ppl;
    row["delta_ppl_pct"] = l.delta_ppl_pct;
    row["kl_mean"] = l.kl_mean;
    row["delta_nll_mean"] = number_or_null(l.delta_nll_mean);
    row["delta_nll_ci95"] = number_or_null(l.delta_nll_ci95);
    row["tokens"] = l.tokens;
    row["stopped_early"] = l.stopped_early;
    row["fp32_ppl"] = r.fp32_ppl;
    row["all_quantized_ppl"] = r.all_quantized_ppl;
    row["variant"] = r.variant;
    row["method"] = r.method;
    for (const auto& [key, value] : provenance.items()) row[key] = value;
    rows.push_back(std::move(row));
  }
  return json_rows::csv_table(rows);
}

std::string format_sensitivity_table(const SensitivityReport& r) {
  std::string out;
  const Provenance& p = r.provenance;
  out += fmt::format("model    {}  (sha256 {})\n", p.model_path, p.model_sha256.substr(0, 12));
  out += fmt::format("text     {}  (sha256 {}, {} tokens{}, {} windows of <= {}, mode {})\n", p.text_path,
                     p.text_sha256.substr(0, 12), p.text_tokens,
                     p.max_tokens > 0 ? fmt::format(" (--max-tokens {})", p.max_tokens) : "", p.windows, p.max_length,
                     p.mode);
  if (p.ci_target_pct) {
    out += fmt::format("early    --ci-target {}%: windows shuffled with seed {}, {} looks at z = {:.3f}; a row marked * "
                       "stopped early (its numbers are on its own tokens)\n",
                       *p.ci_target_pct, p.seed.value_or(0), r.looks, r.stop_z);
  }
  out += fmt::format("variant  {}: fp32 ppl {:.4f}, all {} layers quantized {:.4f} ({:+.3f}%, KL {:.3g})\n\n",
                     r.variant, r.fp32_ppl, r.layers.size(), r.all_quantized_ppl, r.all_quantized_delta_ppl_pct,
                     r.all_quantized_kl_mean);
  size_t width = 5;
  for (const LayerSensitivity& l : r.layers) width = std::max(width, l.name.size());
  out += fmt::format("{:>4}  {:<{}} {:>14} {:>10} {:>22} {:>10}\n", "rank", "layer quantized alone", width,
                     "perplexity", "vs fp32", "dNLL/token (95% CI)", "KL mean");
  for (const LayerSensitivity& l : r.layers) {
    out += fmt::format("{:>4}  {:<{}} {:>14.4f} {:>+9.3f}% {:>22} {:>10.3g}{}\n", l.rank, l.name, width, l.ppl,
                       l.delta_ppl_pct, fmt::format("{:+.5f} ± {:.5f}", l.delta_nll_mean, l.delta_nll_ci95),
                       l.kl_mean, l.stopped_early ? " *" : "");
  }
  out += fmt::format("\n{:>6}  {:>14} {:>10} {:>10}   kept in fp32 (most damaging first)\n", "keep K", "perplexity",
                     "vs fp32", "KL mean");
  for (const KeepResult& k : r.keep) {
    std::string kept;
    for (size_t i = 0; i < k.kept_layers.size() && i < 4; ++i) kept += (i == 0 ? "" : ", ") + k.kept_layers[i];
    if (k.kept_layers.size() > 4) kept += fmt::format(", ... ({} more)", k.kept_layers.size() - 4);
    out += fmt::format("{:>6}  {:>14.4f} {:>+9.3f}% {:>10.3g}   {}\n", k.keep, k.ppl, k.delta_ppl_pct, k.kl_mean,
                       kept.empty() ? "-" : kept);
  }
  out += fmt::format("\n{:<8} {:>6} {:>14} {:>10} {:>10}   (only that part quantized)\n", "part", "layers",
                     "perplexity", "vs fp32", "KL mean");
  for (const PartResult& p : r.parts) {
    if (p.ppl) {
      out += fmt::format("{:<8} {:>6} {:>14.4f} {:>+9.3f}% {:>10.3g}\n", p.part, p.layers, *p.ppl, *p.delta_ppl_pct,
                         *p.kl_mean);
    } else {
      out += fmt::format("{:<8} {:>6} {:>14} {:>10} {:>10}\n", p.part, 0, "-", "-", "-");
    }
  }
  out += fmt::format("\n{} tokens predicted per run; KL is KL(P_fp32 || P_quantized) in nats per token; dNLL is the paired "
                     "per-token NLL change against fp32 with its 95% interval: layers whose intervals overlap are not "
                     "reliably ranked.\n",
                     r.tokens);
  return out;
}

SensitivityReport measure_sensitivity(ContractModel& model, const std::vector<EvalBatch>& batches,
                                      const std::vector<LinearLayer>& layers, const QuantConfig& config,
                                      const std::vector<int64_t>& keep, const SensitivityProgress& progress,
                                      const SensitivityStopping& stopping) {
  return measure_sensitivity(model, batches, layers, UniformFormat(config), keep, progress, stopping);
}

}  // namespace quantppl
