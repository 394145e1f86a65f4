#include "quantppl/perplexity.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <limits>
#include <numeric>

#include <ATen/Parallel.h>

#include "quantppl/error.h"
#include "softmax_row_kernel.h"

namespace quantppl {
namespace {

// Positions per parallel task of token_nll (~10 us each at V = 32k).
constexpr int64_t kNllRowsPerTask = 8;

struct Example {
  size_t window;
  int64_t encoder_length;  // encoder tokens taken from the front of the window
  int64_t label_length;    // labels: the rest (prefix) or the whole window (reconstruct)
};

}  // namespace

std::string to_string(PerplexityMode mode) { return std::string(kPerplexityModeNames.name(mode)); }

PerplexityMode parse_perplexity_mode(const std::string& name) { return kPerplexityModeNames.parse(name, "--mode"); }

void check_mode_fits(PerplexityMode mode, const ModelMetadata& metadata, const std::string& model_path) {
  if (is_causal_mode(mode) == metadata.is_causal()) return;
  throw UsageError("--mode " + to_string(mode) + " is for " + (is_causal_mode(mode) ? "causal" : "T5") +
                   " models, but model '" + model_path + "' is a " + (metadata.is_causal() ? "causal" : "T5") +
                   " model (use --mode " + (metadata.is_causal() ? "causal or llamacpp" : "reconstruct or prefix") + ")");
}

torch::Tensor batch_logits(ContractModel& model, const EvalBatch& batch) {
  if (!batch.decoder_input_ids.defined()) return model.forward_causal(batch.input_ids, batch.attention_mask);
  return model.forward(batch.input_ids, batch.attention_mask, batch.decoder_input_ids);
}

double PerplexityResult::ppl() const {
  if (tokens <= 0) return std::numeric_limits<double>::quiet_NaN();
  return std::exp(mean_nll());
}

std::vector<EvalBatch> make_batches(const std::vector<std::vector<int64_t>>& windows, PerplexityMode mode,
                                    int64_t batch_size, const ModelMetadata& metadata) {
  if (batch_size < 1) throw UsageError("batch size must be >= 1, got " + std::to_string(batch_size));
  if (is_causal_mode(mode) || metadata.is_causal()) {
    throw UsageError("make_batches builds T5 batches; --mode " + to_string(mode) + " on a " + metadata.architecture +
                     " model goes through make_causal_batches (eval/causal_windows.h)");
  }
  std::vector<Example> examples;
  for (size_t w = 0; w < windows.size(); ++w) {
    const auto n = static_cast<int64_t>(windows[w].size());
    if (n > metadata.max_length) {
      throw UsageError("window " + std::to_string(w) + " has " + std::to_string(n) +
                       " tokens, more than the model's max_length " + std::to_string(metadata.max_length));
    }
    for (const int64_t id : windows[w]) {
      if (id < 0 || id >= metadata.vocab_size) {
        throw UsageError("window " + std::to_string(w) + " holds token id " + std::to_string(id) +
                         ", outside [0, vocab_size = " + std::to_string(metadata.vocab_size) + ")");
      }
    }
    if (mode == PerplexityMode::kReconstruct) {
      if (n >= 1) examples.push_back({w, n, n});
    } else if (n >= 2) {  // at least one encoder token and one label
      examples.push_back({w, n / 2, n - n / 2});
    }
  }
  if (examples.empty()) {
    // Consecutive windows of max_length tokens: several windows all shorter than 2 means max_length 1.
    throw DataError(mode == PerplexityMode::kReconstruct ? "no tokens to evaluate: every window is empty"
                    : windows.size() > 1
                        ? "text too short for prefix mode: windows of 1 token cannot be split into a prefix and "
                          "a label; use --max-length 2 or more"
                        : "text too short for prefix mode: no window has the 2 tokens needed for a prefix and a "
                          "label (the text gives no token besides EOS)");
  }
  // Longest first, so each batch holds windows of similar length; stable, so
  // the batches are a deterministic function of the input.
  std::stable_sort(examples.begin(), examples.end(), [](const Example& a, const Example& b) {
    return a.encoder_length + a.label_length > b.encoder_length + b.label_length;
  });

  std::vector<EvalBatch> batches;
  for (size_t first = 0; first < examples.size(); first += static_cast<size_t>(batch_size)) {
    const size_t last = std::min(examples.size(), first + static_cast<size_t>(batch_size));
    const auto rows = static_cast<int64_t>(last - first);
    int64_t s = 0, t = 0;
    for (size_t e = first; e < last; ++e) {
      s = std::max(s, examples[e].encoder_length);
      t = std::max(t, examples[e].label_length);
    }
    EvalBatch b;
    b.input_ids = torch::full({rows, s}, metadata.pad_token_id, torch::kInt64);
    b.attention_mask = torch::zeros({rows, s}, torch::kInt64);
    b.decoder_input_ids = torch::full({rows, t}, metadata.pad_token_id, torch::kInt64);
    b.labels = torch::full({rows, t}, metadata.pad_token_id, torch::kInt64);
    b.label_mask = torch::zeros({rows, t}, torch::kBool);
    auto input_ids = b.input_ids.accessor<int64_t, 2>();
    auto attention_mask = b.attention_mask.accessor<int64_t, 2>();
    auto decoder_input_ids = b.decoder_input_ids.accessor<int64_t, 2>();
    auto labels = b.labels.accessor<int64_t, 2>();
    auto label_mask = b.label_mask.accessor<bool, 2>();
    for (int64_t r = 0; r < rows; ++r) {
      const Example& ex = examples[first + static_cast<size_t>(r)];
      const std::vector<int64_t>& window = windows[ex.window];
      b.window_indices.push_back(ex.window);
      for (int64_t i = 0; i < ex.encoder_length; ++i) {
        input_ids[r][i] = window[static_cast<size_t>(i)];
        attention_mask[r][i] = 1;
      }
      const int64_t label_begin = mode == PerplexityMode::kReconstruct ? 0 : ex.encoder_length;
      for (int64_t j = 0; j < ex.label_length; ++j) {
        labels[r][j] = window[static_cast<size_t>(label_begin + j)];
        label_mask[r][j] = true;
        decoder_input_ids[r][j] =
            j == 0 ? metadata.decoder_start_token_id : window[static_cast<size_t>(label_begin + j - 1)];
      }
    }
    batches.push_back(std::move(b));
  }
  return batches;
}

int64_t count_label_tokens(const std::vector<EvalBatch>& batches) {
  int64_t n = 0;
  for (const EvalBatch& b : batches) n += b.label_mask.sum().item<int64_t>();
  return n;
}

torch::Tensor token_nll(const torch::Tensor& logits, const torch::Tensor& labels) {
  if (logits.dim() != 3 || logits.scalar_type() != torch::kFloat32) {
    throw UsageError("token_nll: logits must be float32 [B, T, V]");
  }
  if (labels.dim() != 2 || labels.scalar_type() != torch::kInt64 || labels.size(0) != logits.size(0) ||
      labels.size(1) != logits.size(1)) {
    throw UsageError("token_nll: labels must be int64 [B, T] matching the logits");
  }
  const int64_t vocab = logits.size(2);
  const torch::Tensor z = logits.contiguous();
  const torch::Tensor y = labels.contiguous();
  const int64_t rows = y.numel();
  const int64_t* label = y.data_ptr<int64_t>();
  for (int64_t i = 0; i < rows; ++i) {
    if (label[i] < 0 || label[i] >= vocab) {
      throw UsageError("token_nll: label " + std::to_string(label[i]) + " outside [0, V = " + std::to_string(vocab) + ")");
    }
  }
  torch::Tensor nll = torch::empty({labels.size(0), labels.size(1)}, torch::kFloat32);
  const float* zp = z.data_ptr<float>();
  float* out = nll.data_ptr<float>();
  at::parallel_for(0, rows, kNllRowsPerTask, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const float* row = zp + i * vocab;
      const kernel::SoftmaxRowStats s = kernel::softmax_row_stats(row, vocab);
      out[i] = s.label_nll(row[label[i]]);  // (1) as lse - z[label]
    }
  });
  return nll;
}

double PerplexityResult::mean_nll_stderr() const {
  if (tokens < 2) return std::numeric_limits<double>::quiet_NaN();
  const double n = static_cast<double>(tokens);
  const double mean = nll_sum / n;
  // (4); the variance is clamped at 0 against rounding when every nll_t is equal.
  const double variance = std::max(0.0, nll_sq_sum / n - mean * mean) * n / (n - 1);
  return std::sqrt(variance / n);
}

PerplexityResult evaluate_perplexity(ContractModel& model, const std::vector<EvalBatch>& batches,
                                     const PerplexityProgress& progress, const LogitsHook& on_logits) {
  torch::NoGradGuard no_grad;
  PerplexityResult result;
  const auto start = std::chrono::steady_clock::now();
  for (size_t i = 0; i < batches.size(); ++i) {
    const EvalBatch& b = batches[i];
    const torch::Tensor logits = batch_logits(model, b);
    const torch::Tensor nll = token_nll(logits, b.labels);
    // (2): float32 terms, summed in double.
    const torch::Tensor label_nll = nll.masked_select(b.label_mask).to(torch::kFloat64);
    result.nll_sum += label_nll.sum().item<double>();
    result.nll_sq_sum += label_nll.square().sum().item<double>();
    result.tokens += b.label_mask.sum().item<int64_t>();
    if (on_logits) on_logits(b, logits);
    if (progress) progress(i + 1, batches.size());
  }
  result.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  if (!std::isfinite(result.nll_sum)) {
    throw DataError("model '" + model.path() + "': the negative log-likelihood is not finite (" +
                    std::to_string(result.nll_sum) + "): the model produced NaN or Inf logits");
  }
  return result;
}

}  // namespace quantppl
