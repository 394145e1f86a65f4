// Calibration: the activation statistics of calibration_stats.h, from a
// calibration text run through the fp32 model (activation_capture.h), or read
// back from a file written by `quantppl calibrate` (calibration_file.h).
//
// ---------------------------------------------------------------------------
// What is accumulated
// ---------------------------------------------------------------------------
// For every input group g (the layers reading one tensor, activation_capture.h)
// and every calibration token position n that is a real token, with x_n the
// group's in_features-vector at that position:
//
//   (1) H        = (2/N) * sum_n x_n x_n^T
//   (2) mean_abs = (1/N) * sum_n |x_n|       (elementwise)
//   (3) max_abs  = max_n |x_n|
//
// Real token positions: a group's input is [B, L, in]; its positions are those
// of the forward argument it depends on (CalibrationBatch::position_masks; the
// LAST argument with a mask that it depends on). For T5 (t5_calibration_batch):
// a layer fed by the decoder (it depends on decoder_input_ids) counts the
// label_mask positions; an encoder layer and the cross-attention k/v (fed by
// the encoder output only) count the attention_mask positions. Padding
// positions are computed by forward and never counted. With reconstruct
// windows (what calibration uses) both give N = the calibration tokens.
//
// Precision and error bound. Per batch b, the n_b <= B*L rows X_b of real
// positions give the partial sum C_b = X_b^T X_b in one float32 GEMM (at::mm);
// the C_b, sum|x| and N are summed over batches in float64; (1) is
// symmetrized, (C + C^T)/2, in float64 and rounded to float32 once at the end
// (so a computed and a stored H are the same float32 numbers). With
// u = 2^-24 and the standard dot-product bound |fl(C_b) - C_b|_ij <= n_b u
// sum_n |x_ni||x_nj| (to first order), the stored H satisfies
//
//   (4) |H_stored - H|_ij <= (n_max u + u) * (2/N) sum_n |x_ni| |x_nj|  + O(u^2)
//
// with n_max the largest batch's real positions, independent of the number of
// batches (their sum is float64). On the diagonal the right side is
// (n_max + 1) u H_jj: a relative error below 7.7e-6 for batches of one
// 128-token window, 3.1e-5 for 512 tokens (blocked BLAS sums in pieces and
// typically gets ~sqrt(n_b) u; batches of 1 and 4 windows of the default model
// agree to 1.1e-6 relative).
// mean_abs is summed in float64 and rounded once (relative error <= u);
// max_abs is exact.
//
// Memory: one batch's group inputs at a time (sum over groups of B*L*in
// floats) plus the accumulators (in^2 float64 per group); activations are
// never kept across batches.
//
// The LayerActivationStats of layers in one input group share one set of
// tensors (hessian, mean_abs, max_abs alias each other): treat them as
// read-only, clone() before editing one (GPTQ's damping).
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include <ATen/core/ivalue.h>
#include <torch/types.h>

#include "quantppl/contract_model.h"
#include "quantppl/methods/calibration_stats.h"
#include "quantppl/perplexity.h"

namespace quantppl {

// The default of --calibration-tokens: 16384 calibration token positions
// (GPTQ's 128 x 2048-token segments of C4 are 262144; 16384 is what the 2-core
// benchmark budget allows and more than enough for models of d_model <= 1024:
// H's rank is full once N exceeds in_features many times over).
constexpr int64_t kDefaultCalibrationTokens = 16384;
// The default of calibrate's --batch-size (windows per forward pass). 1, as
// compare's: measured no slower than 4 (CPU time 3.7 s vs 3.8 s on the default
// model, 32 s vs 37 s on flan-t5-small), and on flan-t5-small 0.89 GB peak
// RSS instead of 1.31 GB (one batch's captured inputs are 97 MB, not 386 MB).
constexpr int64_t kDefaultCalibrationBatchSize = 1;

// data/calibration.txt (data/README.md): the shipped calibration text, taken
// from the Python documentation, disjoint from data/default_eval.txt. Under
// $QUANTPPL_HOME when it is set, like default_paths.h.
std::string default_calibration_text_path();

// One forward pass of calibration: forward's arguments (self not included)
// and, per argument, a bool [B, L] mask of the positions that are real tokens
// (undefined for an argument that is not a sequence of tokens).
struct CalibrationBatch {
  std::vector<c10::IValue> arguments;
  std::vector<torch::Tensor> position_masks;
};

// A T5 batch (perplexity.h): arguments (input_ids, attention_mask,
// decoder_input_ids), masks (attention_mask != 0, none, label_mask).
CalibrationBatch t5_calibration_batch(const EvalBatch& batch);
// A causal batch (eval/causal_windows.h, make_causal_batches): arguments
// (input_ids, attention_mask), masks (attention_mask != 0, none). Calibration
// of a causal model reads the text as its evaluation does (no EOS; a BPE
// tokenizer encodes the whole text), cut into consecutive max_length windows.
CalibrationBatch causal_calibration_batch(const EvalBatch& batch);

using CalibrationProgress = std::function<void(size_t done, size_t total)>;

// (1)-(3) for `layer_names` (Linear layers of `model`) over `batches`, with
// the model's current weights (for GPTQ's sequential mode: quantize the
// earlier blocks, then collect the next block's layers). The returned
// layers are in `layer_names` order; shared_input is the input group's index
// (equal ids <=> the same input tensor); tokens = N of each layer; the
// provenance fields (model_sha256, text_*, tokens) are left for the caller,
// except model_sha256 = model.file_sha256().
// UsageError for an empty batch list; activation_capture.h's errors; DataError
// naming the layer when a group's input is not [B, L, in] with [B, L] its
// mask's shape, depends on no masked argument, sees no real position, or
// gives a non-finite statistic (the model produced NaN/Inf activations).
CalibrationStats collect_calibration_stats(ContractModel& model, const std::vector<std::string>& layer_names,
                                           const std::vector<CalibrationBatch>& batches,
                                           const CalibrationProgress& progress = {});

// The calibration text, tokenized and windowed like the evaluation text
// (text_windows.h: the sentencepiece ids of the whole text + EOS), cut to its
// first `max_tokens` tokens (0 or more than the text has: all of them), then
// into consecutive windows of `max_length` tokens.
struct CalibrationText {
  std::string path;    // as given
  std::string sha256;  // of the whole file's bytes
  int64_t tokens = 0;  // tokens kept (EOS included when the whole text is kept)
  std::vector<std::vector<int64_t>> windows;
};
// load_eval_text's errors; UsageError for max_tokens < 0 or max_length < 1.
CalibrationText load_calibration_text(const std::string& path, const Tokenizer& tokenizer, int64_t eos_id,
                                      int64_t max_length, int64_t max_tokens);

// The reconstruct batches (perplexity.h) of `text`'s windows, as calibration
// batches: what calibration_stats_for_run feeds collect_calibration_stats, and
// what GPTQ's sequential mode reuses for every block. make_batches' errors.
std::vector<CalibrationBatch> t5_calibration_batches(const CalibrationText& text, int64_t batch_size,
                                                     const ModelMetadata& metadata);

// Everything a run needs to obtain its statistics (the CLI's --calibration,
// --calibration-tokens, --calibration-stats).
struct CalibrationRequest {
  std::string stats_path;  // --calibration-stats: read it (no forward pass); wins over text_path
  std::string text_path;   // --calibration; empty: default_calibration_text_path()
  int64_t tokens = kDefaultCalibrationTokens;  // --calibration-tokens (0: the whole text)
  int64_t batch_size = kDefaultCalibrationBatchSize;
  int64_t max_length = 0;  // window length; 0: the model's max_length
  // The run's evaluation text, for the same-text warning (empty: no check).
  std::string eval_text_path;
  std::string eval_text_sha256;  // if known ("" : computed from eval_text_path when needed)
};

using CalibrationWarning = std::function<void(const std::string& message)>;

// The statistics for `layers` (the run's selected Linear layers):
//   - with stats_path: read_calibration_stats (calibration_file.h), then
//     DataError "calibration stats 'F' were made from model <sha-in-file>, this
//     model 'M' is <sha>" when the model hashes differ, and DataError naming the
//     file and layer when a layer is missing or its in_features differ;
//   - otherwise: load_calibration_text + one fp32 pass (collect_calibration_stats)
//     over reconstruct windows of `request.batch_size`.
// `warn` (may be empty) receives the warning "calibration text 'C' is the
// evaluation text 'E' ..." when the calibration text is the evaluation text
// (same path, or same sha256): the measured error would then be optimistic.
// The result holds only `layers`, in their order.
CalibrationStats calibration_stats_for_run(ContractModel& model, const std::vector<LinearLayer>& layers,
                                           const CalibrationRequest& request, const CalibrationWarning& warn = {},
                                           const CalibrationProgress& progress = {});

// The calibration text of a run and its batches, without a forward pass (what
// GPTQ's sequential mode feeds collect_calibration_stats once per block):
// load_calibration_text + t5_calibration_batches as calibration_stats_for_run
// does it, with its same-text warning. text.path is the path used.
struct CalibrationInputs {
  CalibrationText text;
  std::vector<CalibrationBatch> batches;
};
CalibrationInputs calibration_inputs_for_run(ContractModel& model, const CalibrationRequest& request,
                                             const CalibrationWarning& warn = {});

// The layer called `name`, or nullptr.
const LayerActivationStats* find_layer_stats(const CalibrationStats& stats, const std::string& name);

}  // namespace quantppl
