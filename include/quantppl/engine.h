// The evaluation engine shared by `compare` and `sensitivity`: one setup step
// and one batch-major loop.
//
// Setup (prepare_evaluation): load the model (and tokenizer), read and
// tokenize the text or read --tokens FILE (optionally only its first
// max_tokens tokens), cut the windows, build the batches once (perplexity.h
// for T5, eval/causal_windows.h for causal models), select the Linear layers
// (--include/--exclude) and, only when a quantized variant will run, back up
// their weights once (model_quantizer.h); the run's Provenance is filled here.
//
// Window order: the text's order (then make_batches' longest-first sort),
// unless early stopping is on (--ci-target): then the windows are permuted
// by a Fisher-Yates shuffle driven by std::mt19937_64(seed) (both fully
// specified by the C++ standard, so the order is the same on every platform
// and for every variant) before batching, so that any prefix of the batches
// is a random sample of windows (early_stopping.h).
//
// Loop (evaluate_batch_major): for each batch, the fp32 logits are computed
// once (make_reference_batch) and every candidate still running is put in
// place by the caller's WeightStates and compared with them by
// DistributionComparison::add — no log_softmax tensor, and never more than
// one batch of fp32 logits in memory. A candidate that is fp32 itself costs
// nothing: its numbers are the reference's own sums (LoopResult::fp32).
// With a LookSchedule, after each look batch every running candidate is
// tested with early_stopping.h's rules and stops when they say so (a
// candidate with a --check gate by rule 2 only: its check compares its
// perplexity with a whole-text expectation, which only a settled decision
// makes safe on part of the text; the others by rule 1); fp32 stops
// too once no candidate needs it any more (the reference is needed only to
// compare with, or for an fp32 row whose --check decision is still open).
// Without a schedule every candidate sees every batch, in the same
// operations as before the engine existed (the results are bit-identical).
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "quantppl/contract_model.h"
#include "quantppl/distribution_metrics.h"
#include "quantppl/early_stopping.h"
#include "quantppl/model_quantizer.h"
#include "quantppl/perplexity.h"
#include "quantppl/provenance.h"

namespace quantppl {

struct EvalSetupOptions {
  std::string model_path;      // empty: default_model_path() (compare.h)
  std::string tokenizer_path;  // empty: the model's own
  std::string text_path;       // empty: default_text_path(); "-": standard input
  std::string tokens_path;     // --tokens FILE: its ids replace the tokenized text (conflicts with text_path)
  std::optional<PerplexityMode> mode;  // unset: default_mode(model) (reconstruct for T5, causal for causal)
  int64_t stride = 0;          // --stride of --mode causal (0: none)
  int64_t max_length = 0;      // 0: the model's max_length
  int64_t batch_size = 1;
  int64_t threads = 0;         // recorded only
  std::string include;
  std::string exclude;
  int64_t max_tokens = 0;      // > 0: only the first max_tokens tokens (text + EOS) are windowed
  std::optional<double> ci_target_pct;  // set: shuffled windows and a LookSchedule
  uint64_t seed = kDefaultSeed;
  // Back up the selected layers (false when only fp32 runs: no copy is made).
  bool backup = false;
  BackupStorage backup_storage = BackupStorage::kAuto;
};

// The settings a command's options share with EvalSetupOptions (CompareOptions,
// SensitivityOptions: same field names); the caller sets the rest (backup,
// max_tokens).
template <typename CommandOptions>
EvalSetupOptions common_setup_options(const CommandOptions& o) {
  EvalSetupOptions s;
  s.model_path = o.model_path;
  s.tokenizer_path = o.tokenizer_path;
  s.text_path = o.text_path;
  s.tokens_path = o.tokens_path;
  s.mode = o.mode;
  s.stride = o.stride;
  s.max_length = o.max_length;
  s.batch_size = o.batch_size;
  s.threads = o.threads;
  s.include = o.include;
  s.exclude = o.exclude;
  s.ci_target_pct = o.ci_target_pct;
  s.seed = o.seed;
  return s;
}

struct EvalSetup {
  std::unique_ptr<ContractModel> model;
  std::vector<EvalBatch> batches;          // in evaluation order
  std::vector<LinearLayer> selected;       // --include/--exclude
  int64_t selected_parameters = 0;
  std::unique_ptr<WeightBackup> backup;    // null unless options.backup
  std::optional<LookSchedule> looks;       // with ci_target_pct
  Provenance provenance;
};

// UsageError for --max-length beyond the model's or a negative one, --batch-size < 1,
// --max-tokens < 0, --ci-target outside (0, 100), --tokens with --text, a mode of
// the other architecture, --stride other than with --mode causal on a causal model
// (or outside [1, max length]); the loaders' errors otherwise.
EvalSetup prepare_evaluation(const EvalSetupOptions& options);

// The caller's weights: what to put in place before a forward pass.
class WeightStates {
 public:
  virtual ~WeightStates() = default;
  virtual void put_fp32() = 0;
  virtual void put(size_t candidate) = 0;
};

struct Candidate {
  bool is_fp32 = false;  // fp32 itself: no forward pass, its numbers are LoopResult::fp32
  // --check: the perplexity band [lo, hi] that passes (early_stopping.h rule 2).
  std::optional<std::pair<double, double>> gate;
  // Results.
  DistributionComparison comparison;  // unused for fp32 candidates
  double seconds = 0;                 // applying its weights, forward passes, comparison
  bool stopped_early = false;         // stopped before the last batch
};

struct LoopResult {
  DistributionComparison fp32;  // the reference against itself, over the batches it ran
  double fp32_seconds = 0;
  size_t fp32_batches = 0;      // batches on which fp32 ran
};

// stage done/total: (batch, candidate) evaluations, fp32 included.
using LoopProgress = std::function<void(size_t done, size_t total)>;

// Each batch in order: fp32 first, then each running non-fp32 candidate.
// `looks` null: no early stopping. Leaves the weights in the last state put
// (the caller restores them).
LoopResult evaluate_batch_major(ContractModel& model, const std::vector<EvalBatch>& batches, WeightStates& weights,
                                std::vector<Candidate>& candidates, const LookSchedule* looks,
                                std::optional<double> ci_target_pct, const LoopProgress& progress = {});

// early_stopping.h's estimates from a comparison's sums.
MeanEstimate delta_nll_estimate(const DistributionComparison& c);
MeanEstimate nll_estimate(const DistributionComparison& c);

}  // namespace quantppl
