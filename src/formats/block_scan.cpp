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

inline BlockStats finish(const float* x, int64_t n, bool signed_max, float amax, float mn, float mx, float bad) {
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

bool scan_blocks_scalar(const float* x, int64_t nblocks, int64_t L, bool signed_max, BlockStats* out) {
  bool finite = true;
  for (int64_t b = 0; b < nblocks; ++b) {
    const float* xb = x + b * L;
    float amax = 0, mn = xb[0], mx = xb[0], bad = 0;
    scan_scalar(xb, L, amax, mn, mx, bad);
    out[b] = finish(xb, L, signed_max, amax, mn, mx, bad);
    finite = finite && out[b].finite;
  }
  return finite;
}

#if QUANTPPL_BLOCK_SCAN_AVX2
// The first x with |x| == amax, 8 at a time (a mask of equal lanes, then its
// lowest set bit); amax is in the block, so the search ends inside it.
__attribute__((target("avx2"))) float first_at_amax_avx2(const float* x, int64_t n, float amax) {
  const __m256 abs_mask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
  const __m256 target = _mm256_set1_ps(amax);
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256 v = _mm256_loadu_ps(x + i);
    const int mask = _mm256_movemask_ps(_mm256_cmp_ps(_mm256_and_ps(v, abs_mask), target, _CMP_EQ_OQ));
    if (mask != 0) return x[i + __builtin_ctz(static_cast<unsigned>(mask))];
  }
  for (; i < n; ++i) {
    if (std::fabs(x[i]) == amax) return x[i];
  }
  return 0.0f;
}

__attribute__((target("avx2"))) bool scan_blocks_avx2(const float* x, int64_t nblocks, int64_t L, bool signed_max,
                                                       BlockStats* out) {
  bool finite = true;
  for (int64_t b = 0; b < nblocks; ++b) {
    const float* xb = x + b * L;
    float amax = 0, mn = xb[0], mx = xb[0], bad = 0;
    scan_avx2(xb, L, amax, mn, mx, bad);
    out[b] = finish(xb, L, false, amax, mn, mx, bad);
    if (signed_max && out[b].finite && amax > 0) out[b].signed_max = first_at_amax_avx2(xb, L, amax);
    finite = finite && out[b].finite;
  }
  return finite;
}
const bool kHaveAvx2 = __builtin_cpu_supports("avx2");
#endif

}  // namespace

// min and max are order-independent for finite values except for the sign
// of a zero extreme (-0 vs +0); the ggml formats that use min (q4_1, q5_1)
// see the same x_hat either way (x - min is the same number, and a zero
// minimum's sign only reaches x_hat through q * d + (+-0), the same number
// unless q * d is also a zero); only the stored float16 minimum's sign bit
// can differ from ggml's in a block whose minimum is exactly zero.
bool scan_blocks(const float* x, int64_t nblocks, int64_t L, bool signed_max, BlockStats* out) {
#if QUANTPPL_BLOCK_SCAN_AVX2
  if (kHaveAvx2) return scan_blocks_avx2(x, nblocks, L, signed_max, out);
#endif
  return scan_blocks_scalar(x, nblocks, L, signed_max, out);
}

BlockStats scan_block(const float* x, int64_t n, bool signed_max) {
  BlockStats s;
  scan_blocks(x, 1, n, signed_max, &s);
  return s;
}

}  // namespace quantppl::formats
