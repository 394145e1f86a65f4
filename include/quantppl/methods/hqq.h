// HQQ, half-quadratic quantization (Badri & Shaji 2023): keep each block's
// min-max scale and optimise its zero point so that the weights' reconstruction
// error in a sparsity-promoting l_p norm (p < 1) is small. No calibration data.
//
// ---------------------------------------------------------------------------
// The math (the `hqq` package's arithmetic: an inverse scale k, codes per unit)
// ---------------------------------------------------------------------------
// A block of weights w (G consecutive inputs of a row; a row per channel; the
// whole tensor per tensor) with b bits, L = 2^b - 1:
//
//   (1) k = L / (max w - min w)      (k = 1 if max - min <= 1e-4; k <= 2e4;
//                                     computed as the package's torch does it,
//                                     fl(fl(1 / (max - min)) * L))
//       z_0 = -min(w) * k            a float zero point (not rounded)
//   (2) q(z) = clamp(round(w * k + z), 0, L),   w_r(z) = (q(z) - z) / k
//
// HQQ minimises ||w - w_r(z)||_p^p over z, p = 0.7, by half-quadratic
// splitting with an auxiliary residual w_e ~ w - w_r, alternating
//
//   (3) w_e  = shrink_p(w - w_r(z_i), beta)
//            = sign(x) * max(|x| - (1/beta) |x|^(p-1), 0),  x = w - w_r(z_i)
//   (4) z_{i+1} = mean over the block of ( q(z_i) - (w - w_e) * k )
//
// (3) is the proximal operator of the l_p term (the generalised soft
// threshold); (4) is the exact minimiser of the quadratic term in z.
//
// The iteration and its stopping rule are those of the package's DEFAULT
// optimizer (hqq 0.2.8.post1, hqq/core/optimize.py: optimize_weights_proximal =
// optimize_weights_proximal_legacy), read from its source:
//   for i = 0 .. iters-1:
//     evaluate q(z_i), w_r(z_i), compute z_{i+1} by (3)-(4), and set z = z_{i+1}
//     E_i = mean over the WHOLE weight of |w - w_r(z_i)|   (float32)
//     if E_i < best: best = E_i   else: stop
//   return z (the last z computed)
// so the stopping rule is global over every block of the weight, and the
// returned zero point is z_{i+1} computed from the first iterate that did not
// improve (or z_iters if every iterate improved) -- not the best iterate.
// The final weight is q(z) dequantized as the package does, (q - z) * (1/k)
// (the package stores 1/k as the scale), in float32.
//
// Where the paper and the package differ (docs/methods.md):
//   * the paper grows beta by kappa = 1.01 each iteration; the package's
//     default optimizer never does (its beta stays 10; only the non-default
//     `optimize_weights_proximal_v2` applies kappa). We follow the package:
//     kappa is accepted and ignored.
//   * the paper's stopping is by iteration count; the package stops at the
//     first non-improving iterate as above.
//   * the package does not optimise per-tensor quantization (channel_wise =
//     False); here a per-tensor weight is one block and is optimised too.
//   * the package's dequantization runs in float16 by default; ours in float32.
//
// Arithmetic: every per-element operation of q and of (4) in float32 in the
// package's order (w * k, + z, round half to even, clamp; q - w * k), so the
// codes are bit-identical with the package's for the same k and z. The error
// of the stopping rule, |w - w_r|, is summed as |w k - (q - z)| and scaled by
// 1/k (float64) once per block (the same to ~1 ulp per weight, without a
// division per weight). A block's sums run in float32 (8 lanes, then across
// lanes) over at most 256 weights, in float64 across runs of 256 and across
// blocks (torch sums float32), so z agrees with the package's to ~1e-7
// relative and the stopping decision differs only if two successive mean
// errors agree to ~1e-7. shrink_p is 0 whenever |x| < beta^(-1/(2-p)) (about
// 0.17 at the defaults: most residuals), which is tested without evaluating
// |x|^(p-1), and not at all in a block where a bound on its residuals
// (hqq_kernel.cpp, hqq_may_shrink) rules it out; the exact formula is used
// for the rest (powf).
//
// ---------------------------------------------------------------------------
// HQQ on a format (hqq_prepare)
// ---------------------------------------------------------------------------
// The format's zero-point grid (WeightFormat::zero_point_grid, weight_format.h)
// gives the bits and the blocks; HQQ chooses k and z per block as above; the
// format stores them and defines x_hat as its file computes it:
//   zeropoint:B:GRAN[:minmax]  scale fl(1/k) and z as float32: x_hat is
//                              exactly hqq_quantize's weight
//   q4_1, q5_1 (blocks of 32)  d = f16(fl(1/k)), m = f16(-(z * d)); codes
//                              are HQQ's (from the float32 k, z, as the
//                              package computes them before it rounds its
//                              scale and zero to float16), x_hat =
//                              fl(q * d) + m, ggml's dequantization of them
// Other formats: UsageError. The range of a uniform grid must be minmax and
// its arithmetic numpy's (uniform_format.h says why).
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include <torch/types.h>

#include "quantppl/formats/weight_format.h"

namespace quantppl {

struct HqqOptions {
  double lp_norm = 0.7;  // p, in (0, 1]
  double beta = 10.0;    // > 0
  double kappa = 1.01;   // the paper's; the package's default optimizer ignores it (see above)
  int iters = 20;        // > 1
};

struct HqqResult {
  torch::Tensor weight;         // x_hat, float32 [out, in]
  torch::Tensor inverse_scale;  // k per block, float32 [blocks] (row-major block order)
  torch::Tensor scale;          // 1/k per block (the dequantization multiplier), float32 [blocks]
  torch::Tensor zero_point;     // z per block, float32 [blocks]
  int iterations = 0;           // iterates evaluated (the last one did not improve unless == iters)
};

// HQQ of one weight [out, in] (float32), `bits` in [2, 8], blocks of
// `group_columns` inputs (G > 0 dividing in; in = per channel; 0 = the whole
// tensor). DataError for NaN/Inf (naming `name`), UsageError for bad
// options or a G that does not divide in.
HqqResult hqq_quantize(const torch::Tensor& weight, int bits, int64_t group_columns, const std::string& name,
                       const HqqOptions& options = {});

// hqq_quantize's parameters without x_hat (what a format stores): per block,
// in row-major block order.
struct HqqParams {
  std::vector<float> inverse_scale;  // k
  std::vector<float> zero_point;     // z
  int iterations = 0;
};
HqqParams hqq_optimize(const torch::Tensor& weight, int bits, int64_t group_columns, const std::string& name,
                       const HqqOptions& options = {});

// HQQ of `weight` (float32 contiguous [out, in]) on `format`'s zero-point
// grid (see "HQQ on a format" above); `iterations`, if not null, receives the
// iterations HQQ evaluated. UsageError "hqq applies to zero-point grids
// (zeropoint:B:..., q4_1, q5_1), not '<spec>'" for a format without one, and
// the format's reason for a zero-point grid HQQ cannot use; DataError naming
// `name` for NaN/Inf or parameters the format cannot store.
std::unique_ptr<PreparedWeight> hqq_prepare(const torch::Tensor& weight, const WeightFormat& format,
                                            const std::string& name, const HqqOptions& options = {},
                                            int* iterations = nullptr);

// The initial min-max zero-point quantization (1)-(2) with z = z_0, in HQQ's
// arithmetic: the baseline HQQ improves on.
torch::Tensor hqq_min_max_fake_quantize(const torch::Tensor& weight, int bits, int64_t group_columns,
                                        const std::string& name);

}  // namespace quantppl
