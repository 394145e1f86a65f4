// Corpus perplexity of a contract model over tokenized windows.
//
// This header defines the T5 modes (reconstruct, prefix) and the sums every
// mode shares, (1)-(4) below; the causal modes (causal, causal --stride,
// llamacpp) choose their windows and scored tokens in eval/causal_windows.h
// and are summed by the same (1)-(4).
//
// ---------------------------------------------------------------------------
// Definitions
// ---------------------------------------------------------------------------
// A window w = (w_1 .. w_n) of token ids (text_windows.h) becomes one
// encoder-decoder example:
//
//   PerplexityMode::kReconstruct (the seed tutorial's):
//     encoder input  = w_1 .. w_n
//     labels         = w_1 .. w_n
//   PerplexityMode::kPrefix (continue the text):
//     encoder input  = w_1 .. w_h,       h = floor(n / 2)
//     labels         = w_{h+1} .. w_n
//     Windows with n < 2 (no encoder token or no label) are skipped; if no
//     window is left, make_batches throws DataError "text too short for
//     prefix mode".
//   In both, decoder input = [decoder_start_token_id] + labels[:-1] (labels
//   shifted right, the T5 convention).
//
// Per predicted (label) token t with logits z_t over V classes:
//
//   (1) nll_t = -log_softmax(z_t)[label_t]
//             = logsumexp(z_t) - z_t[label_t]
//
// computed by token_nll() as logsumexp(z_t) - z_t[label_t]: the max and the
// sum of exp(z - max) in one fused pass over the row (src/softmax_row_kernel.h,
// sum in double), the term rounded to float32 (the precision of transformers'
// float32 cross_entropy, and no log_softmax copy of the logits), then summed
// in double over every label token of every window:
//
//   (2) NLL = sum_t nll_t,   N = number of label tokens
//   (3) perplexity = exp(NLL / N)
//
// i.e. exact corpus sums over windows, NOT a mean of per-window
// perplexities. For a text that fits in one window, (3) equals
// exp(transformers' loss) with labels = the window.
//
// Batching: windows are sorted by length (longest first) and grouped into
// batches of up to `batch_size`, so that a batch pads little. Sequences are
// right-padded with pad_token_id; attention_mask is 0 on padded encoder
// positions; padded label positions are excluded by label_mask (their logits
// are computed and ignored: the decoder is causal, so padding after the last
// label cannot change the earlier logits). Because (2) is a plain sum the
// result does not depend on the order or grouping of windows, up to float
// rounding (batching changes BLAS blocking: agreement is ~1e-6 relative).
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include <torch/types.h>

#include "quantppl/contract_model.h"
#include "quantppl/enum_table.h"
#include "quantppl/model_metadata.h"

namespace quantppl {

enum class PerplexityMode { kReconstruct, kPrefix, kCausal, kLlamaCpp };
inline constexpr EnumTable<PerplexityMode, 4> kPerplexityModeNames{"perplexity mode", {{
    {PerplexityMode::kReconstruct, "reconstruct",
     "T5: encoder and labels = the window (the seed tutorial's perplexity; the T5 default)"},
    {PerplexityMode::kPrefix, "prefix", "T5: encoder = first half, labels = second half (continuation perplexity)"},
    {PerplexityMode::kCausal, "causal",
     "causal models: non-overlapping windows, every token scored from the ones before it in its window (the causal "
     "default; with --stride, the Hugging Face sliding window)"},
    {PerplexityMode::kLlamaCpp, "llamacpp",
     "causal models: llama-perplexity's chunks of --max-length tokens, second half of each scored"},
}}};

// True for the modes of causal models (causal, llamacpp).
inline bool is_causal_mode(PerplexityMode mode) {
  return mode == PerplexityMode::kCausal || mode == PerplexityMode::kLlamaCpp;
}
// The mode used when none is given: reconstruct for T5, causal for causal models.
inline PerplexityMode default_mode(const ModelMetadata& metadata) {
  return metadata.is_causal() ? PerplexityMode::kCausal : PerplexityMode::kReconstruct;
}
// UsageError naming the mode and the model's architecture when they do not go together.
void check_mode_fits(PerplexityMode mode, const ModelMetadata& metadata, const std::string& model_path);

std::string to_string(PerplexityMode mode);  // kPerplexityModeNames
// UsageError naming --mode and the accepted values for anything else.
PerplexityMode parse_perplexity_mode(const std::string& name);

// One batch of examples, ready for ContractModel::forward (T5) or forward_causal
// (causal: decoder_input_ids undefined, T = S, eval/causal_windows.h).
struct EvalBatch {
  torch::Tensor input_ids;          // int64 [B, S], pad_token_id after each row's encoder tokens
  torch::Tensor attention_mask;     // int64 [B, S], 1 on real encoder tokens
  torch::Tensor decoder_input_ids;  // int64 [B, T], [decoder_start] + labels[:-1], then pad; undefined for causal
  torch::Tensor labels;             // int64 [B, T], pad_token_id on padded positions
  torch::Tensor label_mask;         // bool  [B, T], true on real label positions
  std::vector<size_t> window_indices;  // which input window each row came from
};

// Builds the batches once (they are reused for every variant). UsageError
// if batch_size < 1 or a window is longer than metadata.max_length or holds
// an id outside [0, vocab_size); DataError if no window gives a label.
std::vector<EvalBatch> make_batches(const std::vector<std::vector<int64_t>>& windows, PerplexityMode mode,
                                    int64_t batch_size, const ModelMetadata& metadata);

// The batch's logits, float32 [B, T, V] aligned with labels: forward for a T5
// batch, forward_causal for a causal one (decoder_input_ids undefined).
torch::Tensor batch_logits(ContractModel& model, const EvalBatch& batch);

// Number of label tokens over all batches (N in (2)).
int64_t count_label_tokens(const std::vector<EvalBatch>& batches);

struct PerplexityResult {
  double nll_sum = 0;     // NLL in (2), nats
  int64_t tokens = 0;     // N in (2)
  double seconds = 0;     // wall time of the forward passes and the NLL
  double nll_sq_sum = 0;  // sum_t nll_t^2, for the standard error
  double mean_nll() const { return nll_sum / static_cast<double>(tokens); }
  double ppl() const;     // (3)
  // Standard error of mean_nll(), treating the N token NLLs as independent
  // samples (they are not quite: neighbouring tokens correlate, so this is a
  // lower bound; llama.cpp's perplexity reports the same quantity):
  //   (4) se = sqrt((mean(nll^2) - mean(nll)^2) / (N - 1))
  // and of ppl() by the delta method, ppl_se = ppl * se. NaN when N < 2.
  double mean_nll_stderr() const;
  double ppl_stderr() const { return ppl() * mean_nll_stderr(); }
};

// Per-token NLL (1): float32 [B, T] from float32 logits [B, T, V] and int64
// labels [B, T] in [0, V) (UsageError otherwise); NaN where a row holds NaN or
// Inf. No temporary of the logits' size is made; callers sum in double.
torch::Tensor token_nll(const torch::Tensor& logits, const torch::Tensor& labels);

using PerplexityProgress = std::function<void(size_t done, size_t total)>;
// Called once per batch with the batch's logits (float32 [B, T, V]; rows
// and positions outside label_mask are padding), e.g. to accumulate KL
// divergence against another model's logits without keeping them all.
// The logits come from torch::InferenceMode: read them or compute new tensors
// from them; an in-place edit of them outside InferenceMode throws.
using LogitsHook = std::function<void(const EvalBatch& batch, const torch::Tensor& logits)>;

// (2) and (3) over every batch. The model's current weights are used as they are.
PerplexityResult evaluate_perplexity(ContractModel& model, const std::vector<EvalBatch>& batches,
                                     const PerplexityProgress& progress = {}, const LogitsHook& on_logits = {});

}  // namespace quantppl
