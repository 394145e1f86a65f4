// HQQ's inner loops; see hqq_kernel.h and include/quantppl/methods/hqq.h.
// The AVX2 path (x86-64 CPUs that have it, checked once) evaluates 8 weights
// at a time: the codes q and the zero-point terms with the same IEEE
// operations as the scalar path; the error |w - w_r| of the stopping rule as
// |w k - (q - z)|, summed, then scaled by 1/k once per block (the same number
// to ~1 ulp per weight, without a division per weight). Where any residual of
// a block nears the shrink threshold (rare) the block is recomputed by the
// exact scalar formula, which calls powf; blocks whose residuals provably
// stay below it (hqq_may_shrink: nearly all) skip the test. hqq_step_blocks
// runs whole tiles of blocks per call, so a block of 32 or 64 weights costs
// little beyond its 4 or 8 vectors.
#include "hqq_kernel.h"

#include <algorithm>
#include <cmath>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

namespace quantppl::kernel {
namespace {

inline float code_of(float w, const HqqStep& s, float* a_out) {
  const float a = w * s.k;
  *a_out = a;
  return std::min(std::max(std::nearbyint(a + s.z), 0.0f), s.qmax);
}

// q - (w - w_e) * k of (4) for one weight with code q and a = w * k.
inline float zero_term(float w, float q, float a, float ax, float x, const HqqStep& s) {
  if (ax < s.threshold) return q - a;  // w_e = 0 exactly
  float shrunk = ax - s.inv_beta * std::pow(ax, s.pm1);
  shrunk = std::max(shrunk, 0.0f);
  const float sign = x > 0 ? 1.0f : (x < 0 ? -1.0f : 0.0f);
  const float e = shrunk * sign;
  return q - (w - e) * s.k;
}

double hqq_step_scalar(const float* w, int64_t n, const HqqStep& s, double* zsum) {
  double err = 0;
  for (int64_t i = 0; i < n; ++i) {
    float a;
    const float q = code_of(w[i], s, &a);
    const float r = (q - s.z) / s.k;
    const float x = w[i] - r;
    const float ax = std::fabs(x);
    err += ax;
    *zsum += zero_term(w[i], q, a, ax, x, s);
  }
  return err;
}

#if defined(__x86_64__)
// Sums run in float32 lanes over runs of at most kFloatRun weights (32 per
// lane: relative error ~32 * 2^-24) and in float64 across runs.
constexpr int64_t kFloatRun = 256;

// One vector of 8 weights: |w - w_r| * k = |w k - (q - z)| (no division per
// weight) into err, q - w k of (4) into zs, lanes at or above the threshold
// (less a margin for the rounding of |w k - (q - z)| against |w - w_r| k)
// into slow when kCheck.
template <bool kCheck>
__attribute__((target("avx2"), always_inline)) inline void hqq_lane(const float* p, __m256 k, __m256 z, __m256 qmax,
                                                                    __m256 thr_k, __m256& err, __m256& zs,
                                                                    __m256& slow) {
  const __m256 abs_mask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
  const __m256 a = _mm256_mul_ps(_mm256_loadu_ps(p), k);
  __m256 q = _mm256_round_ps(_mm256_add_ps(a, z), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  q = _mm256_min_ps(qmax, _mm256_max_ps(_mm256_setzero_ps(), q));
  const __m256 ax_k = _mm256_and_ps(_mm256_sub_ps(a, _mm256_sub_ps(q, z)), abs_mask);
  err = _mm256_add_ps(err, ax_k);
  if (kCheck) slow = _mm256_or_ps(slow, _mm256_cmp_ps(ax_k, thr_k, _CMP_GE_OQ));
  zs = _mm256_add_ps(zs, _mm256_sub_ps(q, a));
}

__attribute__((target("avx2"), always_inline)) inline __m256d widen_sum(__m256 v) {
  return _mm256_add_pd(_mm256_cvtps_pd(_mm256_castps256_ps128(v)), _mm256_cvtps_pd(_mm256_extractf128_ps(v, 1)));
}

// Two sets of accumulators (even and odd vectors), so that consecutive adds
// do not wait on each other. kCheck: whether any lane can reach the shrink
// threshold (HqqStep::may_shrink); without it the comparison is skipped.
template <bool kCheck>
__attribute__((target("avx2"), always_inline)) inline double hqq_step_avx2_impl(const float* w, int64_t n,
                                                                              const HqqStep& s, double inv_k,
                                                                              double* zsum) {
  const __m256 k = _mm256_set1_ps(s.k), z = _mm256_set1_ps(s.z), qmax = _mm256_set1_ps(s.qmax);
  const __m256 thr_k = _mm256_set1_ps(s.threshold * s.k * 0.999f);
  __m256 slow = _mm256_setzero_ps();
  if (n <= kFloatRun && n % 8 == 0) {
    // One run (every group size up to 256): both sums reduced across lanes
    // in float32 together, a handful of instructions per block.
    __m256 err0 = _mm256_setzero_ps(), z0 = _mm256_setzero_ps();
    __m256 err1 = _mm256_setzero_ps(), z1 = _mm256_setzero_ps();
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) {
      hqq_lane<kCheck>(w + i, k, z, qmax, thr_k, err0, z0, slow);
      hqq_lane<kCheck>(w + i + 8, k, z, qmax, thr_k, err1, z1, slow);
    }
    if (i < n) hqq_lane<kCheck>(w + i, k, z, qmax, thr_k, err0, z0, slow);
    if (kCheck && _mm256_movemask_ps(slow) != 0) {
      *zsum = 0;
      return hqq_step_scalar(w, n, s, zsum);
    }
    // [e01, e23, z01, z23 | e45, e67, z45, z67] -> [e, z, e, z]
    const __m256 h = _mm256_hadd_ps(_mm256_add_ps(err0, err1), _mm256_add_ps(z0, z1));
    __m128 r = _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1));
    r = _mm_hadd_ps(r, r);
    *zsum += static_cast<double>(_mm_cvtss_f32(_mm_shuffle_ps(r, r, 1)));
    return static_cast<double>(_mm_cvtss_f32(r)) * inv_k;
  }
  __m256d err_acc = _mm256_setzero_pd(), z_acc = _mm256_setzero_pd();
  int64_t i = 0;
  while (i + 8 <= n) {
    const int64_t run_end = std::min(n - (n - i) % 8, i + kFloatRun);
    __m256 err0 = _mm256_setzero_ps(), z0 = _mm256_setzero_ps();
    __m256 err1 = _mm256_setzero_ps(), z1 = _mm256_setzero_ps();
    for (; i + 16 <= run_end; i += 16) {
      hqq_lane<kCheck>(w + i, k, z, qmax, thr_k, err0, z0, slow);
      hqq_lane<kCheck>(w + i + 8, k, z, qmax, thr_k, err1, z1, slow);
    }
    if (i < run_end) {
      hqq_lane<kCheck>(w + i, k, z, qmax, thr_k, err0, z0, slow);
      i += 8;
    }
    err_acc = _mm256_add_pd(err_acc, widen_sum(_mm256_add_ps(err0, err1)));
    z_acc = _mm256_add_pd(z_acc, widen_sum(_mm256_add_ps(z0, z1)));
  }
  if (kCheck && _mm256_movemask_ps(slow) != 0) {
    // Some residual nears the shrink threshold: the whole block by the exact
    // scalar formula (rare: |x| ~ 0.17 at the defaults).
    *zsum = 0;
    return hqq_step_scalar(w, n, s, zsum);
  }
  alignas(32) double e[4], t[4];
  _mm256_store_pd(e, err_acc);
  _mm256_store_pd(t, z_acc);
  const double err = ((e[0] + e[1]) + (e[2] + e[3])) * inv_k;
  *zsum += (t[0] + t[1]) + (t[2] + t[3]);
  return i < n ? err + hqq_step_scalar(w + i, n - i, s, zsum) : err;
}

__attribute__((target("avx2"))) double hqq_step_avx2(const float* w, int64_t n, const HqqStep& s, double* zsum) {
  const double inv_k = 1.0 / static_cast<double>(s.k);
  return s.may_shrink ? hqq_step_avx2_impl<true>(w, n, s, inv_k, zsum)
                      : hqq_step_avx2_impl<false>(w, n, s, inv_k, zsum);
}

__attribute__((target("avx2"))) double hqq_step_blocks_avx2(const float* w, int64_t nblocks, int64_t size,
                                                            const float* k, const double* inv_k, const float* z,
                                                            const float* z_start, float* z_next, const HqqStep& step) {
  HqqStep s = step;
  double total = 0;
  const double inv_n = 1.0 / static_cast<double>(size);
  for (int64_t b = 0; b < nblocks; ++b) {
    s.k = k[b];
    s.z = z[b];
    double zsum = 0;
    if (hqq_may_shrink(s, z_start[b])) {
      total += hqq_step_avx2_impl<true>(w + b * size, size, s, inv_k[b], &zsum);
    } else {
      total += hqq_step_avx2_impl<false>(w + b * size, size, s, inv_k[b], &zsum);
    }
    z_next[b] = static_cast<float>(zsum * inv_n);
  }
  return total;
}

__attribute__((target("avx2"))) void hqq_dequantize_avx2(const float* w, float* dst, int64_t n, float kf, float zf,
                                                          float qmaxf, float inv_kf) {
  const __m256 k = _mm256_set1_ps(kf), z = _mm256_set1_ps(zf), qmax = _mm256_set1_ps(qmaxf);
  const __m256 inv_k = _mm256_set1_ps(inv_kf), zero = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    __m256 q = _mm256_round_ps(_mm256_add_ps(_mm256_mul_ps(_mm256_loadu_ps(w + i), k), z),
                               _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    q = _mm256_min_ps(qmax, _mm256_max_ps(zero, q));
    _mm256_storeu_ps(dst + i, _mm256_mul_ps(_mm256_sub_ps(q, z), inv_k));
  }
  for (; i < n; ++i) {
    const float q = std::min(std::max(std::nearbyint(w[i] * kf + zf), 0.0f), qmaxf);
    dst[i] = (q - zf) * inv_kf;
  }
}

bool detect_avx2() {
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx2");
}
const bool kHasAvx2 = detect_avx2();
#else
const bool kHasAvx2 = false;
#endif

}  // namespace

// In code units (times k), with a = fl(w k) in [a_min, a_max], a_min = -z_0
// exactly (z_0 = fl(-min * k)) and a_max - a_min <= L up to rounding: an
// unclamped weight is within 1/2 of its code; one clamped to 0 has a + z in
// [z - z_0, -1/2), one clamped to L has a + z - L <= z - z_0 (+ rounding).
// So |residual| k <= max(1/2, |z - z_0|) plus float32 rounding of magnitudes
// up to |z_0| + |z| + L, bounded here generously (2^-18 relative, 1% more,
// against the kernel's own 0.999 margin on the threshold).
bool hqq_may_shrink(const HqqStep& s, float z_start) {
  const float bound = std::max(0.5f, std::fabs(s.z - z_start)) +
                      (std::fabs(z_start) + std::fabs(s.z) + s.qmax) * 0x1p-18f + 1e-3f;
  return !(bound * 1.01f < s.threshold * s.k * 0.99f);
}

double hqq_step_blocks(const float* w, int64_t nblocks, int64_t size, const float* k, const double* inv_k,
                       const float* z, const float* z_start, float* z_next, const HqqStep& step) {
#if defined(__x86_64__)
  if (kHasAvx2) return hqq_step_blocks_avx2(w, nblocks, size, k, inv_k, z, z_start, z_next, step);
#endif
  HqqStep s = step;
  double total = 0;
  for (int64_t b = 0; b < nblocks; ++b) {
    s.k = k[b];
    s.z = z[b];
    double zsum = 0;
    total += hqq_step_scalar(w + b * size, size, s, &zsum);
    z_next[b] = static_cast<float>(zsum / static_cast<double>(size));
  }
  return total;
}

double hqq_step(const float* w, int64_t n, const HqqStep& s, float* z_next) {
  double zsum = 0;
  double err;
#if defined(__x86_64__)
  if (kHasAvx2) {
    err = hqq_step_avx2(w, n, s, &zsum);
  } else {
    err = hqq_step_scalar(w, n, s, &zsum);
  }
#else
  err = hqq_step_scalar(w, n, s, &zsum);
#endif
  *z_next = static_cast<float>(zsum / static_cast<double>(n));
  return err;
}

void hqq_dequantize(const float* w, float* dst, int64_t n, float k, float z, float qmax, float inv_k) {
#if defined(__x86_64__)
  if (kHasAvx2) {
    hqq_dequantize_avx2(w, dst, n, k, z, qmax, inv_k);
    return;
  }
#endif
  for (int64_t i = 0; i < n; ++i) {
    const float q = std::min(std::max(std::nearbyint(w[i] * k + z), 0.0f), qmax);
    dst[i] = (q - z) * inv_k;
  }
}

}  // namespace quantppl::kernel
