#include "quantppl/methods/calibration.h"

#include <cstdlib>
#include <limits>
#include <map>

#include <fmt/format.h>

#include "quantppl/error.h"
#include "quantppl/eval/causal_windows.h"
#include "quantppl/methods/activation_capture.h"
#include "quantppl/methods/calibration_file.h"
#include "quantppl/sha256.h"
#include "quantppl/text_windows.h"

namespace quantppl {
namespace {

// The float64 sums of one input group over the batches seen so far.
struct GroupSums {
  torch::Tensor xtx;      // float64 [in, in]: sum_n x_n x_n^T
  torch::Tensor sum_abs;  // float64 [in]
  torch::Tensor max_abs;  // float32 [in]
  int64_t tokens = 0;
};

// The mask of the last masked argument `depends_on` includes, or -1.
int64_t mask_argument(uint64_t depends_on, const std::vector<torch::Tensor>& masks) {
  for (int64_t a = static_cast<int64_t>(masks.size()) - 1; a >= 0; --a) {
    if (masks[static_cast<size_t>(a)].defined() && a < 64 && (depends_on >> a) & 1) return a;
  }
  return -1;
}

bool same_file(const std::string& a, const std::string& b) {
  if (a == b) return true;
  char* ra = ::realpath(a.c_str(), nullptr);
  char* rb = ::realpath(b.c_str(), nullptr);
  const bool same = ra != nullptr && rb != nullptr && std::string(ra) == std::string(rb);
  std::free(ra);
  std::free(rb);
  return same;
}

}  // namespace

std::string default_calibration_text_path() {
  const char* env = std::getenv("QUANTPPL_HOME");
  const std::string home = env != nullptr && *env != '\0' ? std::string(env) : std::string(QUANTPPL_SOURCE_DIR);
  return home + "/data/calibration.txt";
}

CalibrationBatch t5_calibration_batch(const EvalBatch& batch) {
  CalibrationBatch out;
  out.arguments = {batch.input_ids, batch.attention_mask, batch.decoder_input_ids};
  out.position_masks = {batch.attention_mask.ne(0), torch::Tensor(), batch.label_mask.to(torch::kBool)};
  return out;
}

CalibrationBatch causal_calibration_batch(const EvalBatch& batch) {
  CalibrationBatch out;
  out.arguments = {batch.input_ids, batch.attention_mask};
  out.position_masks = {batch.attention_mask.ne(0), torch::Tensor()};
  return out;
}

CalibrationStats collect_calibration_stats(ContractModel& model, const std::vector<std::string>& layer_names,
                                           const std::vector<CalibrationBatch>& batches,
                                           const CalibrationProgress& progress) {
  if (batches.empty()) throw UsageError("calibration: no calibration batch (the calibration text gave no window)");
  const ActivityScope activity("collecting calibration statistics of model '" + model.path() + "'");
  ActivationCapture capture(model, layer_names, /*keep_output=*/false);
  const auto& groups = capture.groups();
  const auto& layers = capture.layers();
  std::vector<GroupSums> sums(groups.size());
  for (size_t g = 0; g < groups.size(); ++g) {
    const int64_t in = groups[g].in_features;
    sums[g].xtx = torch::zeros({in, in}, torch::kFloat64);
    sums[g].sum_abs = torch::zeros({in}, torch::kFloat64);
    sums[g].max_abs = torch::zeros({in}, torch::kFloat32);
  }
  auto fail = [&](size_t g, const std::string& what) {
    throw DataError(fmt::format("calibration of model '{}': the input of Linear layer '{}' {}", model.path(),
                                layers[groups[g].layers.front()].name, what));
  };
  for (size_t b = 0; b < batches.size(); ++b) {
    const CalibrationBatch& batch = batches[b];
    CapturedBatch captured = capture.run(batch.arguments);
    c10::InferenceMode inference;
    for (size_t g = 0; g < groups.size(); ++g) {
      const int64_t a = mask_argument(groups[g].depends_on, batch.position_masks);
      if (a < 0) fail(g, "depends on no forward argument with token positions");
      const torch::Tensor& mask = batch.position_masks[static_cast<size_t>(a)];
      torch::Tensor x = captured.inputs[g];
      const int64_t in = groups[g].in_features;
      if (x.dim() != 3 || mask.dim() != 2 || x.size(0) != mask.size(0) || x.size(1) != mask.size(1)) {
        fail(g, fmt::format("has shape {}, expected [B, L, {}] with [B, L] = {} (the positions of argument {})",
                            c10::str(x.sizes()), in, c10::str(mask.sizes()), a));
      }
      x = x.reshape({-1, in});
      const torch::Tensor flat_mask = mask.reshape({-1});
      // Only the real token positions; no copy when every position is one.
      if (!flat_mask.all().item<bool>()) x = x.index_select(0, flat_mask.nonzero().reshape({-1}));
      x = x.contiguous();
      if (x.size(0) == 0) continue;
      // (1): one float32 GEMM per batch, summed over batches in float64 (bound (4)).
      sums[g].xtx.add_(torch::mm(x.t(), x).to(torch::kFloat64));
      const torch::Tensor abs = x.abs();
      sums[g].sum_abs.add_(abs.sum(0, /*keepdim=*/false, torch::kFloat64));
      sums[g].max_abs = torch::maximum(sums[g].max_abs, std::get<0>(abs.max(0)));
      sums[g].tokens += x.size(0);
    }
    captured = CapturedBatch();
    if (progress) progress(b + 1, batches.size());
  }

  CalibrationStats stats;
  stats.model_sha256 = model.file_sha256();
  std::vector<LayerActivationStats> group_stats(groups.size());
  for (size_t g = 0; g < groups.size(); ++g) {
    const int64_t n = sums[g].tokens;
    if (n == 0) fail(g, "saw no real token position (every calibration position was padding)");
    LayerActivationStats& s = group_stats[g];
    s.in_features = groups[g].in_features;
    s.tokens = n;
    const double scale = 2.0 / static_cast<double>(n);
    s.hessian = ((sums[g].xtx + sums[g].xtx.t()) * (scale / 2)).to(torch::kFloat32);
    s.mean_abs = (sums[g].sum_abs / static_cast<double>(n)).to(torch::kFloat32);
    s.max_abs = sums[g].max_abs.clone();
    s.shared_input = static_cast<int64_t>(g);
    if (!torch::isfinite(s.hessian).all().item<bool>() || !torch::isfinite(s.max_abs).all().item<bool>()) {
      fail(g, "holds NaN or Inf (or its x x^T overflows float32): the model's activations are not finite");
    }
    sums[g] = GroupSums();
  }
  for (const CapturedLayer& layer : layers) {
    LayerActivationStats s = group_stats[static_cast<size_t>(layer.group)];
    s.name = layer.name;
    stats.layers.push_back(std::move(s));
  }
  return stats;
}

CalibrationText load_calibration_text(const std::string& path, const Tokenizer& tokenizer, int64_t eos_id,
                                      int64_t max_length, int64_t max_tokens) {
  if (max_tokens < 0) throw UsageError("--calibration-tokens must be >= 0, got " + std::to_string(max_tokens));
  if (max_length < 1) throw UsageError("calibration window length must be >= 1, got " + std::to_string(max_length));
  EvalText text = load_eval_text(path, tokenizer, eos_id, max_length);
  if (max_tokens > 0 && static_cast<size_t>(max_tokens) < text.token_ids.size()) {
    text.token_ids.resize(static_cast<size_t>(max_tokens));
  }
  CalibrationText out;
  out.path = path;
  out.sha256 = text.sha256;
  out.tokens = static_cast<int64_t>(text.token_ids.size());
  out.windows = cut_windows(text.token_ids, max_length);
  return out;
}

std::vector<CalibrationBatch> t5_calibration_batches(const CalibrationText& text, int64_t batch_size,
                                                     const ModelMetadata& metadata) {
  std::vector<CalibrationBatch> batches;
  for (const EvalBatch& b : make_batches(text.windows, PerplexityMode::kReconstruct, batch_size, metadata)) {
    batches.push_back(t5_calibration_batch(b));
  }
  return batches;
}

const LayerActivationStats* find_layer_stats(const CalibrationStats& stats, const std::string& name) {
  for (const LayerActivationStats& layer : stats.layers) {
    if (layer.name == name) return &layer;
  }
  return nullptr;
}

namespace {

// The warning when the calibration text is the evaluation text (same path or same sha256).
void same_text_warning(const CalibrationRequest& request, const CalibrationWarning& warn,
                     const std::string& calibration_path, const std::string& calibration_sha) {
  if (!warn || request.eval_text_path.empty()) return;
  bool same = request.eval_text_path != "-" && same_file(calibration_path, request.eval_text_path);
  std::string eval_sha = request.eval_text_sha256;
  if (!same && eval_sha.empty() && request.eval_text_path != "-") {
    try {
      eval_sha = sha256_file(request.eval_text_path);
    } catch (const Error&) {
    }
  }
  same = same || (!eval_sha.empty() && eval_sha == calibration_sha);
  if (same) {
    warn(fmt::format("calibration text '{}' is the evaluation text '{}' (same file or same sha256): the measured "
                     "quantization error will be optimistic; calibrate on other text (--calibration)",
                     calibration_path, request.eval_text_path));
  }
}

}  // namespace

CalibrationStats calibration_stats_for_run(ContractModel& model, const std::vector<LinearLayer>& layers,
                                           const CalibrationRequest& request, const CalibrationWarning& warn,
                                           const CalibrationProgress& progress) {
  CalibrationStats stats;
  if (!request.stats_path.empty()) {
    stats = read_calibration_stats(request.stats_path);
    if (stats.model_sha256 != model.file_sha256()) {
      throw DataError(fmt::format("calibration stats '{}' were made from model sha256 {}, but model '{}' has sha256 {}: "
                                  "run `quantppl calibrate` on this model",
                                  request.stats_path, stats.model_sha256, model.path(), model.file_sha256()));
    }
    same_text_warning(request, warn, stats.text_path, stats.text_sha256);
    CalibrationStats selected = stats;
    selected.layers.clear();
    for (const LinearLayer& layer : layers) {
      const LayerActivationStats* s = find_layer_stats(stats, layer.name);
      if (s == nullptr) {
        throw DataError(fmt::format("calibration stats '{}' have no layer '{}' (made with another --include/--exclude?)",
                                    request.stats_path, layer.name));
      }
      if (s->in_features != layer.weight.size(1)) {
        throw DataError(fmt::format("calibration stats '{}': layer '{}' has in_features {}, the model's weight has {}",
                                    request.stats_path, layer.name, s->in_features, layer.weight.size(1)));
      }
      selected.layers.push_back(*s);
    }
    return selected;
  }

  CalibrationInputs inputs = calibration_inputs_for_run(model, request, warn);
  std::vector<std::string> names;
  for (const LinearLayer& layer : layers) names.push_back(layer.name);
  stats = collect_calibration_stats(model, names, inputs.batches, progress);
  stats.text_path = inputs.text.path;
  stats.text_sha256 = inputs.text.sha256;
  stats.tokens = inputs.text.tokens;
  return stats;
}

CalibrationInputs calibration_inputs_for_run(ContractModel& model, const CalibrationRequest& request,
                                             const CalibrationWarning& warn) {
  const std::string text_path = request.text_path.empty() ? default_calibration_text_path() : request.text_path;
  const ModelMetadata& meta = model.metadata();
  const int64_t max_length = request.max_length > 0 ? request.max_length : meta.max_length;
  if (max_length > meta.max_length) {
    throw UsageError(fmt::format("calibration window length {} exceeds model '{}''s max_length {}", max_length,
                                 model.path(), meta.max_length));
  }
  CalibrationInputs inputs;
  if (!meta.is_causal()) {
    inputs.text = load_calibration_text(text_path, model.tokenizer(), meta.eos_token_id, max_length, request.tokens);
    inputs.text.path = text_path;
    same_text_warning(request, warn, text_path, inputs.text.sha256);
    inputs.batches = t5_calibration_batches(inputs.text, request.batch_size, meta);
    return inputs;
  }
  // A causal model: the text's ids as its evaluation reads them (no EOS; BPE encodes the whole
  // text), the first N kept, in consecutive windows of max_length (--mode causal, no stride).
  if (request.tokens < 0) throw UsageError("--calibration-tokens must be >= 0, got " + std::to_string(request.tokens));
  EvalText text = load_eval_ids(text_path, model.tokenizer());
  if (request.tokens > 0 && static_cast<size_t>(request.tokens) < text.token_ids.size()) {
    text.token_ids.resize(static_cast<size_t>(request.tokens));
  }
  inputs.text.path = text_path;
  inputs.text.sha256 = text.sha256;
  inputs.text.tokens = static_cast<int64_t>(text.token_ids.size());
  same_text_warning(request, warn, text_path, inputs.text.sha256);
  CausalWindowOptions w;
  w.mode = PerplexityMode::kCausal;
  w.max_length = max_length;
  w.add_bos = meta.add_bos;
  w.bos_token_id = meta.bos_token_id;
  for (const EvalBatch& b : make_causal_batches(causal_windows(text.token_ids, w), request.batch_size, meta)) {
    inputs.batches.push_back(causal_calibration_batch(b));
  }
  return inputs;
}

}  // namespace quantppl
