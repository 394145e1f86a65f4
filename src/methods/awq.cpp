// AWQ's scale search; the math and decisions are in include/quantppl/methods/awq.h.
#include "quantppl/methods/awq.h"

#include <cmath>
#include <limits>

#include <fmt/format.h>
#include <fmt/ranges.h>  // fmt::join (there since fmt 11; fmt 9 has it in format.h too)
#include <torch/torch.h>

#include "quantppl/error.h"

namespace quantppl {
namespace {

// W_hat(s) of (1), float32.
torch::Tensor awq_scaled_fake_quantize(const torch::Tensor& weight, const torch::Tensor& scales,
                                   const WeightFormat& format, const std::string& name) {
  torch::Tensor scaled = weight * scales.unsqueeze(0);
  format.fake_quantize_into(scaled, scaled, name);
  return scaled.div_(scales.unsqueeze(0));
}

// tr(dW H dW^T) with a float32 product, summed in float64.
double awq_output_error_f32(const torch::Tensor& weight, const torch::Tensor& weight_hat, const torch::Tensor& h32) {
  const torch::Tensor d = weight_hat - weight;
  return (d.mm(h32) * d).sum(torch::kFloat64).item<double>();
}

}  // namespace

torch::Tensor awq_scales(const torch::Tensor& mean_abs, double alpha, const std::string& name) {
  torch::NoGradGuard no_grad;
  const torch::Tensor m = mean_abs.to(torch::kFloat64).reshape({-1});
  if (!torch::isfinite(m).all().item<bool>() || (m < 0).any().item<bool>()) {
    throw DataError(fmt::format("AWQ: the mean |x| of layer '{}' must be finite and >= 0", name));
  }
  const torch::Tensor active = m > 0;
  torch::Tensor s = torch::ones_like(m);
  if (active.any().item<bool>()) {
    const torch::Tensor powered = m.masked_select(active).pow(alpha);
    const double norm = std::sqrt(powered.max().item<double>() * powered.min().item<double>());
    s.masked_scatter_(active, powered / norm);
  }
  return s.to(torch::kFloat32);
}

torch::Tensor scale_hessian(const torch::Tensor& hessian, const torch::Tensor& scales) {
  const torch::Tensor inv = 1.0 / scales.to(torch::kFloat64);
  return hessian.to(torch::kFloat64) * inv.unsqueeze(0) * inv.unsqueeze(1);
}

AwqResult awq_search(const std::vector<AwqLayer>& layers, const WeightFormat& format, const AwqOptions& options) {
  if (layers.empty()) throw UsageError("AWQ: a layer group needs at least one layer");
  if (options.grid <= 0) throw UsageError(fmt::format("AWQ: the alpha grid must have > 0 points, got {}", options.grid));
  torch::NoGradGuard no_grad;
  const int64_t in = layers[0].weight.size(-1);
  std::vector<torch::Tensor> h32;
  for (const AwqLayer& layer : layers) {
    if (layer.stats == nullptr) throw DataError(fmt::format("AWQ: layer '{}' has no calibration statistics", layer.name));
    const LayerActivationStats& st = *layer.stats;
    if (layer.weight.dim() != 2 || layer.weight.size(1) != in) {
      throw DataError(fmt::format("AWQ: layer '{}' must be [out, {}] like the rest of its group, got {}", layer.name,
                                  in, fmt::join(layer.weight.sizes(), "x")));
    }
    if (!st.hessian.defined() || st.hessian.dim() != 2 || st.hessian.size(0) != in || st.hessian.size(1) != in ||
        !st.mean_abs.defined() || st.mean_abs.numel() != in) {
      throw DataError(fmt::format("AWQ: the statistics of layer '{}' do not match its in_features {}", layer.name, in));
    }
    if (!torch::isfinite(layer.weight).all().item<bool>()) {
      throw DataError(fmt::format("AWQ: weight '{}' contains NaN or Inf", layer.name));
    }
    if (!torch::isfinite(st.hessian).all().item<bool>()) {
      throw DataError(fmt::format("AWQ: the Hessian of layer '{}' contains NaN or Inf", layer.name));
    }
    h32.push_back(st.hessian.to(torch::kFloat32).contiguous());
  }

  AwqResult result;
  double best = std::numeric_limits<double>::infinity();
  std::vector<torch::Tensor> weights(layers.size());
  std::vector<double> errors(layers.size());
  for (int64_t k = 0; k < options.grid; ++k) {
    const double alpha = static_cast<double>(k) / static_cast<double>(options.grid);
    const torch::Tensor s = awq_scales(layers[0].stats->mean_abs, alpha, layers[0].name);
    double total = 0;
    for (size_t l = 0; l < layers.size(); ++l) {
      const torch::Tensor w = layers[l].weight.to(torch::kFloat32);
      weights[l] = awq_scaled_fake_quantize(w, s, format, layers[l].name);
      errors[l] = awq_output_error_f32(w, weights[l], h32[l]);
      total += errors[l];
    }
    if (k == 0) result.rtn_output_errors = errors;
    result.search_errors.push_back(total);
    if (total < best || k == 0) {
      best = total;
      result.alpha = alpha;
      result.scales = s;
      result.weights = weights;
      result.output_errors = errors;
    }
  }
  return result;
}

GptqResult awq_gptq_quantize(const torch::Tensor& weight, const torch::Tensor& hessian, const torch::Tensor& scales,
                             const WeightFormat& format, const std::string& name, const GptqOptions& options) {
  torch::NoGradGuard no_grad;
  const torch::Tensor s = scales.to(torch::kFloat32).reshape({-1});
  if (weight.dim() != 2 || s.numel() != weight.size(1) || !(s > 0).all().item<bool>()) {
    throw DataError(fmt::format("AWQ+GPTQ: the scales of layer '{}' must be {} positive numbers", name,
                                weight.dim() == 2 ? weight.size(1) : 0));
  }
  const torch::Tensor scaled = weight.to(torch::kFloat32) * s.unsqueeze(0);
  GptqResult r = gptq_quantize(scaled, scale_hessian(hessian, s), format, name, options);
  r.weight.div_(s.unsqueeze(0));
  r.relative_error = relative_output_error(weight, r.weight, hessian);
  return r;
}

}  // namespace quantppl
