// One read of a block for its statistics (block_format.h): max|x|, min, max,
// finiteness, and optionally ggml's signed extreme. An explicit AVX2 loop:
// without -ffast-math the compiler may not vectorize float max/min/sum
// reductions, and this pass reads every weight once per fake-quantize.
#include <cmath>

#include "block_format.h"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#define QUANTPPL_BLOCK_SCAN_AVX2 1
#else
#define QUANTPPL_BLOCK_SCAN_AVX2 0
#endif

namespace quantppl::formats {
namespace {

// bad = bad + (v - v) stays 0 for finite v and becomes NaN at the first NaN or Inf.
void scan_scalar(const float* x, int64_t n, float& amax, float& mn, float& mx, float& bad) {
  for (int64_t i = 0; i < n; ++i) {
    const float v = x[i];
    const float a = std::fabs(v);
    amax = a > amax ? a : amax;
    mn = v < mn ? v : mn;
    mx = v > mx ? v : mx;
    bad = bad + (v - v);
  }
}

#if QUANTPPL_BLOCK_SCAN_AVX2
__attribute__((target("avx2"))) void scan_avx2(const float* x, int64_t n, float& amax, float& mn, float& mx,
                                                float& bad) {
  int64_t i = 0;
  if (n >= 8) {
    const __m256 abs_mask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
    __m256 va = _mm256_setzero_ps(), vmn = _mm256_loadu_ps(x), vmx = vmn, vbad = _mm256_setzero_ps();
    for (; i + 8 <= n; i += 8) {
      const __m256 v = _mm256_loadu_ps(x + i);
      va = _mm256_max_ps(va, _mm256_and_ps(v, abs_mask));
      vmn = _mm256_min_ps(vmn, v);
      vmx = _mm256_max_ps(vmx, v);
      vbad = _mm256_add_ps(vbad, _mm256_sub_ps(v, v));
    }
    alignas(32) float la[8], lmn[8], lmx[8], lbad[8];
    _mm256_store_ps(la, va);
    _mm256_store_ps(lmn, vmn);
    _mm256_store_ps(lmx, vmx);
    _mm256_store_ps(lbad, vbad);
    for (int j = 0; j < 8; ++j) {
      amax = la[j] > amax ? la[j] : amax;
      mn = lmn[j] < mn ? lmn[j] : mn;
      mx = lmx[j] > mx ? lmx[j] : mx;
      bad = bad + lbad[j];
    }
  }
  scan_scalar(x + i, n - i, amax, mn, mx, bad);
}
#endif

}  // namespace

// min and max are order-independent for finite values except for the sign
// of a zero extreme (-0 vs +0); the ggml formats that use min (q4_1, q5_1)
// see the same value either way (x - min and f16(min) are the same zero up
// to sign, and a zero minimum's sign only reaches x_hat through + m, where
// q * d + (+-0) is the same number).
BlockStats scan_block(const float* x, int64_t n, bool signed_max) {
  float amax = 0, mn = x[0], mx = x[0], bad = 0;
#if QUANTPPL_BLOCK_SCAN_AVX2
  static const bool avx2 = __builtin_cpu_supports("avx2");
  if (avx2) {
    scan_avx2(x, n, amax, mn, mx, bad);
  } else {
    scan_scalar(x, n, amax, mn, mx, bad);
  }
#else
  scan_scalar(x, n, amax, mn, mx, bad);
#endif
  BlockStats s;
  s.amax = amax;
  s.min = mn;
  s.max = mx;
  s.finite = bad == 0;
  if (signed_max && s.finite && amax > 0) {
    for (int64_t i = 0; i < n; ++i) {
      if (std::fabs(x[i]) == amax) {
        s.signed_max = x[i];
        break;
      }
    }
  }
  return s;
}

}  // namespace quantppl::formats
