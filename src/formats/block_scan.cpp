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

// max|x| and finiteness only (min and max left 0): the formats whose scale
// is amax-based. max of non-negative floats is exact in any order (|x| is
// never -0), so the block is read with four independent accumulators (no
// chain of dependent max/add latencies) and the 8 lanes are reduced with
// shuffles instead of a scalar loop over stored lanes. A NaN or Inf element
// turns its lane of v - v into NaN. The signed max (q4_0 / q5_0) of a block
// of at most 64 elements is found without a data-dependent branch: one bit
// per element with |x| == amax, the lowest set bit is the first such x.
__attribute__((target("avx2"))) inline float hmax8(__m256 v) {
  __m128 a = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  a = _mm_max_ps(a, _mm_shuffle_ps(a, a, 0x4E));
  a = _mm_max_ps(a, _mm_shuffle_ps(a, a, 0xB1));
  return _mm_cvtss_f32(a);
}

__attribute__((target("avx2"))) bool scan_blocks_amax_avx2(const float* x, int64_t nblocks, int64_t L,
                                                            bool signed_max, BlockStats* out) {
  const __m256 abs_mask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
  bool finite = true;
  for (int64_t b = 0; b < nblocks; ++b) {
    const float* xb = x + b * L;
    __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
    __m256 e0 = _mm256_setzero_ps(), e1 = e0, e2 = e0, e3 = e0;
    int64_t i = 0;
    for (; i + 32 <= L; i += 32) {
      const __m256 v0 = _mm256_loadu_ps(xb + i), v1 = _mm256_loadu_ps(xb + i + 8);
      const __m256 v2 = _mm256_loadu_ps(xb + i + 16), v3 = _mm256_loadu_ps(xb + i + 24);
      a0 = _mm256_max_ps(a0, _mm256_and_ps(v0, abs_mask));
      a1 = _mm256_max_ps(a1, _mm256_and_ps(v1, abs_mask));
      a2 = _mm256_max_ps(a2, _mm256_and_ps(v2, abs_mask));
      a3 = _mm256_max_ps(a3, _mm256_and_ps(v3, abs_mask));
      e0 = _mm256_add_ps(e0, _mm256_sub_ps(v0, v0));
      e1 = _mm256_add_ps(e1, _mm256_sub_ps(v1, v1));
      e2 = _mm256_add_ps(e2, _mm256_sub_ps(v2, v2));
      e3 = _mm256_add_ps(e3, _mm256_sub_ps(v3, v3));
    }
    for (; i + 8 <= L; i += 8) {
      const __m256 v = _mm256_loadu_ps(xb + i);
      a0 = _mm256_max_ps(a0, _mm256_and_ps(v, abs_mask));
      e0 = _mm256_add_ps(e0, _mm256_sub_ps(v, v));
    }
    float amax = hmax8(_mm256_max_ps(_mm256_max_ps(a0, a1), _mm256_max_ps(a2, a3)));
    const __m256 e = _mm256_add_ps(_mm256_add_ps(e0, e1), _mm256_add_ps(e2, e3));
    bool ok = _mm256_movemask_ps(_mm256_cmp_ps(e, e, _CMP_UNORD_Q)) == 0;
    for (; i < L; ++i) {
      const float v = xb[i];
      const float av = std::fabs(v);
      amax = av > amax ? av : amax;
      ok = ok && (v - v) == 0;
    }
    BlockStats& s = out[b];
    s = BlockStats{};
    s.amax = amax;
    s.finite = ok;
    if (signed_max && ok && amax > 0) {
      if (L <= 64 && L % 8 == 0) {
        const __m256 target = _mm256_set1_ps(amax);
        uint64_t bits = 0;
        for (int64_t k = 0; k < L; k += 8) {
          const __m256 v = _mm256_and_ps(_mm256_loadu_ps(xb + k), abs_mask);
          bits |= static_cast<uint64_t>(static_cast<unsigned>(_mm256_movemask_ps(_mm256_cmp_ps(v, target, _CMP_EQ_OQ))))
                  << k;
        }
        s.signed_max = xb[__builtin_ctzll(bits)];
      } else {
        s.signed_max = first_at_amax_avx2(xb, L, amax);
      }
    }
    finite = finite && ok;
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
bool scan_blocks(const float* x, int64_t nblocks, int64_t L, bool signed_max, BlockStats* out, bool min_max) {
#if QUANTPPL_BLOCK_SCAN_AVX2
  if (kHaveAvx2) {
    return min_max ? scan_blocks_avx2(x, nblocks, L, signed_max, out)
                   : scan_blocks_amax_avx2(x, nblocks, L, signed_max, out);
  }
#endif
  return scan_blocks_scalar(x, nblocks, L, signed_max, out);
}

BlockStats scan_block(const float* x, int64_t n, bool signed_max) {
  BlockStats s;
  scan_blocks(x, 1, n, signed_max, &s);
  return s;
}

}  // namespace quantppl::formats

namespace quantppl {

// The whole weight as one block of block_stats (the same pieces, merged in
// the same order), so that prepare_known sees the numbers prepare() would.
WeightSummary summarize_weight(const torch::Tensor& weight) {
  formats::check_weight(weight, "(summary)", "summarize_weight");
  if (weight.numel() == 0) return {};
  return formats::block_stats_unchecked(weight.data_ptr<float>(), weight.numel(), weight.numel(), true)[0];
}

}  // namespace quantppl
