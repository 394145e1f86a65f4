// HQQ's inner loops on raw float arrays (no LibTorch, so that the file is
// built with -ffp-contract=off: a fused multiply-add would change roundings
// that must match the `hqq` package's float32 tensor ops). The arithmetic is
// that of include/quantppl/methods/hqq.h, equations (2)-(4).
#pragma once

#include <cstdint>

namespace quantppl::kernel {

struct HqqStep {
  float k;          // inverse scale
  float z;          // zero point z_i
  float qmax;       // L = 2^b - 1
  float inv_beta;   // float(1 / beta)
  float pm1;        // float(p - 1)
  float threshold;  // below this |x|, shrink_p(x) is certainly 0
  // false only when no residual of the block can reach the threshold
  // (hqq_may_shrink); true always checks each weight.
  bool may_shrink = true;
};

// Whether a residual |w - w_r(z)| of a block can reach the threshold, from a
// bound (hqq_kernel.cpp) on the block's current z and its min-max z_0.
bool hqq_may_shrink(const HqqStep& s, float z_start);

// One iteration on a block w[0, n): returns sum |w - w_r(z_i)| in float64 and
// writes z_{i+1} (4).
double hqq_step(const float* w, int64_t n, const HqqStep& s, float* z_next);

// hqq_step on nblocks consecutive blocks of `size` weights, block b with
// k[b], z[b] (s.k, s.z and s.may_shrink are set per block, the latter from
// z_start[b], the block's z_0), writing z_next[b]; returns the sum of the
// blocks' errors. One call per run of blocks, no division per block:
// inv_k[b] = 1 / k[b] in float64 scales the error sum (code units to weight
// units), and the zero-point sum is multiplied by 1 / size (both within an
// ulp of float64 of hqq_step's divisions).
double hqq_step_blocks(const float* w, int64_t nblocks, int64_t size, const float* k, const double* inv_k,
                       const float* z, const float* z_start, float* z_next, const HqqStep& s);

// dst[i] = (clamp(round(w[i] * k + z), 0, qmax) - z) * inv_k (src == dst allowed).
void hqq_dequantize(const float* w, float* dst, int64_t n, float k, float z, float qmax, float inv_k);

}  // namespace quantppl::kernel
