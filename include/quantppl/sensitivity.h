// `quantppl sensitivity`: which Linear layers does a variant hurt most, and
// how much is won by keeping the worst few in fp32?
//
// With L selected layers and a variant V, every measurement below is a
// perplexity (perplexity.h, equations (2)-(3)) of the model with some subset
// S of the layers fake-quantized by V and all others at their original fp32
// weights, on the same pre-built batches:
//
//   single layer i:  S = {i}                    (L runs)  -> ranking by delta_ppl_pct
//   all quantized:   S = every selected layer
//   keep K:          S = all but the K layers ranked most damaging (K clipped to L)
//   part P:          S = the selected layers whose name starts with "encoder.",
//                    "decoder." or "lm_head" (T5); for a causal model the parts
//                    are "layers.N" (the Linear layers of decoder block N: a name
//                    with the components "layers.N." or GPT-2's "h.N.") for each
//                    block, in model order, then "lm_head"
//
//   delta_ppl_pct = 100 * (ppl_S / ppl_fp32 - 1)
//   kl_mean       = (1/N) sum_t sum_v P_v (log P_v - log Q_v)   P = fp32, Q = the run's
//                   softmax at each of the N predicted positions (nats per token)
//
//   delta_nll_mean, delta_nll_ci95: the paired per-token NLL change against
//                   fp32 and the half-width of its 95% interval
//                   (distribution_metrics.h (3)): two layers whose intervals
//                   overlap are not reliably ordered by the ranking.
//
// How it is run, on the engine (engine.h): the text is tokenized and batched
// once; each layer's fake-quantized weight is computed once (V applied to the
// ORIGINAL weight, so every subset sees exactly the weights apply_variant
// would give); a subset is put in place by copying originals or quantized
// weights into only the layers whose state changes, so nothing drifts and the
// originals come back bit-for-bit at the end. Evaluation is batch-major and
// uses the same fused comparison as compare (DistributionComparison: no
// log_softmax tensor): for each batch the fp32 logits are computed once and
// every subset of the phase compared with them, so KL never needs more than
// one batch of fp32 logits in memory, whatever the length of the text.
//
// fp32 passes: there are two phases (single layers + all + parts, then the
// keep-K subsets, which need the ranking), and each needs the fp32 logits of
// every batch it runs as its reference: one fp32 forward per batch per phase,
// none more. "No extra fp32 pass" means that fp32's own numbers cost nothing
// beyond that reference: fp32_ppl is phase 1's reference's sums, keep L is
// fp32 itself (not re-run: ppl = fp32_ppl, KL 0), and phase 2's reference is
// used only to compare with (its sums are discarded); phase 2 runs only when
// some keep-K subset is new. Identical subsets are evaluated once (keep 0 is
// "all quantized"). Ties in the ranking keep the model's layer order.
//
// Early stopping (ci_target_pct, early_stopping.h): as in compare.h, every
// subset stops at a planned look once the 95% interval of its ppl ratio is
// within +-PCT%; it then reports its numbers on the tokens it evaluated
// (tokens, stopped_early) and delta_ppl_pct = 100 (exp(delta_nll_mean) - 1),
// the paired ratio, which also orders the ranking.
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "quantppl/contract_model.h"
#include "quantppl/early_stopping.h"
#include "quantppl/perplexity.h"
#include "quantppl/provenance.h"
#include "quantppl/formats/weight_format.h"
#include "quantppl/methods/variant_methods.h"
#include "quantppl/variant_spec.h"

namespace quantppl {

// The default --keep series.
extern const char* const kDefaultKeep;  // "0,1,2,4,8"

// "0,1,2,4,8" -> {0, 1, 2, 4, 8}: comma-separated non-negative integers,
// duplicates removed, sorted. UsageError naming --keep for an empty list or
// item, a negative number or anything that is not an integer.
std::vector<int64_t> parse_keep_list(const std::string& text);

struct SensitivityOptions {
  std::string model_path;      // empty: default_model_path() (default_paths.h)
  std::string tokenizer_path;  // empty: the model's own
  std::string text_path;       // empty: default_text_path(); "-": standard input
  Variant variant;             // must not be fp32 (UsageError)
  std::vector<int64_t> keep{0, 1, 2, 4, 8};
  int64_t max_tokens = 0;      // > 0: only the first max_tokens tokens of the token stream (text + EOS) are windowed
  std::optional<PerplexityMode> mode;  // unset: the model's default (reconstruct for T5, causal for causal)
  int64_t stride = 0;                  // --stride of --mode causal (0: none; eval/causal_windows.h)
  std::string tokens_path;             // --tokens FILE: a JSON array of ids used instead of the text
  int64_t max_length = 0;      // 0: the model's max_length
  int64_t batch_size = 8;
  int64_t threads = 0;         // recorded only: the caller sets LibTorch's threads
  std::string include;         // regex on Linear module names (empty: all)
  std::string exclude;         // regex (empty: none)
  std::optional<double> ci_target_pct;  // early stopping (see above)
  uint64_t seed = kDefaultSeed;         // the window order's seed with ci_target_pct
  // The calibration of a +gptq/+awq variant (methods/variant_methods.h): the
  // method runs once over the selected layers, then each layer's result is
  // switched in alone, in subsets and in parts like an RTN variant's.
  MethodRunOptions methods;
};

// Early stopping for measure_sensitivity (engine.h): the planned looks and the target.
struct SensitivityStopping {
  const LookSchedule* looks = nullptr;  // null: every subset sees every batch
  std::optional<double> ci_target_pct;
};

struct LayerSensitivity {
  std::string name;
  int64_t rank = 0;  // 1 = the most damaging
  int64_t parameters = 0;
  double ppl = 0;
  double delta_ppl_pct = 0;
  double kl_mean = 0;
  double delta_nll_mean = 0;
  double delta_nll_ci95 = 0;  // half-width of the 95% interval of delta_nll_mean
  int64_t tokens = 0;         // evaluated (fewer than the text's when stopped_early)
  bool stopped_early = false;
};

struct KeepResult {
  int64_t keep = 0;  // after clipping to the number of layers
  std::vector<std::string> kept_layers;  // fp32, most damaging first
  double ppl = 0;
  double delta_ppl_pct = 0;
  double kl_mean = 0;
  double delta_nll_mean = 0;
  double delta_nll_ci95 = 0;
  int64_t tokens = 0;
  bool stopped_early = false;
};

struct PartResult {
  std::string part;  // "encoder", "decoder", "lm_head"; causal: "layers.N", ..., "lm_head"
  int64_t layers = 0;
  std::optional<double> ppl;  // absent when no selected layer is in the part
  std::optional<double> delta_ppl_pct;
  std::optional<double> kl_mean;
  std::optional<double> delta_nll_mean;
  std::optional<double> delta_nll_ci95;
};

struct SensitivityReport {
  Provenance provenance;     // model, text (text_tokens: after --max-tokens), settings, versions (provenance.h)
  std::string variant;
  std::string method = "rtn";  // method_table.h's label
  std::optional<CalibrationProvenance> calibration;  // a calibrated method's statistics
  int64_t tokens = 0;        // predicted tokens per run (N)
  int64_t fp32_tokens = 0;   // tokens of phase 1's fp32 reference (N unless early stopping ended it sooner)
  int64_t looks = 0;         // with ci_target_pct: planned looks and their z (early_stopping.h (3))
  double stop_z = 0;
  double fp32_ppl = 0;
  double all_quantized_ppl = 0;
  double all_quantized_delta_ppl_pct = 0;
  double all_quantized_kl_mean = 0;
  std::vector<LayerSensitivity> layers;  // sorted by damage, rank 1 first
  std::vector<KeepResult> keep;
  std::vector<PartResult> parts;  // encoder, decoder, lm_head
  double seconds = 0;
};

// stage: "single layers" or "keep K"; done/total: subset evaluations (batches x subsets).
using SensitivityProgress = std::function<void(const std::string& stage, size_t done, size_t total)>;

// Loads the model and the text (tokenized and batched once), then measure_sensitivity().
SensitivityReport run_sensitivity(const SensitivityOptions& options, const SensitivityProgress& progress = {});

// The measurement alone, on a loaded model and pre-built batches: fills
// tokens, fp32_ppl, all_quantized_*, layers, keep and parts. `layers` are the
// Linear layers to consider (aliasing the model's weights, as
// ContractModel::linear_layers gives them); they hold their original values
// again on return, bit-for-bit, also when it throws.
// `method`: a method's prepared weights of `layers` (prepare_method_variant),
// used instead of `format`'s round to nearest when given.
SensitivityReport measure_sensitivity(ContractModel& model, const std::vector<EvalBatch>& batches,
                                      const std::vector<LinearLayer>& layers, const WeightFormat& format,
                                      const std::vector<int64_t>& keep, const SensitivityProgress& progress = {},
                                      const SensitivityStopping& stopping = {},
                                      const std::vector<std::unique_ptr<PreparedWeight>>* method = nullptr);
// The uniform format of `config` (formats/uniform_format.h).
SensitivityReport measure_sensitivity(ContractModel& model, const std::vector<EvalBatch>& batches,
                                      const std::vector<LinearLayer>& layers, const QuantConfig& config,
                                      const std::vector<int64_t>& keep, const SensitivityProgress& progress = {},
                                      const SensitivityStopping& stopping = {});

// Renderings. JSON: the provenance (provenance.h), "variant", "tokens",
// "fp32_tokens", "looks", "stop_z", "fp32_ppl", "all_quantized_*", "layers",
// "keep", "parts" as above (field names as in the structs). CSV: one row per
// layer (rank, name, parameters, ppl, delta_ppl_pct, kl_mean, delta_nll_mean,
// delta_nll_ci95, tokens, stopped_early, fp32_ppl, all_quantized_ppl,
// variant, then the provenance columns). Table: for people.
std::string format_sensitivity_json(const SensitivityReport& report);
std::string format_sensitivity_csv(const SensitivityReport& report);
std::string format_sensitivity_table(const SensitivityReport& report);

}  // namespace quantppl
