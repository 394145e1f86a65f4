// Applying a method to a model's layers; see include/quantppl/methods/apply_method.h.
#include "quantppl/methods/apply_method.h"

#include <cmath>
#include <map>

#include <fmt/format.h>
#include <torch/torch.h>

#include "quantppl/error.h"
#include "quantppl/methods/method_weight.h"

namespace quantppl {

namespace {

torch::Tensor round_to_nearest(const torch::Tensor& weight, const WeightFormat& format, const std::string& name) {
  torch::Tensor out = torch::empty_like(weight);
  format.fake_quantize_into(weight.contiguous(), out, name);
  return out;
}

// AWQ groups: layers with the same shared_input id, in order of first appearance.
std::vector<std::vector<size_t>> shared_input_groups(const std::vector<LayerToQuantize>& layers) {
  std::vector<std::vector<size_t>> groups;
  std::map<int64_t, size_t> group_of;
  for (size_t i = 0; i < layers.size(); ++i) {
    const int64_t id = layers[i].stats->shared_input;
    if (id < 0) {
      groups.push_back({i});
      continue;
    }
    const auto [it, inserted] = group_of.emplace(id, groups.size());
    if (inserted) groups.emplace_back();
    groups[it->second].push_back(i);
  }
  return groups;
}

}  // namespace

std::vector<LayerMethodResult> apply_method(const std::vector<LayerToQuantize>& layers, const WeightFormat& format,
                                            const MethodChoice& method) {
  torch::NoGradGuard no_grad;
  if (method_needs_calibration(method.kind)) {
    for (const LayerToQuantize& layer : layers) {
      if (layer.stats == nullptr) {
        throw UsageError(fmt::format("method '{}' needs calibration statistics, and layer '{}' has none",
                                     method_label(method.kind), layer.name));
      }
    }
  }
  std::vector<LayerMethodResult> results(layers.size());
  switch (method.kind) {
    case MethodKind::kRtn:
      for (size_t i = 0; i < layers.size(); ++i) {
        results[i].weight = round_to_nearest(layers[i].weight, format, layers[i].name);
        results[i].format_weight = results[i].weight;
      }
      break;
    case MethodKind::kHqq:
      for (size_t i = 0; i < layers.size(); ++i) {
        const torch::Tensor w = layers[i].weight.to(torch::kFloat32).contiguous();
        results[i].prepared = hqq_prepare(w, format, layers[i].name, method.hqq, &results[i].hqq_iterations);
        results[i].weight = torch::empty_like(w);
        results[i].prepared->fake_quantize_into(w, results[i].weight);
        results[i].format_weight = results[i].weight;
      }
      break;
    case MethodKind::kGptq:
      for (size_t i = 0; i < layers.size(); ++i) {
        GptqResult r = gptq_quantize(layers[i].weight, layers[i].stats->hessian, format, layers[i].name, method.gptq);
        results[i].weight = r.weight;
        results[i].format_weight = r.weight;
        results[i].parameter_source = std::move(r.parameter_source);
        results[i].group_whole = std::move(r.group_whole);
        results[i].relative_error = r.relative_error;
      }
      break;
    case MethodKind::kAwq:
    case MethodKind::kAwqGptq:
      for (const std::vector<size_t>& group : shared_input_groups(layers)) {
        std::vector<AwqLayer> awq_layers;
        for (const size_t i : group) awq_layers.push_back({layers[i].name, layers[i].weight, layers[i].stats});
        const AwqResult r = awq_search(awq_layers, format, method.awq);
        for (size_t j = 0; j < group.size(); ++j) {
          const size_t i = group[j];
          LayerMethodResult& out = results[i];
          out.awq_alpha = r.alpha;
          out.input_scales = r.scales;
          // V = Q(W diag(s)) as awq.h (1) computes it; W_hat = V / s is then r.weights[j] bit-for-bit.
          const torch::Tensor scaled = layers[i].weight.to(torch::kFloat32) * r.scales.unsqueeze(0);
          if (method.kind == MethodKind::kAwq) {
            out.format_weight = torch::empty_like(scaled);
            format.fake_quantize_into(scaled.contiguous(), out.format_weight, layers[i].name);
          } else {
            GptqResult g = gptq_quantize(scaled, scale_hessian(layers[i].stats->hessian, r.scales), format,
                                         layers[i].name, method.gptq);
            out.format_weight = std::move(g.weight);
            out.parameter_source = std::move(g.parameter_source);
            out.group_whole = std::move(g.group_whole);
          }
          out.weight = unscale_inputs(out.format_weight, out.input_scales);
        }
      }
      break;
  }
  // e for the method and for RTN wherever H is known (inspect shows both).
  for (size_t i = 0; i < layers.size(); ++i) {
    const LayerActivationStats* st = layers[i].stats;
    if (st == nullptr || !st->hessian.defined()) continue;
    if (std::isnan(results[i].relative_error)) {
      results[i].relative_error = relative_output_error(layers[i].weight, results[i].weight, st->hessian);
    }
    results[i].rtn_relative_error =
        method.kind == MethodKind::kRtn
            ? results[i].relative_error
            : relative_output_error(layers[i].weight, round_to_nearest(layers[i].weight, format, layers[i].name),
                                    st->hessian);
  }
  return results;
}

}  // namespace quantppl
