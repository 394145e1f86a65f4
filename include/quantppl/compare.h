// `quantppl compare`: perplexity of the original model and of each quantized
// variant, in one process, on the same tokenized windows, plus how far each
// variant's token distributions move from fp32's (distribution_metrics.h).
//
// Built on the engine (engine.h): the model is loaded once, the text
// tokenized and batched once, the selected Linear weights backed up once
// (not at all when only fp32 is listed) and each variant's quantization
// parameters chosen once (model_quantizer.h). Evaluation is batch-major: for
// every batch the fp32 logits are computed first, then each variant's weights
// are put in place (one in-place pass with its stored parameters) and its
// logits compared with fp32's at once. So KL divergence never needs more than
// one batch of fp32 logits in memory, whatever the length of the text.
// fp32 is always evaluated as the reference; an fp32 row in the list reuses
// those logits (its KL is 0 and agreement 1 by construction — a check).
// delta_ppl_pct = 100 * (ppl / ppl_fp32 - 1).
//
// Early stopping (ci_target_pct, early_stopping.h): the windows run in a
// seeded random order and a variant stops at a planned look once the
// Bonferroni-corrected 95% interval of its ppl_ratio is within +-PCT% of the
// estimate; a variant with a gate band from --check stops instead only once
// its pass/fail decision is settled at 95% (the check compares its perplexity
// with a whole-text expectation: on part of the text only a settled decision
// is safe to report). fp32 runs while some variant still runs. A variant that
// stopped early (stopped_early, tokens < the text's) reports every number
// on the tokens it evaluated: ppl = exp(its mean NLL there), kl_*, top-1,
// delta_nll_* likewise, and delta_ppl_pct = 100 * (exp(delta_nll_mean) - 1),
// the paired ratio on those same tokens (fp32 ran on more of them; when the
// token counts agree this is the formula above up to rounding, and the
// formula above is what is computed then). The fp32 row reports the tokens
// fp32 ran. Without ci_target_pct nothing changes: text order, every batch.
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include <map>
#include <utility>

#include "quantppl/default_paths.h"  // default_model_path(), default_text_path(), kDefaultVariants
#include "quantppl/distribution_metrics.h"
#include "quantppl/early_stopping.h"
#include "quantppl/methods/variant_methods.h"
#include "quantppl/model_quantizer.h"
#include "quantppl/perplexity.h"
#include "quantppl/provenance.h"
#include "quantppl/variant_spec.h"

namespace quantppl {

struct CompareOptions {
  std::string model_path;      // empty: default_model_path()
  std::string tokenizer_path;  // empty: the tokenizer inside the model file
  std::string text_path;       // empty: default_text_path(); "-": standard input
  std::vector<Variant> variants;
  std::optional<PerplexityMode> mode;  // unset: the model's default (reconstruct for T5, causal for causal)
  int64_t stride = 0;                  // --stride of --mode causal (0: none; eval/causal_windows.h)
  std::string tokens_path;             // --tokens FILE: a JSON array of ids used instead of the text
  int64_t max_length = 0;  // 0: the model's max_length
  // 1: as fast as 8 on CPU (a 512-token window already gives GEMMs 512 rows)
  // and half the peak memory, since compare holds the fp32 and a variant's
  // logits (B x T x 32128 floats each) at once. See README "Performance".
  int64_t batch_size = 1;
  int64_t threads = 0;     // as chosen by the caller (recorded in the report)
  std::string include;     // regex on Linear module names (empty: all)
  std::string exclude;     // regex on Linear module names (empty: none)
  BackupStorage backup = BackupStorage::kAuto;  // where the original weights are kept (model_quantizer.h)
  std::optional<double> ci_target_pct;  // early stopping (see above); unset: every window for every variant
  uint64_t seed = kDefaultSeed;         // the window order's seed with ci_target_pct
  // --check with ci_target_pct: variant name -> the perplexity band [lo, hi]
  // that passes (regression_check.h gate_bands); a variant stops once its
  // decision is settled at 95%.
  std::map<std::string, std::pair<double, double>> gate_bands;
  // Calibration for the variants whose method reads activation statistics
  // (+gptq, +awq, +awq+gptq): computed once, before any variant, with fp32
  // weights (methods/variant_methods.h).
  MethodRunOptions methods;
};

struct VariantResult {
  std::string variant;  // the spec as the user wrote it: the label
  std::string spec;     // its canonical spelling (variant_spec.h), what scripts key results by
  bool is_fp32 = false;
  // The method's label (method_table.h: "rtn", "gptq", "awq", "hqq",
  // "awq+gptq"; "none" for fp32) and, for a calibrated method, where its
  // statistics came from.
  std::string method = "none";
  std::optional<CalibrationProvenance> calibration;
  double ppl = 0;
  double nll = 0;  // mean negative log-likelihood per predicted token (nats)
  int64_t tokens = 0;
  double ppl_stderr = 0;  // ppl * standard error of the mean NLL (tokens treated as independent)
  std::optional<double> delta_ppl_pct;
  std::optional<double> weight_mse;      // over every quantized weight element
  std::optional<double> weight_sqnr_db;
  // Storage of the quantized layers at this variant's real width (packed_model.h:
  // codes + scales + zero points) and as float32 (4 bytes a weight); fp32's
  // packed_bytes equals its fp32_bytes.
  std::optional<int64_t> packed_bytes;
  int64_t fp32_bytes = 0;
  // All stored bits (codes, scales, zero points) over the number of quantized
  // weights: 8 * packed_bytes / weights (32 for fp32; absmax:4:group64 = 4.5).
  std::optional<double> bits_per_weight;
  // distribution_metrics.h, against fp32 on the same positions
  double kl_mean = 0;
  double kl_p99 = 0;
  double kl_max = 0;
  double top1_agreement = 0;
  double delta_nll_mean = 0;
  double delta_nll_ci95 = 0;  // half-width of the 95% interval of delta_nll_mean
  // A method's row (+gptq, +awq, +hqq, ...) when the run also lists its
  // format alone (round to nearest): the paired per-token NLL change against
  // that RTN row on the same tokens, with its 95% interval
  // (distribution_metrics.h, paired_nll_difference): negative = the method
  // predicts better than RTN; beyond noise when |mean| > ci95.
  std::optional<double> rtn_delta_nll_mean;
  std::optional<double> rtn_delta_nll_ci95;
  // Every statistic of the comparison with fp32 (distribution_metrics.h:
  // percentiles, standard errors, Δp, ppl_ratio and its interval, NLL
  // correlation); the six fields above are copies of its values, kept for
  // existing callers.
  DistributionStats distribution;
  double seconds = 0;  // this variant's own work: choosing and applying parameters, forward passes, metrics
  double method_seconds = 0;  // of which choosing its weights (the method: GPTQ, AWQ's search, HQQ, RTN's parameters)
  bool stopped_early = false;  // early stopping ended it before the last window (tokens < the text's)
};

struct CompareReport {
  Provenance provenance;  // model, text, settings, versions, seed (provenance.h)
  int64_t layers_quantized = 0;
  int64_t parameters_quantized = 0;
  std::string backup;  // "memory" or "file": where the original weights were kept; "none" when only fp32 ran
  // Early stopping (with ci_target_pct): planned looks and the z of each look's interval (early_stopping.h (3)).
  int64_t looks = 0;
  double stop_z = 0;
  // timing (seconds; not part of any regression check)
  double load_seconds = 0;  // model + tokenizer load, text tokenization, weight backup
  double calibration_seconds = 0;  // the calibration pass of the methods that need one (0: none ran)
  double total_seconds = 0;  // the whole run_compare

  std::vector<VariantResult> results;
};

// stage: what is being done ("choosing parameters", "evaluating"); done/total: its steps.
using CompareProgress = std::function<void(const std::string& stage, size_t stage_index, size_t stages,
                                           size_t done, size_t total)>;

CompareReport run_compare(const CompareOptions& options, const CompareProgress& progress = {});

}  // namespace quantppl
