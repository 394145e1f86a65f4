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
  // false only when no residual of the block can reach the threshold, which
  // the caller knows from a bound (hqq.cpp); true always checks each weight.
  bool may_shrink = true;
};

// One iteration on a block w[0, n): returns sum |w - w_r(z_i)| in float64 and
// writes z_{i+1} (4).
double hqq_step(const float* w, int64_t n, const HqqStep& s, float* z_next);

// dst[i] = (clamp(round(w[i] * k + z), 0, qmax) - z) * inv_k (src == dst allowed).
void hqq_dequantize(const float* w, float* dst, int64_t n, float k, float z, float qmax, float inv_k);

}  // namespace quantppl::kernel
