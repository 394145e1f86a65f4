// ZeroPointGrid's element loops; see zero_point_grid.h. -ffp-contract=off,
// -fno-trapping-math (so that nearbyint, min and max become vector
// instructions in the AVX2 clone; no value changes).
#include "zero_point_grid.h"

#include <algorithm>
#include <cmath>

namespace quantppl::formats {
namespace {

inline float grid_code(float w, float k, float z, float qmax) {
  const float a = w * k;
  return std::min(std::max(std::nearbyint(a + z), 0.0f), qmax);
}

}  // namespace

void grid_codes(const float* w, int32_t* q, int64_t n, float k, float z, float qmax) {
  for (int64_t i = 0; i < n; ++i) q[i] = static_cast<int32_t>(grid_code(w[i], k, z, qmax));
}

__attribute__((target_clones("avx2", "default"))) void grid_fake_sub_mul(const float* w, float* dst, int64_t nblocks,
                                                                         int64_t L, const float* k, const float* z,
                                                                         const float* s, float qmax) {
  for (int64_t b = 0; b < nblocks; ++b) {
    const float kb = k[b], zb = z[b], sb = s[b];
    const float* x = w + b * L;
    float* y = dst + b * L;
    for (int64_t i = 0; i < L; ++i) {
      const float t = grid_code(x[i], kb, zb, qmax) - zb;
      y[i] = t * sb;
    }
  }
}

__attribute__((target_clones("avx2", "default"))) void grid_fake_mul_add(const float* w, float* dst, int64_t nblocks,
                                                                         int64_t L, const float* k, const float* z,
                                                                         const float* d, const float* m, float qmax) {
  for (int64_t b = 0; b < nblocks; ++b) {
    const float kb = k[b], zb = z[b], db = d[b], mb = m[b];
    const float* x = w + b * L;
    float* y = dst + b * L;
    for (int64_t i = 0; i < L; ++i) {
      const float t = grid_code(x[i], kb, zb, qmax) * db;
      y[i] = t + mb;
    }
  }
}

}  // namespace quantppl::formats
