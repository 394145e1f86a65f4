// GPTQ; the math and every decision are in include/quantppl/methods/gptq.h.
//
// The column loop works on W^T ([in, out], one contiguous row per input
// column), so that a column is a contiguous vector and the updates (3)-(4) are
// addr_/addmm_ on contiguous rows.
#include "quantppl/methods/gptq.h"

#include <cmath>
#include <limits>
#include <memory>
#include <vector>

#include <fmt/format.h>
#include <fmt/ranges.h>  // fmt::join (there since fmt 11; fmt 9 has it in format.h too)
#include <torch/torch.h>

#include "quantppl/error.h"

namespace quantppl {
namespace {

using torch::indexing::Slice;

void check_gptq_inputs(const torch::Tensor& weight, const torch::Tensor& hessian, const std::string& name,
                  const GptqOptions& options) {
  if (options.block_size <= 0) {
    throw UsageError(fmt::format("GPTQ block size must be > 0, got {}", options.block_size));
  }
  if (!std::isfinite(options.damp) || options.damp < 0) {
    throw UsageError(fmt::format("GPTQ damping must be a finite number >= 0, got {}", options.damp));
  }
  if (weight.dim() != 2) {
    throw DataError(fmt::format("GPTQ: weight '{}' must be 2-D [out, in], got {} dimensions", name, weight.dim()));
  }
  const int64_t in = weight.size(1);
  if (hessian.dim() != 2 || hessian.size(0) != in || hessian.size(1) != in) {
    throw DataError(fmt::format("GPTQ: the Hessian of layer '{}' must be [{}, {}] (its in_features), got {}", name, in,
                                in, fmt::join(hessian.sizes(), "x")));
  }
  if (!torch::isfinite(weight).all().item<bool>()) {
    throw DataError(fmt::format("GPTQ: weight '{}' contains NaN or Inf", name));
  }
  if (!torch::isfinite(hessian).all().item<bool>()) {
    throw DataError(fmt::format("GPTQ: the Hessian of layer '{}' contains NaN or Inf", name));
  }
}

// U, the upper Cholesky factor of (H + lambda I)^-1 (3), in float64.
torch::Tensor inverse_hessian_factor(torch::Tensor h, double damp, const std::string& name) {
  const double lambda = damp * h.diagonal().mean().item<double>();
  h.diagonal().add_(lambda);
  auto [lower, info] = torch::linalg_cholesky_ex(h, /*upper=*/false, /*check_errors=*/false);
  if (info.item<int64_t>() != 0) {
    throw DataError(fmt::format(
        "GPTQ: the Hessian of layer '{}' is not positive definite after damping (lambda = {:.3g}); "
        "the calibration statistics are corrupt or the damping is too small",
        name, lambda));
  }
  const torch::Tensor h_inverse = torch::cholesky_inverse(lower, /*upper=*/false);
  auto [upper, info2] = torch::linalg_cholesky_ex(h_inverse, /*upper=*/true, /*check_errors=*/false);
  if (info2.item<int64_t>() != 0) {
    throw DataError(fmt::format("GPTQ: the inverse Hessian of layer '{}' is not positive definite (lambda = {:.3g})",
                                name, lambda));
  }
  return upper;
}

}  // namespace

double output_error(const torch::Tensor& weight, const torch::Tensor& weight_hat, const torch::Tensor& hessian) {
  torch::NoGradGuard no_grad;
  const torch::Tensor h = hessian.to(torch::kFloat64);
  const torch::Tensor d = weight_hat.to(torch::kFloat64) - weight.to(torch::kFloat64);
  return (d.mm(h) * d).sum().item<double>();
}

double relative_output_error(const torch::Tensor& weight, const torch::Tensor& weight_hat,
                             const torch::Tensor& hessian) {
  torch::NoGradGuard no_grad;
  const double numerator = output_error(weight, weight_hat, hessian);
  const torch::Tensor w = weight.to(torch::kFloat64);
  const double denominator = (w.mm(hessian.to(torch::kFloat64)) * w).sum().item<double>();
  if (numerator == 0.0) return 0.0;
  if (denominator == 0.0) return std::numeric_limits<double>::infinity();
  return numerator / denominator;
}

GptqResult gptq_quantize(const torch::Tensor& weight, const torch::Tensor& hessian, const WeightFormat& format,
                         const std::string& name, const GptqOptions& options) {
  check_gptq_inputs(weight, hessian, name, options);
  torch::NoGradGuard no_grad;
  const int64_t out = weight.size(0);
  const int64_t in = weight.size(1);
  const int64_t g = format.group_columns(in, name);
  const int64_t group_width = g == 0 ? in : g;  // per tensor: one group spanning every column
  const bool permuted = options.act_order;
  if (permuted && !options.static_groups && group_width < in) {
    throw UsageError(fmt::format(
        "GPTQ with act_order needs static groups for '{}' ({}): a format's groups are runs of {} consecutive inputs",
        name, format.spec(), group_width));
  }

  // Dead inputs (diag H = 0): weight zeroed, diagonal 1.
  torch::Tensor h = hessian.to(torch::kFloat64).clone();
  torch::Tensor w0 = weight.to(torch::kFloat32).contiguous().clone();
  const torch::Tensor dead = h.diagonal() == 0;
  if (dead.any().item<bool>()) {
    h.diagonal().masked_fill_(dead, 1.0);
    w0.masked_fill_(dead.unsqueeze(0), 0.0f);
  }

  torch::Tensor perm;
  if (permuted) {
    perm = std::get<1>(torch::sort(h.diagonal(), /*stable=*/true, /*dim=*/0, /*descending=*/true));
    h = h.index_select(0, perm).index_select(1, perm);
  } else {
    perm = torch::arange(in, torch::kLong);
  }
  const torch::Tensor u = inverse_hessian_factor(h, options.damp, name).to(torch::kFloat32);
  const auto perm_a = perm.accessor<int64_t, 1>();

  // wt: W^T in processing order, updated in place by (3)-(4); qt: W_hat^T.
  torch::Tensor wt = w0.t().index_select(0, perm).contiguous();
  torch::Tensor qt = torch::empty_like(wt);

  // Static groups (act_order): every group's quantizer from the original W.
  std::vector<std::unique_ptr<ColumnGroupQuantizer>> static_quantizers;
  if (permuted) {
    for (int64_t c0 = 0; c0 < in; c0 += group_width) {
      const torch::Tensor cols = g == 0 ? w0 : w0.slice(1, c0, c0 + group_width);
      static_quantizers.push_back(format.begin_group(w0, cols, name));
    }
  }
  std::unique_ptr<ColumnGroupQuantizer> current;

  for (int64_t i1 = 0; i1 < in; i1 += options.block_size) {
    const int64_t i2 = std::min(i1 + options.block_size, in);
    const int64_t count = i2 - i1;
    torch::Tensor block = wt.slice(0, i1, i2);  // a view: updated in place
    torch::Tensor err = torch::zeros({count, out}, torch::kFloat32);
    const torch::Tensor u_block = u.slice(0, i1, i2).slice(1, i1, i2);
    const auto u_a = u_block.accessor<float, 2>();
    for (int64_t i = 0; i < count; ++i) {
      const int64_t original = perm_a[i1 + i];
      const ColumnGroupQuantizer* quantizer = nullptr;
      if (permuted) {
        quantizer = static_quantizers[static_cast<size_t>(original / group_width)].get();
      } else {
        if (original % group_width == 0) {
          // The group's columns as the unbatched algorithm sees them: those in
          // this block are up to date; later ones still lack this block's
          // updates so far (4).
          const int64_t c_end = original + group_width;
          torch::Tensor cols = wt.slice(0, i1 + i, std::min(c_end, i2));
          if (c_end > i2) {
            torch::Tensor later = wt.slice(0, i2, c_end);
            if (i > 0) later = later - u.slice(0, i1, i1 + i).slice(1, i2, c_end).t().mm(err.slice(0, 0, i));
            cols = torch::cat({cols, later}, 0);
          }
          current = format.begin_group(w0, cols.t().contiguous(), name);
        }
        quantizer = current.get();
      }
      const torch::Tensor column = block[i];
      const torch::Tensor q = quantizer->fake_quantize_column(column, original % group_width);
      qt[i1 + i].copy_(q);
      const float d = u_a[i][i];
      torch::Tensor e = (column - q).div_(d);
      err[i].copy_(e);
      if (i + 1 < count) {
        block.slice(0, i + 1).addr_(u_block[i].slice(0, i + 1), e, /*beta=*/1, /*alpha=*/-1);
      }
    }
    if (i2 < in) {
      wt.slice(0, i2).addmm_(u.slice(0, i1, i2).slice(1, i2).t(), err, /*beta=*/1, /*alpha=*/-1);
    }
  }

  torch::Tensor result_t = torch::empty_like(qt);
  result_t.index_copy_(0, perm, qt);
  GptqResult result;
  result.weight = result_t.t().contiguous();
  result.relative_error = relative_output_error(weight, result.weight, hessian);
  return result;
}

}  // namespace quantppl
