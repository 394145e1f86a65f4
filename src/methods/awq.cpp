// AWQ's scale search; the math and decisions are in include/quantppl/methods/awq.h.
#include "quantppl/methods/awq.h"

#include <algorithm>
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

// d_r H d_r^T for every row r of D = dW (float64 [rows]), with float32
// products summed in float64, using the symmetry of H to skip about half of
// the products: with D_a the columns of block a (kErrorBlock inputs) and H_ab
// the matching block of H,
//
//   D H D^T's diagonal = sum_a rowsum(D_a H_aa * D_a) + 2 sum_{a<b} rowsum(D_a H_ab * D_b),
//
// and P_a = D_a H[a, a:] gives both terms of block a in one product: the
// flops are (K + 1) / (2K) of D H's for K blocks (62.5% at in = 512, 56% at
// 1024). Each term is a float32 dot product of length kErrorBlock (u = 2^-24,
// |error| <= kErrorBlock u sum |d||H||d| to first order), summed in float64.
constexpr int64_t kErrorBlock = 128;

torch::Tensor row_output_errors(const torch::Tensor& d, const torch::Tensor& h32) {
  const int64_t in = d.size(1);
  torch::Tensor rows = torch::zeros({d.size(0)}, torch::kFloat64);
  for (int64_t a0 = 0; a0 < in; a0 += kErrorBlock) {
    const int64_t a1 = std::min(a0 + kErrorBlock, in);
    const torch::Tensor da = d.slice(1, a0, a1);
    const torch::Tensor p = da.mm(h32.slice(0, a0, a1).slice(1, a0));  // [rows, in - a0]
    rows.add_((p.slice(1, 0, a1 - a0) * da).sum(1, /*keepdim=*/false, torch::kFloat64));
    if (a1 < in) {
      rows.add_((p.slice(1, a1 - a0) * d.slice(1, a1)).sum(1, /*keepdim=*/false, torch::kFloat64), /*alpha=*/2);
    }
  }
  return rows;
}

// The alphas are evaluated in chunks: D of up to kChunkBytes of candidates of
// one layer stacked as rows, [k * out, in], so that each block product of
// row_output_errors is one large GEMM for the whole chunk rather than one
// small one per alpha (fewer, larger BLAS calls: each call's thread hand-off
// costs little next to its work). The numbers are the same as one alpha at a
// time: the rows are independent.
constexpr int64_t kChunkBytes = int64_t{64} << 20;

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
  std::vector<torch::Tensor> scales;
  for (int64_t k = 0; k < options.grid; ++k) {
    scales.push_back(awq_scales(layers[0].stats->mean_abs, static_cast<double>(k) / static_cast<double>(options.grid),
                                layers[0].name));
  }
  // errors[l][k]: tr(dW H dW^T) of layer l at alpha_k.
  std::vector<std::vector<double>> errors(layers.size(), std::vector<double>(static_cast<size_t>(options.grid)));
  for (size_t l = 0; l < layers.size(); ++l) {
    const torch::Tensor w = layers[l].weight.to(torch::kFloat32).contiguous();
    const int64_t out = w.size(0);
    const int64_t chunk = std::max<int64_t>(1, std::min<int64_t>(options.grid, kChunkBytes / std::max<int64_t>(1, 4 * w.numel())));
    torch::Tensor d = torch::empty({chunk, out, in}, torch::kFloat32);
    for (int64_t k0 = 0; k0 < options.grid; k0 += chunk) {
      const int64_t k1 = std::min(k0 + chunk, options.grid);
      for (int64_t k = k0; k < k1; ++k) {
        // dW = W_hat(s) - W of (1), in the chunk's slot.
        const torch::Tensor s = scales[static_cast<size_t>(k)].unsqueeze(0);
        torch::Tensor slot = d[k - k0];
        torch::mul_out(slot, w, s);
        format.fake_quantize_into(slot, slot, layers[l].name);
        slot.div_(s).sub_(w);
      }
      const torch::Tensor per_alpha =
          row_output_errors(d.slice(0, 0, k1 - k0).view({-1, in}), h32[l]).view({k1 - k0, out}).sum(1);
      const auto a = per_alpha.accessor<double, 1>();
      for (int64_t k = k0; k < k1; ++k) errors[l][static_cast<size_t>(k)] = a[k - k0];
    }
  }
  int64_t best = 0;
  for (int64_t k = 0; k < options.grid; ++k) {
    double total = 0;
    for (size_t l = 0; l < layers.size(); ++l) total += errors[l][static_cast<size_t>(k)];
    result.search_errors.push_back(total);
    if (total < result.search_errors[static_cast<size_t>(best)]) best = k;
  }
  result.alpha = static_cast<double>(best) / static_cast<double>(options.grid);
  result.scales = scales[static_cast<size_t>(best)];
  for (size_t l = 0; l < layers.size(); ++l) {
    // W_hat at alpha*, recomputed: the same arithmetic as its dW above.
    result.weights.push_back(
        awq_scaled_fake_quantize(layers[l].weight.to(torch::kFloat32).contiguous(), result.scales, format, layers[l].name));
    result.output_errors.push_back(errors[l][static_cast<size_t>(best)]);
    result.rtn_output_errors.push_back(errors[l][0]);
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
