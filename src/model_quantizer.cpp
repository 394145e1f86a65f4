#include "quantppl/model_quantizer.h"

#include <regex>

#include <fmt/format.h>
#include <torch/torch.h>

#include "quantppl/error.h"

namespace quantppl {
namespace {

std::regex compile_pattern(const std::string& pattern, const char* flag) {
  try {
    return std::regex(pattern, std::regex::ECMAScript);
  } catch (const std::regex_error& e) {
    throw UsageError(fmt::format("{} '{}' is not a valid regular expression: {}", flag, pattern, e.what()));
  }
}

}  // namespace

std::vector<LinearLayer> select_layers(const std::vector<LinearLayer>& layers, const std::string& include,
                                       const std::string& exclude) {
  const std::regex include_re = compile_pattern(include.empty() ? "" : include, "--include");
  const std::regex exclude_re = compile_pattern(exclude, "--exclude");
  std::vector<LinearLayer> selected;
  for (const LinearLayer& layer : layers) {
    if (!include.empty() && !std::regex_search(layer.name, include_re)) continue;
    if (!exclude.empty() && std::regex_search(layer.name, exclude_re)) continue;
    selected.push_back(layer);
  }
  if (selected.empty()) {
    throw UsageError(fmt::format("no Linear layer is selected by --include '{}' --exclude '{}' (the model has {}, e.g. '{}')",
                                 include, exclude, layers.size(), layers.empty() ? "" : layers.front().name));
  }
  return selected;
}

WeightBackup::WeightBackup(std::vector<LinearLayer> layers) : layers_(std::move(layers)) {
  torch::NoGradGuard no_grad;
  originals_.reserve(layers_.size());
  for (const LinearLayer& layer : layers_) originals_.push_back(layer.weight.detach().clone(torch::MemoryFormat::Contiguous));
}

void WeightBackup::restore() {
  torch::NoGradGuard no_grad;
  for (size_t i = 0; i < layers_.size(); ++i) layers_[i].weight.copy_(originals_[i]);
}

int64_t WeightBackup::parameter_count() const {
  int64_t n = 0;
  for (const torch::Tensor& t : originals_) n += t.numel();
  return n;
}

ModelQuantization apply_variant(WeightBackup& backup, const QuantConfig& config) {
  validate(config);
  backup.restore();
  torch::NoGradGuard no_grad;
  ModelQuantization result;
  for (size_t i = 0; i < backup.layers().size(); ++i) {
    const LinearLayer& layer = backup.layers()[i];
    torch::Tensor weight = layer.weight;
    LayerQuantization lq;
    lq.name = layer.name;
    lq.params = fake_quantize_(weight, config, layer.name);
    lq.error = error_metrics(backup.original(i), weight);
    result.total.merge(lq.error);
    result.layers.push_back(std::move(lq));
  }
  return result;
}

std::vector<QParams> choose_variant_params(const WeightBackup& backup, const QuantConfig& config) {
  std::vector<QParams> params;
  params.reserve(backup.layers().size());
  for (size_t i = 0; i < backup.layers().size(); ++i) {
    params.push_back(choose_qparams(backup.original(i), config, backup.layers()[i].name));
  }
  return params;
}

void apply_variant_params(WeightBackup& backup, const QuantConfig& config, const std::vector<QParams>& params) {
  if (params.size() != backup.layers().size()) throw UsageError("apply_variant_params: one QParams per layer expected");
  backup.restore();
  torch::NoGradGuard no_grad;
  for (size_t i = 0; i < params.size(); ++i) {
    torch::Tensor weight = backup.layers()[i].weight;
    fake_quantize_with_(weight, params[i], config, backup.layers()[i].name);
  }
}

}  // namespace quantppl
