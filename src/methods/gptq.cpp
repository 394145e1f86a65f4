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

#include <dlfcn.h>

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

// OpenBLAS at one thread for the lifetime of the scope (no-op with another
// BLAS), restored after. Why: LAPACK's Cholesky and inverse (potrf, potri) run
// many short parallel steps, each a thread hand-off; on this 2-core machine
// the three O(in^3) factorisations of a 512-wide H took 1.4-2.4 s at two
// OpenBLAS threads under load (6.7 s at 1024) and ~0.1 s at one. GPTQ's
// products (the lazy updates (4), e) keep the configured threads. OpenBLAS's
// thread count is process-wide: GPTQ runs on one thread at a time here. (An
// OpenMP build of OpenBLAS also sets OpenMP's count with it; the restore puts
// back the BLAS count, which configure_runtime makes LibTorch's too.)
class SingleThreadedBlas {
 public:
  SingleThreadedBlas() {
    using GetThreads = int (*)();
    get_ = reinterpret_cast<GetThreads>(::dlsym(RTLD_DEFAULT, "openblas_get_num_threads"));
    set_ = reinterpret_cast<SetThreads>(::dlsym(RTLD_DEFAULT, "openblas_set_num_threads"));
    if (get_ != nullptr && set_ != nullptr) {
      saved_ = get_();
      if (saved_ > 1) set_(1);
    }
  }
  ~SingleThreadedBlas() {
    if (set_ != nullptr && saved_ > 1) set_(saved_);
  }
  SingleThreadedBlas(const SingleThreadedBlas&) = delete;
  SingleThreadedBlas& operator=(const SingleThreadedBlas&) = delete;

 private:
  using SetThreads = void (*)(int);
  int (*get_)() = nullptr;
  SetThreads set_ = nullptr;
  int saved_ = 0;
};

// U, the upper Cholesky factor of (H + lambda I)^-1 (3), in float64.
torch::Tensor inverse_hessian_factor(torch::Tensor h, double damp, const std::string& name) {
  const SingleThreadedBlas single_thread;
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

// The factor of (3) for one Hessian and the options it depends on. Layers that
// read one tensor (q, k, v; wi_0, wi_1; cross-attention k, v) have the same H,
// and calibration gives them one shared tensor: the factor (two Cholesky
// factorisations and an inverse, O(in^3) in float64) is computed once and
// reused while consecutive calls pass an equal H. A hit needs H equal element
// for element (torch::equal, O(in^2)), not just the same storage, so that an
// H edited in place or a new H at a reused address is never mistaken for it.
struct HessianFactor {
  torch::Tensor hessian;  // the H given (a private copy, its dtype)
  double damp = 0.0;
  bool act_order = false;
  torch::Tensor dead;  // bool [in]: diag(H) == 0
  torch::Tensor perm;  // processing order
  torch::Tensor u;     // float32 U of (3) in processing order
};

// One per thread: the last factor computed (GPTQ of one model runs its layers in
// order, so the layers of one input group are consecutive calls). It holds a
// copy of that H and its U (8 in^2 bytes for a float32 H) until the next call
// with another H replaces it.
thread_local std::shared_ptr<const HessianFactor> last_factor;

std::shared_ptr<const HessianFactor> hessian_factor(const torch::Tensor& hessian, const GptqOptions& options,
                                                    const std::string& name) {
  const std::shared_ptr<const HessianFactor> cached = last_factor;
  if (cached && cached->damp == options.damp && cached->act_order == options.act_order &&
      cached->hessian.scalar_type() == hessian.scalar_type() && cached->hessian.sizes() == hessian.sizes() &&
      torch::equal(cached->hessian, hessian)) {
    return cached;
  }
  auto f = std::make_shared<HessianFactor>();
  f->damp = options.damp;
  f->act_order = options.act_order;
  // Dead inputs (diag H = 0): diagonal 1 (their weights are zeroed by the caller).
  torch::Tensor h = hessian.to(torch::kFloat64).clone();
  f->dead = h.diagonal() == 0;
  if (f->dead.any().item<bool>()) h.diagonal().masked_fill_(f->dead, 1.0);
  const int64_t in = h.size(0);
  if (options.act_order) {
    f->perm = std::get<1>(torch::sort(h.diagonal(), /*stable=*/true, /*dim=*/0, /*descending=*/true));
    h = h.index_select(0, f->perm).index_select(1, f->perm);
  } else {
    f->perm = torch::arange(in, torch::kLong);
  }
  f->u = inverse_hessian_factor(h, options.damp, name).to(torch::kFloat32);
  f->hessian = hessian.clone();
  last_factor = f;
  return f;
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
  const torch::Tensor h = hessian.to(torch::kFloat64);
  const torch::Tensor w = weight.to(torch::kFloat64);
  const torch::Tensor d = weight_hat.to(torch::kFloat64) - w;
  const double numerator = (d.mm(h) * d).sum().item<double>();
  const double denominator = (w.mm(h) * w).sum().item<double>();
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

  // Dead inputs (diag H = 0): weight zeroed, diagonal 1 (hessian_factor).
  const std::shared_ptr<const HessianFactor> factor = hessian_factor(hessian, options, name);
  torch::Tensor w0 = weight.to(torch::kFloat32).contiguous().clone();
  if (factor->dead.any().item<bool>()) w0.masked_fill_(factor->dead.unsqueeze(0), 0.0f);
  const torch::Tensor& perm = factor->perm;
  const torch::Tensor& u = factor->u;
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
  // parameter_source^T: the columns each group's parameters were chosen from.
  torch::Tensor source_t = permuted ? torch::Tensor() : torch::empty_like(wt);

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
          source_t.slice(0, original, original + cols.size(0)).copy_(cols);
          current = format.begin_group(w0, cols.t().contiguous(), name);
        }
        quantizer = current.get();
      }
      const torch::Tensor column = block[i];
      const torch::Tensor q = quantizer->fake_quantize_column(column, original % group_width).contiguous();
      // (3) on contiguous rows of W^T: err = (w_q - Q(w_q)) / U_qq into err[i] and
      // qt's row, then w_j -= err * U_qj for the block's later columns j (the
      // later blocks get (4)). Plain loops: a column is only `out` floats, and
      // a tensor op per step costs more than its arithmetic at these sizes.
      const float d = u_a[i][i];
      const float* q_p = q.data_ptr<float>();
      float* col_p = column.data_ptr<float>();
      float* e_p = err[i].data_ptr<float>();
      float* qt_p = qt[i1 + i].data_ptr<float>();
      for (int64_t r = 0; r < out; ++r) {
        qt_p[r] = q_p[r];
        e_p[r] = (col_p[r] - q_p[r]) / d;
      }
      for (int64_t j = i + 1; j < count; ++j) {
        const float uij = u_a[i][j];
        float* row = col_p + (j - i) * out;
        for (int64_t r = 0; r < out; ++r) row[r] -= uij * e_p[r];
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
  result.parameter_source = permuted ? w0 : source_t.t().contiguous();
  result.group_whole = w0;
  return result;
}

}  // namespace quantppl
