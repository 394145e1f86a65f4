#include "quantppl/eval/causal_windows.h"

#include <algorithm>

#include <fmt/format.h>

#include "quantppl/error.h"

namespace quantppl {
namespace {

std::vector<int64_t> stream_of(const std::vector<int64_t>& text_ids, const CausalWindowOptions& o) {
  std::vector<int64_t> s;
  s.reserve(text_ids.size() + 1);
  if (o.add_bos) s.push_back(o.bos_token_id);
  s.insert(s.end(), text_ids.begin(), text_ids.end());
  return s;
}

std::vector<ScoredWindow> non_overlapping(const std::vector<int64_t>& x, const CausalWindowOptions& o) {
  std::vector<ScoredWindow> out;
  const auto L = static_cast<size_t>(o.max_length);
  const size_t chunk = o.add_bos ? L - 1 : L;
  for (size_t begin = 0; begin < x.size(); begin += chunk) {
    const size_t end = std::min(x.size(), begin + chunk);
    ScoredWindow w;
    if (o.add_bos) w.tokens.push_back(o.bos_token_id);
    w.tokens.insert(w.tokens.end(), x.begin() + static_cast<std::ptrdiff_t>(begin),
                    x.begin() + static_cast<std::ptrdiff_t>(end));
    w.first_scored = 1;
    if (w.tokens.size() >= 2) out.push_back(std::move(w));
  }
  return out;
}

// The Hugging Face guide's loop (see the header).
std::vector<ScoredWindow> strided(const std::vector<int64_t>& s, const CausalWindowOptions& o) {
  std::vector<ScoredWindow> out;
  const auto M = static_cast<int64_t>(s.size());
  int64_t prev_end = 0;
  for (int64_t begin = 0; begin < M; begin += o.stride) {
    const int64_t end = std::min(begin + o.max_length, M);
    const int64_t trg_len = end - prev_end;
    ScoredWindow w;
    w.tokens.assign(s.begin() + begin, s.begin() + end);
    w.first_scored = std::max<int64_t>(1, (end - begin) - trg_len);
    if (w.first_scored < end - begin) out.push_back(std::move(w));
    prev_end = end;
    if (end == M) break;
  }
  return out;
}

std::vector<ScoredWindow> llamacpp(const std::vector<int64_t>& s, const CausalWindowOptions& o) {
  const int64_t n_ctx = o.max_length;
  const auto M = static_cast<int64_t>(s.size());
  if (M < 2 * n_ctx) {
    throw DataError(fmt::format("--mode llamacpp needs at least 2 x --max-length = {} tokens (llama-perplexity refuses "
                                "fewer); the text gives {}{}: use a longer text or a smaller --max-length",
                                2 * n_ctx, M, o.add_bos ? " with BOS" : ""));
  }
  const int64_t n_chunk = M / n_ctx;
  const int64_t first = n_ctx / 2;
  std::vector<ScoredWindow> out;
  for (int64_t c = 0; c < n_chunk; ++c) {
    ScoredWindow w;
    w.tokens.assign(s.begin() + c * n_ctx, s.begin() + (c + 1) * n_ctx);
    if (o.add_bos) w.tokens[0] = o.bos_token_id;
    w.first_scored = first + 1;
    out.push_back(std::move(w));
  }
  return out;
}

}  // namespace

std::vector<ScoredWindow> causal_windows(const std::vector<int64_t>& text_ids, const CausalWindowOptions& o) {
  if (o.mode != PerplexityMode::kCausal && o.mode != PerplexityMode::kLlamaCpp) {
    throw UsageError("--mode " + to_string(o.mode) + " is a T5 mode; a causal model takes --mode causal or llamacpp");
  }
  if (o.max_length < 1) throw UsageError(fmt::format("--max-length must be >= 1, got {}", o.max_length));
  if (o.add_bos && o.bos_token_id < 0) throw UsageError("add_bos is set but the model has no bos_token_id");
  if (o.mode == PerplexityMode::kLlamaCpp) {
    if (o.stride != 0) throw UsageError("--stride applies to --mode causal, not to --mode llamacpp");
    if (o.max_length < 3) {
      throw UsageError(fmt::format("--mode llamacpp needs --max-length >= 3 (a chunk scores n_ctx - n_ctx/2 - 1 "
                                   "tokens), got {}", o.max_length));
    }
  } else if (o.stride != 0 && (o.stride < 1 || o.stride > o.max_length)) {
    throw UsageError(fmt::format("--stride must be in [1, --max-length = {}], got {}", o.max_length, o.stride));
  } else if (o.stride == 0 && o.add_bos && o.max_length < 2) {
    throw UsageError("--max-length must be >= 2 for a model that adds BOS (a window is BOS + text tokens)");
  }
  std::vector<ScoredWindow> out;
  if (o.mode == PerplexityMode::kLlamaCpp) {
    out = llamacpp(stream_of(text_ids, o), o);
  } else if (o.stride != 0) {
    out = strided(stream_of(text_ids, o), o);
  } else {
    out = non_overlapping(text_ids, o);
  }
  if (out.empty()) {
    throw DataError(fmt::format("text too short: its {} token(s) give no token to score with --mode {}{} and "
                                "--max-length {} (a scored token needs a token before it in its window)",
                                text_ids.size(), to_string(o.mode),
                                o.stride != 0 ? " --stride " + std::to_string(o.stride) : std::string(), o.max_length));
  }
  return out;
}

int64_t count_scored_tokens(const std::vector<ScoredWindow>& windows) {
  int64_t n = 0;
  for (const ScoredWindow& w : windows) n += static_cast<int64_t>(w.tokens.size()) - w.first_scored;
  return n;
}

std::vector<EvalBatch> make_causal_batches(const std::vector<ScoredWindow>& windows, int64_t batch_size,
                                           const ModelMetadata& metadata) {
  if (batch_size < 1) throw UsageError("batch size must be >= 1, got " + std::to_string(batch_size));
  std::vector<size_t> order;
  for (size_t w = 0; w < windows.size(); ++w) {
    const auto n = static_cast<int64_t>(windows[w].tokens.size());
    if (n > metadata.max_length) {
      throw UsageError("window " + std::to_string(w) + " has " + std::to_string(n) +
                       " tokens, more than the model's max_length " + std::to_string(metadata.max_length));
    }
    for (const int64_t id : windows[w].tokens) {
      if (id < 0 || id >= metadata.vocab_size) {
        throw UsageError("window " + std::to_string(w) + " holds token id " + std::to_string(id) +
                         ", outside [0, vocab_size = " + std::to_string(metadata.vocab_size) + ")");
      }
    }
    if (windows[w].first_scored >= 1 && windows[w].first_scored < n) order.push_back(w);
  }
  if (order.empty()) throw DataError("no tokens to evaluate: no window has a token to score");
  // Longest first, so a batch pads little; stable, so the batches are a function of the input.
  std::stable_sort(order.begin(), order.end(),
                   [&](size_t a, size_t b) { return windows[a].tokens.size() > windows[b].tokens.size(); });

  std::vector<EvalBatch> batches;
  for (size_t first = 0; first < order.size(); first += static_cast<size_t>(batch_size)) {
    const size_t last = std::min(order.size(), first + static_cast<size_t>(batch_size));
    const auto rows = static_cast<int64_t>(last - first);
    int64_t s = 0;
    for (size_t e = first; e < last; ++e) s = std::max(s, static_cast<int64_t>(windows[order[e]].tokens.size()) - 1);
    EvalBatch b;
    b.input_ids = torch::full({rows, s}, metadata.padding_id(), torch::kInt64);
    b.attention_mask = torch::zeros({rows, s}, torch::kInt64);
    b.labels = torch::full({rows, s}, metadata.padding_id(), torch::kInt64);
    b.label_mask = torch::zeros({rows, s}, torch::kBool);
    auto input_ids = b.input_ids.accessor<int64_t, 2>();
    auto attention_mask = b.attention_mask.accessor<int64_t, 2>();
    auto labels = b.labels.accessor<int64_t, 2>();
    auto label_mask = b.label_mask.accessor<bool, 2>();
    for (int64_t r = 0; r < rows; ++r) {
      const ScoredWindow& w = windows[order[first + static_cast<size_t>(r)]];
      b.window_indices.push_back(order[first + static_cast<size_t>(r)]);
      const auto n = static_cast<int64_t>(w.tokens.size());
      for (int64_t i = 0; i + 1 < n; ++i) {
        input_ids[r][i] = w.tokens[static_cast<size_t>(i)];
        attention_mask[r][i] = 1;
        labels[r][i] = w.tokens[static_cast<size_t>(i + 1)];
        label_mask[r][i] = i + 1 >= w.first_scored;
      }
    }
    batches.push_back(std::move(b));
  }
  return batches;
}

}  // namespace quantppl
