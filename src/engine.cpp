#include "quantppl/engine.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <random>

#include <fmt/format.h>
#include <torch/torch.h>

#include "quantppl/compare.h"
#include "quantppl/error.h"
#include "quantppl/eval/causal_windows.h"
#include "quantppl/packed_model.h"
#include "quantppl/sha256.h"
#include "quantppl/text_windows.h"

namespace quantppl {
namespace {

constexpr double kZ95 = 1.959963984540054;  // distribution_metrics.cpp's: delta_nll_ci95 = kZ95 * sd of the mean

// Fisher-Yates with an unbiased draw from mt19937_64 (rejection sampling):
// std::shuffle and std::uniform_int_distribution are implementation-defined.
template <typename Window>
void shuffle_windows(std::vector<Window>& windows, uint64_t seed) {
  std::mt19937_64 rng(seed);
  for (size_t i = windows.size(); i > 1; --i) {
    const uint64_t n = i;
    const uint64_t limit = UINT64_MAX - UINT64_MAX % n;  // accept draws below a multiple of n
    uint64_t x = rng();
    while (x >= limit) x = rng();
    std::swap(windows[i - 1], windows[static_cast<size_t>(x % n)]);
  }
}

}  // namespace

EvalSetup prepare_evaluation(const EvalSetupOptions& options) {
  if (options.batch_size <= 0) throw UsageError(fmt::format("--batch-size must be >= 1, got {}", options.batch_size));
  if (options.max_length < 0) throw UsageError(fmt::format("--max-length must be >= 0, got {}", options.max_length));
  if (options.max_tokens < 0) throw UsageError(fmt::format("--max-tokens must be >= 0, got {}", options.max_tokens));
  if (options.ci_target_pct && !(*options.ci_target_pct > 0 && *options.ci_target_pct < 100)) {
    throw UsageError(fmt::format("--ci-target must be a percentage in (0, 100), got {}", *options.ci_target_pct));
  }
  EvalSetup setup;
  const std::string model_path = options.model_path.empty() ? default_model_path() : options.model_path;
  const std::string text_path = options.text_path.empty() ? default_text_path() : options.text_path;
  setup.model = std::make_unique<ContractModel>(load_model_file(model_path, options.tokenizer_path));
  const ModelMetadata& metadata = setup.model->metadata();
  const int64_t max_length = options.max_length == 0 ? metadata.max_length : options.max_length;
  if (max_length > metadata.max_length) {
    throw UsageError(fmt::format("--max-length {} exceeds the model's max_length {} ('{}')", max_length,
                                 metadata.max_length, model_path));
  }
  const PerplexityMode mode = options.mode.value_or(default_mode(metadata));
  check_mode_fits(mode, metadata, model_path);
  if (options.stride != 0 && mode != PerplexityMode::kCausal) {
    throw UsageError(fmt::format("--stride applies to --mode causal (the Hugging Face sliding window), not to --mode {}",
                                 to_string(mode)));
  }
  if (options.stride < 0) throw UsageError(fmt::format("--stride must be >= 1, got {}", options.stride));
  if (!options.tokens_path.empty() && !options.text_path.empty()) {
    throw UsageError("--tokens and --text both given: --tokens FILE replaces the text (give one of them)");
  }
  const bool from_tokens = !options.tokens_path.empty();

  EvalText text;
  std::vector<std::vector<int64_t>> windows;       // T5
  std::vector<ScoredWindow> causal;                 // causal
  if (!metadata.is_causal()) {
    if (from_tokens) {
      text = read_token_file(options.tokens_path, metadata.vocab_size);
      text.token_ids.push_back(metadata.eos_token_id);  // as tokenize_text does
      text.windows = cut_windows(text.token_ids, max_length);
    } else {
      text = load_eval_text(text_path, setup.model->tokenizer(), metadata.eos_token_id, max_length);
    }
    if (options.max_tokens > 0 && static_cast<int64_t>(text.token_ids.size()) > options.max_tokens) {
      text.token_ids.resize(static_cast<size_t>(options.max_tokens));
      text.windows = cut_windows(text.token_ids, max_length);
    }
    windows = text.windows;
    if (options.ci_target_pct) shuffle_windows(windows, options.seed);
    setup.batches = make_batches(windows, mode, options.batch_size, metadata);
  } else {
    text = from_tokens ? read_token_file(options.tokens_path, metadata.vocab_size)
                       : load_eval_ids(text_path, setup.model->tokenizer());
    if (options.max_tokens > 0 && static_cast<int64_t>(text.token_ids.size()) > options.max_tokens) {
      text.token_ids.resize(static_cast<size_t>(options.max_tokens));
    }
    CausalWindowOptions w;
    w.mode = mode;
    w.max_length = max_length;
    w.stride = options.stride;
    w.add_bos = metadata.add_bos;
    w.bos_token_id = metadata.bos_token_id;
    causal = causal_windows(text.token_ids, w);
    if (options.ci_target_pct) shuffle_windows(causal, options.seed);
    setup.batches = make_causal_batches(causal, options.batch_size, metadata);
  }

  setup.selected = select_layers(setup.model->linear_layers(), options.include, options.exclude);
  for (const LinearLayer& l : setup.selected) setup.selected_parameters += l.weight.numel();
  if (options.backup) setup.backup = std::make_unique<WeightBackup>(setup.selected, options.backup_storage);
  if (options.ci_target_pct) {
    std::vector<int64_t> tokens;
    for (const EvalBatch& b : setup.batches) tokens.push_back(b.label_mask.sum().item<int64_t>());
    setup.looks = plan_looks(tokens);
  }

  Provenance& p = setup.provenance;
  p = make_provenance(model_path, setup.model->file_sha256(), options.include, options.exclude);  // hashed while verified
  p.has_text = true;
  p.text_path = from_tokens ? options.tokens_path : text_path;
  p.tokens_path = options.tokens_path;
  p.stride = options.stride;
  p.text_sha256 = text.sha256;
  p.text_tokens = static_cast<int64_t>(text.token_ids.size());
  p.max_tokens = options.max_tokens;
  p.windows = static_cast<int64_t>(metadata.is_causal() ? causal.size() : text.windows.size());
  p.mode = to_string(mode);
  p.max_length = max_length;
  p.batch_size = options.batch_size;
  p.threads = options.threads;
  if (options.ci_target_pct) {
    p.window_order = "shuffled";
    p.seed = options.seed;
    p.ci_target_pct = options.ci_target_pct;
  }
  return setup;
}

MeanEstimate delta_nll_estimate(const DistributionComparison& c) {
  return {c.tokens(), c.delta_nll_mean(), c.delta_nll_ci95() / kZ95};
}

MeanEstimate nll_estimate(const DistributionComparison& c) {
  MeanEstimate e;
  e.n = c.tokens();
  if (e.n < 2) return e;
  const double n = static_cast<double>(e.n);
  e.mean = c.nll_sum() / n;
  const double variance = std::max(0.0, c.nll_sq_sum() / n - e.mean * e.mean) * n / (n - 1);
  e.sd_of_mean = std::sqrt(variance / n);
  return e;
}

LoopResult evaluate_batch_major(ContractModel& model, const std::vector<EvalBatch>& batches, WeightStates& weights,
                                std::vector<Candidate>& candidates, const LookSchedule* looks,
                                std::optional<double> ci_target_pct, const LoopProgress& progress) {
  using Clock = std::chrono::steady_clock;
  const auto seconds_since = [](Clock::time_point t) {
    return std::chrono::duration<double>(Clock::now() - t).count();
  };
  torch::NoGradGuard no_grad;
  LoopResult result;
  std::vector<bool> running(candidates.size(), true);
  size_t quantized = 0;
  for (const Candidate& c : candidates) quantized += c.is_fp32 ? 0 : 1;
  // Nothing can stop without a schedule, or when only fp32 rows without a gate are listed.
  const bool can_stop = looks != nullptr && std::any_of(candidates.begin(), candidates.end(), [](const Candidate& c) {
                          return !c.is_fp32 || c.gate.has_value();
                        });
  // An fp32 row without a gate never asks for more batches: it reports what the reference ran.
  for (size_t i = 0; i < candidates.size(); ++i) {
    if (can_stop && candidates[i].is_fp32 && !candidates[i].gate) running[i] = false;
  }
  const size_t total = batches.size() * (1 + quantized);
  size_t done = 0;
  for (size_t b = 0; b < batches.size(); ++b) {
    if (can_stop && std::none_of(running.begin(), running.end(), [](bool r) { return r; })) break;
    const EvalBatch& batch = batches[b];
    auto started = Clock::now();
    weights.put_fp32();
    const ReferenceBatch reference = make_reference_batch(
        batch_logits(model, batch), batch.labels, batch.label_mask);
    result.fp32.add_reference(reference);
    result.fp32_seconds += seconds_since(started);
    result.fp32_batches += 1;
    if (progress) progress(++done, total);
    for (size_t i = 0; i < candidates.size(); ++i) {
      Candidate& c = candidates[i];
      if (c.is_fp32 || !running[i]) continue;
      started = Clock::now();
      weights.put(i);
      c.comparison.add(reference, batch_logits(model, batch));
      c.seconds += seconds_since(started);
      if (progress) progress(++done, total);
    }
    if (!can_stop || !looks->is_look(b + 1)) continue;
    for (size_t i = 0; i < candidates.size(); ++i) {
      if (!running[i]) continue;
      Candidate& c = candidates[i];
      const DistributionComparison& sums = c.is_fp32 ? result.fp32 : c.comparison;
      // A gated row stops only once its decision is settled: the ratio rule alone would leave the
      // check to judge a perplexity on part of the text against a whole-text expectation.
      const bool stop = c.gate ? gate_settled(nll_estimate(sums), looks->z, c.gate->first, c.gate->second).has_value()
                               : !c.is_fp32 && ci_target_pct &&
                                     ratio_precise_enough(delta_nll_estimate(sums), looks->z, *ci_target_pct);
      if (stop) {
        running[i] = false;
        c.stopped_early = true;
      }
    }
  }
  if (progress) progress(total, total);
  for (Candidate& c : candidates) {
    if (c.is_fp32) c.stopped_early = result.fp32_batches < batches.size();
  }
  return result;
}

}  // namespace quantppl
