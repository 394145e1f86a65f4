// How a causal (decoder-only) model's perplexity is computed: which tokens the
// model sees in each forward pass and which of them are scored.
//
// Notation: x_1 .. x_N are the text's token ids (the tokenizer's output, or a
// --tokens file; no BOS or EOS added), L = --max-length, BOS the model's
// bos_token_id. A window is a token sequence w_0 .. w_{n-1} (n <= L) run
// through the model once, with a first scored position f >= 1: the tokens
// w_f .. w_{n-1} are scored, w_i by
//
//   nll_i = -log softmax(logits[i - 1])[w_i]     (logits[i-1] scores token i)
//
// i.e. each from every token before it in its window. Perplexity is then
// perplexity.h's (2)-(3): exp(sum of nll over every scored token / their
// number), a corpus sum, never a mean of per-window perplexities. Every mode
// scores each text token at most once.
//
// PerplexityMode::kCausal, no --stride (the default for causal models):
//   with add_bos: x is cut into consecutive chunks of L - 1 tokens (the last
//     one shorter); each window is [BOS] + chunk and f = 1, so EVERY text
//     token is scored (the first of a chunk from BOS alone). N tokens scored.
//   without add_bos: x is cut into consecutive chunks of L tokens; each window
//     is the chunk and f = 1: a window's first token is context only (never
//     scored), the rest are scored. A last chunk of 1 token scores nothing and
//     is dropped. N - ceil(N / L) tokens scored.
//
// PerplexityMode::kCausal with --stride S (1 <= S <= L): the Hugging Face
// perplexity guide's sliding window ("Perplexity of fixed-length models").
//   The stream is s = [BOS] + x with add_bos, else x; M = |s|. As in the guide:
//     prev_end = 0
//     for begin in 0, S, 2S, ... (< M):
//       end = min(begin + L, M);  trg_len = end - prev_end
//       window = s[begin, end), scoring its last trg_len positions, except
//         that position 0 of a window is never scored (the guide's labels
//         are shifted inside the model, so the first label has no logits):
//         f = max(1, (end - begin) - trg_len)
//       prev_end = end;  stop once end == M
//   With S < L, windows overlap and every stream position from 1 on is scored
//   exactly once, from at least L - S tokens of context (fewer only within the
//   first window); s_0 (BOS, or x_1 without add_bos) is never scored. With
//   S = L the windows are the non-overlapping cuts of s and each window's
//   first token is context only (what the guide's loop does then too). The
//   guide weights each window's mean loss by (its valid labels - 1), one less
//   than the tokens a window after the first actually scores when S < L; here
//   the sums are exact (each token's nll counted once), so ppl = exp(mean nll
//   over the scored tokens). tests/reference/hf_stride_perplexity.py runs the
//   guide's loop with exact counts.
//
// PerplexityMode::kLlamaCpp: llama.cpp's `llama-perplexity`
//   (tools/perplexity/perplexity.cpp, function perplexity()), n_ctx = L:
//   the stream is s = [BOS] + x with add_bos (the whole text tokenized once),
//   else x; M = |s|, and M >= 2 n_ctx is required (llama-perplexity refuses
//   fewer tokens). n_chunk = floor(M / n_ctx) chunks (the remainder is
//   dropped). Chunk c is s[c n_ctx, (c + 1) n_ctx) with its first token
//   replaced by BOS when add_bos (chunk 0's already is BOS); with
//   first = floor(n_ctx / 2), the scored tokens are positions first + 1 ..
//   n_ctx - 1 (f = first + 1), n_ctx - first - 1 per chunk: only the second
//   half, each with at least first tokens of context. Over the count =
//   n_chunk (n_ctx - first - 1) scored tokens:
//     ppl = exp(mean nll),
//     stderr(ppl) = ppl * sqrt((mean(nll^2) - mean(nll)^2) / (count - 1))
//   — what llama-perplexity prints as "Final estimate: PPL = ppl +/- stderr"
//   (perplexity.h's PerplexityResult::ppl_stderr is the same formula).
//   n_ctx >= 3 is required (else no chunk scores a token).
#pragma once

#include <cstdint>
#include <vector>

#include "quantppl/model_metadata.h"
#include "quantppl/perplexity.h"

namespace quantppl {

struct ScoredWindow {
  std::vector<int64_t> tokens;  // w_0 .. w_{n-1}, fed to the model
  int64_t first_scored = 1;     // f: tokens[f .. n-1] are scored
};

struct CausalWindowOptions {
  PerplexityMode mode = PerplexityMode::kCausal;  // kCausal or kLlamaCpp
  int64_t max_length = 0;                         // L (n_ctx for kLlamaCpp), >= 1
  int64_t stride = 0;                             // kCausal only; 0: no stride
  bool add_bos = false;
  int64_t bos_token_id = kNoToken;                // needed when add_bos
};

// The windows of the mode above, in text order. UsageError for a T5 mode,
// L < 1, L < 2 with add_bos in kCausal, L < 3 in kLlamaCpp, a stride outside
// [1, L] or a stride with kLlamaCpp, add_bos without a BOS id; DataError when
// the text gives nothing to score (fewer than 2 stream tokens) or, in
// kLlamaCpp, fewer than 2 n_ctx tokens.
std::vector<ScoredWindow> causal_windows(const std::vector<int64_t>& text_ids, const CausalWindowOptions& options);

// Number of scored tokens over `windows` (sum of n - f).
int64_t count_scored_tokens(const std::vector<ScoredWindow>& windows);

// Batches for ContractModel::forward_causal, built once: windows sorted by
// length (longest first, stable) and grouped by batch_size. A window of n
// tokens becomes input_ids = w_0 .. w_{n-2} (the last token is only a label),
// right-padded with metadata.padding_id() and attention_mask 0 there;
// labels[i] = w_{i+1}; label_mask[i] = (i + 1 >= f); decoder_input_ids is left
// undefined (batch_logits() then calls forward_causal). Windows with nothing
// scored are skipped. UsageError for batch_size < 1, a window longer than
// metadata.max_length or an id outside [0, vocab_size); DataError if no
// window scores a token.
std::vector<EvalBatch> make_causal_batches(const std::vector<ScoredWindow>& windows, int64_t batch_size,
                                           const ModelMetadata& metadata);

}  // namespace quantppl
