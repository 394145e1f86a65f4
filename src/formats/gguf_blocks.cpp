// llama.cpp's legacy block formats; the math is in the header. Compiled
// with -ffp-contract=off: every float32 operation rounds separately.
#include "quantppl/formats/gguf_blocks.h"

#include <cmath>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <cpuid.h>
#include <immintrin.h>
#define QUANTPPL_GGUF_X86 1
#else
#define QUANTPPL_GGUF_X86 0
#endif

#include "block_format.h"
#include "quantppl/formats/float_formats.h"
#include "zero_point_grid.h"

namespace quantppl::formats {
namespace {

// IEEE binary16 from float32, nearest with ties to even, overflow to Inf.
uint16_t f16_bits(float f) {
  const uint32_t u = float_bits(f);
  const auto sign = static_cast<uint16_t>((u >> 16) & 0x8000u);
  const uint32_t a = u & 0x7fffffffu;
  if (a >= 0x7f800000u) return sign | (a > 0x7f800000u ? 0x7e00 : 0x7c00);
  if (a >= 0x477ff000u) return sign | 0x7c00;  // >= 65520, half-way past 65504: Inf
  if (a < 0x38800000u) {
    // Below 2^-14: a multiple of binary16's subnormal step 2^-24. Adding
    // 0.5 = 2^-24 * 2^23 rounds to that step (ties to even); the result
    // times 2^24 is the subnormal's integer mantissa (1024 = the smallest normal).
    const float r = (bits_float(a) + 0.5f) - 0.5f;
    return sign | static_cast<uint16_t>(r * 16777216.0f);
  }
  uint32_t h = ((((a >> 23) - 127 + 15) << 10) | ((a & 0x7fffffu) >> 13));
  const uint32_t rest = a & 0x1fffu;
  if (rest > 0x1000u || (rest == 0x1000u && (h & 1u))) ++h;  // a carry moves into the exponent, as it should
  return sign | static_cast<uint16_t>(h);
}

float f16_value(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t e = (h >> 10) & 0x1fu, m = h & 0x3ffu;
  float v;
  if (e == 0) {
    v = static_cast<float>(m) * 5.9604644775390625e-8f;  // m * 2^-24, exact
  } else if (e == 31) {
    v = m == 0 ? INFINITY : NAN;
  } else {
    v = bits_float(((e - 15 + 127) << 23) | (m << 13));
  }
  return bits_float(float_bits(v) | sign);
}

// The codes of the header's formulas, one element at a time; the loops below
// and encode() share them, so x_hat and the stored codes cannot disagree.

// q8_0: roundf(x * id), half away from zero: trunc(|v| + 0.5) with the sum in
// double, where it is exact (in float, 0.49999997f + 0.5f rounds up to 1),
// then the sign; integer selects so that the loop vectorizes. |v| <= 127 up
// to rounding; the clamp only guards int8. A zero code is +0, as ggml's int8.
// (The comparisons before each float-to-int conversion also keep it defined
// when id = 1/d overflowed to Inf in a block of magnitudes below ~1e-37.)
inline int q8_0_code(float x, float id) {
  const float v = x * id;
  const double t = static_cast<double>(std::fabs(v)) + 0.5;
  const int q = t < 127.0 ? static_cast<int>(t) : 127;
  return v < 0 ? -q : q;
}

// q4_0 / q5_0: trunc(fl32(x * id + offset)) with the product exact in double.
inline int q_0_code(float x, float id, double offset, int qmax) {
  const auto f = static_cast<float>(static_cast<double>(x) * static_cast<double>(id) + offset);
  const float c = f < static_cast<float>(qmax) ? f : static_cast<float>(qmax);
  return c > 0 ? static_cast<int>(c) : 0;
}

// q4_1 / q5_1: trunc(fl32(fl32(x - lo) * id) + 0.5f), each step a float32 rounding.
inline int q_1_code(float x, float lo, float id, int qmax) {
  const float v = (x - lo) * id;
  const float f = v + 0.5f;
  const float c = f < static_cast<float>(qmax) ? f : static_cast<float>(qmax);
  return c > 0 ? static_cast<int>(c) : 0;
}

struct GgufParams {
  float id = 0;      // 1 / d in float32 (codes)
  float lo = 0;      // the block minimum in float32 (q*_1 codes)
  uint16_t d16 = 0;  // stored d
  uint16_t m16 = 0;  // stored minimum (q*_1)
  float d = 0;       // f16 value of d16 (values)
  float m = 0;       // f16 value of m16
};

// Runs of blocks of L elements, block b with p[b] (no call per block).
__attribute__((target_clones("avx2", "default"))) void fake_q8_0(const float* x, float* y, int64_t nblocks,
                                                                  int64_t L, const GgufParams* p) {
  for (int64_t b = 0; b < nblocks; ++b) {
    const float id = p[b].id, d = p[b].d;
    for (int64_t i = b * L; i < (b + 1) * L; ++i) y[i] = static_cast<float>(q8_0_code(x[i], id)) * d;
  }
}

__attribute__((target_clones("avx2", "default"))) void fake_q_0(const float* x, float* y, int64_t nblocks, int64_t L,
                                                                 const GgufParams* p, double offset, int qmax,
                                                                 int mid) {
  for (int64_t b = 0; b < nblocks; ++b) {
    const float id = p[b].id, d = p[b].d;
    for (int64_t i = b * L; i < (b + 1) * L; ++i) y[i] = static_cast<float>(q_0_code(x[i], id, offset, qmax) - mid) * d;
  }
}

__attribute__((target_clones("avx2", "default"))) void fake_q_1(const float* x, float* y, int64_t nblocks, int64_t L,
                                                                 const GgufParams* p, int qmax) {
  for (int64_t b = 0; b < nblocks; ++b) {
    const float lo = p[b].lo, id = p[b].id, d = p[b].d, m = p[b].m;
    for (int64_t i = b * L; i < (b + 1) * L; ++i) {
      const float t = static_cast<float>(q_1_code(x[i], lo, id, qmax)) * d;
      y[i] = t + m;
    }
  }
}

#if QUANTPPL_GGUF_X86
// The same arithmetic 8 lanes wide, written out because the compiler does not
// vectorize the scalar forms' float -> double -> int chains well. Each line
// is the scalar code's operation on 8 lanes, in its order and precision.

// q8_0: roundf(a) for a = |x * id| >= 0 is trunc(a) + (a - trunc(a) >= 0.5)
//   (a - trunc(a) is exact), the same integer as trunc(double(a) + 0.5);
//   min(r, 127) keeps 127 for NaN (x = 0 with id = Inf) as `t < 127 ? . : 127`
//   does; the sign is applied to the integer (a zero code is +0, then *d).
__attribute__((target("avx2"))) inline __m256 q8_0_lanes(__m256 x, __m256 id, __m256 d) {
  const __m256 abs_mask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
  const __m256 v = _mm256_mul_ps(x, id);
  const __m256 a = _mm256_and_ps(v, abs_mask);
  const __m256 t = _mm256_round_ps(a, _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC);
  const __m256 up = _mm256_and_ps(_mm256_cmp_ps(_mm256_sub_ps(a, t), _mm256_set1_ps(0.5f), _CMP_GE_OQ),
                                  _mm256_set1_ps(1.0f));
  const __m256 r = _mm256_min_ps(_mm256_add_ps(t, up), _mm256_set1_ps(127.0f));
  const __m256i q = _mm256_cvttps_epi32(r);
  const __m256i neg = _mm256_castps_si256(_mm256_cmp_ps(v, _mm256_setzero_ps(), _CMP_LT_OQ));
  const __m256i sq = _mm256_sub_epi32(_mm256_xor_si256(q, neg), neg);
  return _mm256_mul_ps(_mm256_cvtepi32_ps(sq), d);
}

// q4_0 / q5_0: fl32(double(x) * double(id) + offset) four lanes at a time in
// double (the product is exact there, so one fused multiply-add in double is
// the same number as the product then the sum), then the float clamp and
// truncation.
__attribute__((target("avx2,fma"))) inline __m256 q_0_lanes(__m256 x, __m256d id, __m256d off, __m256 fmax,
                                                            __m256i mid, __m256 d) {
  const __m128 lo = _mm256_cvtpd_ps(_mm256_fmadd_pd(_mm256_cvtps_pd(_mm256_castps256_ps128(x)), id, off));
  const __m128 hi = _mm256_cvtpd_ps(_mm256_fmadd_pd(_mm256_cvtps_pd(_mm256_extractf128_ps(x, 1)), id, off));
  const __m256 f = _mm256_insertf128_ps(_mm256_castps128_ps256(lo), hi, 1);
  const __m256 c = _mm256_max_ps(_mm256_min_ps(f, fmax), _mm256_setzero_ps());  // min: NaN -> qmax; max: c > 0 ? c : 0
  const __m256i q = _mm256_sub_epi32(_mm256_cvttps_epi32(c), mid);
  return _mm256_mul_ps(_mm256_cvtepi32_ps(q), d);
}

// q4_1 / q5_1: every step a float32 rounding, as q_1_code.
__attribute__((target("avx2"))) inline __m256 q_1_lanes(__m256 x, __m256 lo, __m256 id, __m256 fmax, __m256 d,
                                                        __m256 m) {
  const __m256 v = _mm256_mul_ps(_mm256_sub_ps(x, lo), id);
  const __m256 f = _mm256_add_ps(v, _mm256_set1_ps(0.5f));
  const __m256 c = _mm256_max_ps(_mm256_min_ps(f, fmax), _mm256_setzero_ps());
  const __m256 t = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvttps_epi32(c)), d);
  return _mm256_add_ps(t, m);
}

__attribute__((target("avx2"))) void fake_q8_0_avx2(const float* x, float* y, int64_t nblocks, int64_t L,
                                                    const GgufParams* p) {
  for (int64_t b = 0; b < nblocks; ++b) {
    const __m256 id = _mm256_set1_ps(p[b].id), d = _mm256_set1_ps(p[b].d);
    const float* xb = x + b * L;
    float* yb = y + b * L;
    int64_t i = 0;
    for (; i + 8 <= L; i += 8) _mm256_storeu_ps(yb + i, q8_0_lanes(_mm256_loadu_ps(xb + i), id, d));
    for (; i < L; ++i) yb[i] = static_cast<float>(q8_0_code(xb[i], p[b].id)) * p[b].d;
  }
}

__attribute__((target("avx2,fma"))) void fake_q_0_avx2(const float* x, float* y, int64_t nblocks, int64_t L,
                                                       const GgufParams* p, double offset, int qmax, int mid) {
  const __m256d off = _mm256_set1_pd(offset);
  const __m256 fmax = _mm256_set1_ps(static_cast<float>(qmax));
  const __m256i vmid = _mm256_set1_epi32(mid);
  for (int64_t b = 0; b < nblocks; ++b) {
    const __m256d id = _mm256_set1_pd(static_cast<double>(p[b].id));
    const __m256 d = _mm256_set1_ps(p[b].d);
    const float* xb = x + b * L;
    float* yb = y + b * L;
    int64_t i = 0;
    for (; i + 8 <= L; i += 8) _mm256_storeu_ps(yb + i, q_0_lanes(_mm256_loadu_ps(xb + i), id, off, fmax, vmid, d));
    for (; i < L; ++i) yb[i] = static_cast<float>(q_0_code(xb[i], p[b].id, offset, qmax) - mid) * p[b].d;
  }
}

__attribute__((target("avx2"))) void fake_q_1_avx2(const float* x, float* y, int64_t nblocks, int64_t L,
                                                   const GgufParams* p, int qmax) {
  const __m256 fmax = _mm256_set1_ps(static_cast<float>(qmax));
  for (int64_t b = 0; b < nblocks; ++b) {
    const __m256 lo = _mm256_set1_ps(p[b].lo), id = _mm256_set1_ps(p[b].id);
    const __m256 d = _mm256_set1_ps(p[b].d), m = _mm256_set1_ps(p[b].m);
    const float* xb = x + b * L;
    float* yb = y + b * L;
    int64_t i = 0;
    for (; i + 8 <= L; i += 8) _mm256_storeu_ps(yb + i, q_1_lanes(_mm256_loadu_ps(xb + i), lo, id, fmax, d, m));
    for (; i < L; ++i) {
      const float t = static_cast<float>(q_1_code(xb[i], p[b].lo, p[b].id, qmax)) * p[b].d;
      yb[i] = t + p[b].m;
    }
  }
}

// ---- Eight blocks at once: statistics, parameters and x_hat in one pass ----
//
// The generic pass (block_format.h, local_run) reduces each block's lanes to
// a scalar, stores its statistics, then divides and rounds to float16 one
// block at a time. Here eight blocks' reductions are transposed into the
// eight lanes of one vector, so d = stat / c, id = 1 / d and the float16
// round trip run once per eight blocks with the same IEEE operations
// (vdivps is correctly rounded as divss is; vcvtps2ph with round-to-nearest
// is the instruction f16_round_trip_f16c uses), and the block is re-read from
// L1 for x_hat. Bit-identical with local_run; anything unusual in a group (a
// NaN/Inf element, a float16 scale or minimum that overflows) sends the
// group to local_run, which reports it exactly as before.

// Lane k of the result = op over the 8 lanes of a[k]: pairs of vectors are
// interleaved and combined (3 levels of unpack/shuffle/permute instead of a
// horizontal reduction per block).
template <bool kMax>
__attribute__((target("avx2"))) inline __m256 lane_op(__m256 a, __m256 b) {
  return kMax ? _mm256_max_ps(a, b) : _mm256_min_ps(a, b);
}
template <bool kMax>
__attribute__((target("avx2"))) inline __m256 reduce_8x8(const __m256* a) {
  __m256 u[4];
  for (int k = 0; k < 4; ++k) {
    // per 128-bit half: [op(p0, p2), op(q0, q2), op(p1, p3), op(q1, q3)]
    u[k] = lane_op<kMax>(_mm256_unpacklo_ps(a[2 * k], a[2 * k + 1]), _mm256_unpackhi_ps(a[2 * k], a[2 * k + 1]));
  }
  // per half: [a0, a1, a2, a3] over the half's four lanes (and a4..a7)
  const __m256 w0 = lane_op<kMax>(_mm256_shuffle_ps(u[0], u[1], _MM_SHUFFLE(1, 0, 1, 0)),
                                  _mm256_shuffle_ps(u[0], u[1], _MM_SHUFFLE(3, 2, 3, 2)));
  const __m256 w1 = lane_op<kMax>(_mm256_shuffle_ps(u[2], u[3], _MM_SHUFFLE(1, 0, 1, 0)),
                                  _mm256_shuffle_ps(u[2], u[3], _MM_SHUFFLE(3, 2, 3, 2)));
  return lane_op<kMax>(_mm256_permute2f128_ps(w0, w1, 0x20), _mm256_permute2f128_ps(w0, w1, 0x31));
}

template <GgufBlock T>
__attribute__((target("avx2,fma,f16c"))) bool fused_group8_avx2(const float* x, float* y) {
  constexpr bool kMin = T == GgufBlock::kQ4_1 || T == GgufBlock::kQ5_1;
  constexpr bool kSigned = T == GgufBlock::kQ4_0 || T == GgufBlock::kQ5_0;
  constexpr int kQmax = T == GgufBlock::kQ4_0 || T == GgufBlock::kQ4_1 ? 15 : 31;
  const __m256 abs_mask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
  __m256 amax_parts[8], min_parts[8], max_parts[8];
  __m256 err = _mm256_setzero_ps();  // v - v: 0 for finite v, NaN from a NaN or Inf
  for (int k = 0; k < 8; ++k) {
    const float* xb = x + 32 * k;
    const __m256 v0 = _mm256_loadu_ps(xb), v1 = _mm256_loadu_ps(xb + 8);
    const __m256 v2 = _mm256_loadu_ps(xb + 16), v3 = _mm256_loadu_ps(xb + 24);
    err = _mm256_add_ps(err, _mm256_add_ps(_mm256_add_ps(_mm256_sub_ps(v0, v0), _mm256_sub_ps(v1, v1)),
                                           _mm256_add_ps(_mm256_sub_ps(v2, v2), _mm256_sub_ps(v3, v3))));
    if constexpr (kMin) {
      min_parts[k] = _mm256_min_ps(_mm256_min_ps(v0, v1), _mm256_min_ps(v2, v3));
      max_parts[k] = _mm256_max_ps(_mm256_max_ps(v0, v1), _mm256_max_ps(v2, v3));
    } else {
      amax_parts[k] = _mm256_max_ps(_mm256_max_ps(_mm256_and_ps(v0, abs_mask), _mm256_and_ps(v1, abs_mask)),
                                    _mm256_max_ps(_mm256_and_ps(v2, abs_mask), _mm256_and_ps(v3, abs_mask)));
    }
  }
  if (_mm256_movemask_ps(_mm256_cmp_ps(err, err, _CMP_UNORD_Q)) != 0) return false;

  __m256 d, lo = _mm256_setzero_ps();
  if constexpr (kMin) {
    lo = reduce_8x8<false>(min_parts);
    d = _mm256_div_ps(_mm256_sub_ps(reduce_8x8<true>(max_parts), lo), _mm256_set1_ps(static_cast<float>(kQmax)));
  } else if constexpr (kSigned) {
    // ggml's signed extreme: the first x (in index order) with |x| = amax,
    // +0 for an all-zero block; d = it / -8 (q4_0) or / -16 (q5_0).
    alignas(32) float amax[8], extreme[8];
    _mm256_store_ps(amax, reduce_8x8<true>(amax_parts));
    for (int k = 0; k < 8; ++k) {
      const float* xb = x + 32 * k;
      const __m256 target = _mm256_set1_ps(amax[k]);
      uint32_t bits = 0;
      for (int j = 0; j < 4; ++j) {
        const __m256 a = _mm256_and_ps(_mm256_loadu_ps(xb + 8 * j), abs_mask);
        bits |= static_cast<uint32_t>(_mm256_movemask_ps(_mm256_cmp_ps(a, target, _CMP_EQ_OQ))) << (8 * j);
      }
      extreme[k] = amax[k] > 0 ? xb[__builtin_ctz(bits)] : 0.0f;
    }
    d = _mm256_div_ps(_mm256_load_ps(extreme), _mm256_set1_ps(kQmax == 15 ? -8.0f : -16.0f));
  } else {
    d = _mm256_div_ps(reduce_8x8<true>(amax_parts), _mm256_set1_ps(127.0f));
  }
  // id = d != 0 ? 1 / d : 0
  const __m256 id = _mm256_andnot_ps(_mm256_cmp_ps(d, _mm256_setzero_ps(), _CMP_EQ_OQ),
                                     _mm256_div_ps(_mm256_set1_ps(1.0f), d));
  const __m256 d_stored = _mm256_cvtph_ps(_mm256_cvtps_ph(d, _MM_FROUND_TO_NEAREST_INT));
  const __m256 m_stored = kMin ? _mm256_cvtph_ps(_mm256_cvtps_ph(lo, _MM_FROUND_TO_NEAREST_INT)) : _mm256_setzero_ps();
  const __m256 inf = _mm256_set1_ps(INFINITY);
  if (_mm256_movemask_ps(_mm256_or_ps(_mm256_cmp_ps(_mm256_and_ps(d_stored, abs_mask), inf, _CMP_EQ_OQ),
                                      _mm256_cmp_ps(_mm256_and_ps(m_stored, abs_mask), inf, _CMP_EQ_OQ))) != 0) {
    return false;
  }

  alignas(32) float id_k[8], d_k[8], lo_k[8], m_k[8];
  _mm256_store_ps(id_k, id);
  _mm256_store_ps(d_k, d_stored);
  _mm256_store_ps(lo_k, lo);
  _mm256_store_ps(m_k, m_stored);
  for (int k = 0; k < 8; ++k) {
    const float* xb = x + 32 * k;
    float* yb = y + 32 * k;
    const __m256 dk = _mm256_broadcast_ss(&d_k[k]);
    if constexpr (kMin) {
      const __m256 lok = _mm256_broadcast_ss(&lo_k[k]), idk = _mm256_broadcast_ss(&id_k[k]);
      const __m256 mk = _mm256_broadcast_ss(&m_k[k]), fmax = _mm256_set1_ps(static_cast<float>(kQmax));
      for (int j = 0; j < 32; j += 8) _mm256_storeu_ps(yb + j, q_1_lanes(_mm256_loadu_ps(xb + j), lok, idk, fmax, dk, mk));
    } else if constexpr (kSigned) {
      const __m256d idk = _mm256_set1_pd(static_cast<double>(id_k[k]));
      const __m256d off = _mm256_set1_pd(kQmax == 15 ? 8.5 : 16.5);
      const __m256i mid = _mm256_set1_epi32(kQmax == 15 ? 8 : 16);
      const __m256 fmax = _mm256_set1_ps(static_cast<float>(kQmax));
      for (int j = 0; j < 32; j += 8) {
        _mm256_storeu_ps(yb + j, q_0_lanes(_mm256_loadu_ps(xb + j), idk, off, fmax, mid, dk));
      }
    } else {
      const __m256 idk = _mm256_broadcast_ss(&id_k[k]);
      for (int j = 0; j < 32; j += 8) _mm256_storeu_ps(yb + j, q8_0_lanes(_mm256_loadu_ps(xb + j), idk, dk));
    }
  }
  return true;
}

bool fused_group8(GgufBlock type, const float* x, float* y) {
  switch (type) {
    case GgufBlock::kQ8_0: return fused_group8_avx2<GgufBlock::kQ8_0>(x, y);
    case GgufBlock::kQ4_0: return fused_group8_avx2<GgufBlock::kQ4_0>(x, y);
    case GgufBlock::kQ5_0: return fused_group8_avx2<GgufBlock::kQ5_0>(x, y);
    case GgufBlock::kQ4_1: return fused_group8_avx2<GgufBlock::kQ4_1>(x, y);
    default: return fused_group8_avx2<GgufBlock::kQ5_1>(x, y);
  }
}

// IEEE binary16 round trip in hardware (F16C: vcvtps2ph with round to
// nearest even, overflow to Inf; vcvtph2ps exact), the same bits as
// f16_bits / f16_value for every non-NaN float (d and the minimum are never
// NaN: the weight is finite). One instruction each instead of the bit
// manipulation's branches, once per block.
__attribute__((target("f16c"))) float f16_round_trip_f16c(float f, uint16_t* bits) {
  const __m128i h = _mm_cvtps_ph(_mm_set_ss(f), _MM_FROUND_TO_NEAREST_INT);
  *bits = static_cast<uint16_t>(_mm_extract_epi16(h, 0));
  return _mm_cvtss_f32(_mm_cvtph_ps(h));
}

// AVX2 and FMA (q_0_lanes' double multiply-add): every x86 CPU with AVX2 so far has both.
const bool kGgufAvx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
// F16C from CPUID leaf 1, ECX bit 29 (clang's __builtin_cpu_supports does not know "f16c").
bool cpu_has_f16c() {
  unsigned eax = 0, ebx = 0, ecx = 0, edx = 0;
  return __get_cpuid(1, &eax, &ebx, &ecx, &edx) != 0 && (ecx & (1u << 29)) != 0;
}
const bool kGgufF16c = cpu_has_f16c();
const bool kGgufFused = kGgufAvx2 && kGgufF16c;
#endif

// float16 bits of f and their value.
inline float f16_round_trip(float f, uint16_t* bits) {
#if QUANTPPL_GGUF_X86
  if (kGgufF16c) return f16_round_trip_f16c(f, bits);
#endif
  *bits = f16_bits(f);
  return f16_value(*bits);
}

struct GgufCodec {
  using Params = GgufParams;
  struct Context {};

  GgufBlock type;

  bool has_min() const { return type == GgufBlock::kQ4_1 || type == GgufBlock::kQ5_1; }
  int qmax() const { return type == GgufBlock::kQ4_0 || type == GgufBlock::kQ4_1 ? 15 : 31; }

  std::string spec() const { return gguf_name(type); }
  int64_t block_len(int64_t in, const std::string& name) const {
    if (in % kGgufBlock != 0) {
      throw UsageError(spec() + " needs in_features divisible by its block of 32, weight '" + name + "' has " +
                       std::to_string(in));
    }
    return kGgufBlock;
  }
  int code_bits() const {
    switch (type) {
      case GgufBlock::kQ8_0: return 8;
      case GgufBlock::kQ4_0:
      case GgufBlock::kQ4_1: return 4;
      default: return 5;
    }
  }
  std::vector<SectionLayout> layout(int64_t blocks) const {
    std::vector<SectionLayout> l{{"scales", "f16", blocks, 16}};
    if (has_min()) l.push_back({"mins", "f16", blocks, 16});
    return l;
  }
  bool needs_signed_max() const { return type == GgufBlock::kQ4_0 || type == GgufBlock::kQ5_0; }
  bool needs_min_max() const { return has_min(); }
  Context context(const BlockStats&) const { return {}; }
  bool local() const { return true; }
  bool needs_context() const { return false; }
  // choose_local throws when a block's d or minimum rounds to float16 Inf
  // (>= 65520). With |x| <= 60000 everywhere: |d| <= max(60000 / 127,
  // 60000 / 8, 2 * 60000 / 15) = 8000 and |min| <= 60000, so no block can.
  bool lazy_safe(const BlockStats& whole) const { return whole.amax <= 60000.0f; }

  Params choose_local(const BlockStats& st, const Context&, const std::string& name) const {
    Params p;
    float d;
    switch (type) {
      case GgufBlock::kQ8_0: d = st.amax / 127.0f; break;
      case GgufBlock::kQ4_0: d = st.signed_max / -8.0f; break;
      case GgufBlock::kQ5_0: d = st.signed_max / -16.0f; break;
      case GgufBlock::kQ4_1: d = (st.max - st.min) / 15.0f; break;
      default: d = (st.max - st.min) / 31.0f; break;
    }
    p.id = d != 0 ? 1.0f / d : 0.0f;
    p.d = f16_round_trip(d, &p.d16);
    if (has_min()) {
      p.lo = st.min;
      p.m = f16_round_trip(st.min, &p.m16);
    }
    if (std::isinf(p.d) || std::isinf(p.m)) {
      throw DataError(spec() + " cannot store weight '" + name + "': a block scale or minimum (" +
                      std::to_string(std::isinf(p.d) ? d : st.min) + ") is beyond float16's largest value 65504");
    }
    return p;
  }
  void choose(const torch::Tensor& blocks, const std::vector<BlockStats>& stats, const Context& ctx,
              std::vector<Params>& params, const std::string& name) const {
    params.resize(blocks.size(0));
    for (size_t b = 0; b < params.size(); ++b) params[b] = choose_local(stats[b], ctx, name);
  }

  int code(float x, const Params& p) const {
    switch (type) {
      case GgufBlock::kQ8_0: return q8_0_code(x, p.id);
      case GgufBlock::kQ4_0: return q_0_code(x, p.id, 8.5, 15);
      case GgufBlock::kQ5_0: return q_0_code(x, p.id, 16.5, 31);
      default: return q_1_code(x, p.lo, p.id, qmax());
    }
  }
  float value(int q, const Params& p) const {
    switch (type) {
      case GgufBlock::kQ8_0: return static_cast<float>(q) * p.d;
      case GgufBlock::kQ4_0: return static_cast<float>(q - 8) * p.d;
      case GgufBlock::kQ5_0: return static_cast<float>(q - 16) * p.d;
      default: {
        const float t = static_cast<float>(q) * p.d;
        return t + p.m;
      }
    }
  }

  void fake_blocks(const float* x, float* y, int64_t nblocks, int64_t L, const Params* p, const Context&) const {
#if QUANTPPL_GGUF_X86
    if (kGgufAvx2) {
      switch (type) {
        case GgufBlock::kQ8_0: fake_q8_0_avx2(x, y, nblocks, L, p); break;
        case GgufBlock::kQ4_0: fake_q_0_avx2(x, y, nblocks, L, p, 8.5, 15, 8); break;
        case GgufBlock::kQ5_0: fake_q_0_avx2(x, y, nblocks, L, p, 16.5, 31, 16); break;
        default: fake_q_1_avx2(x, y, nblocks, L, p, qmax()); break;
      }
      return;
    }
#endif
    switch (type) {
      case GgufBlock::kQ8_0: fake_q8_0(x, y, nblocks, L, p); break;
      case GgufBlock::kQ4_0: fake_q_0(x, y, nblocks, L, p, 8.5, 15, 8); break;
      case GgufBlock::kQ5_0: fake_q_0(x, y, nblocks, L, p, 16.5, 31, 16); break;
      default: fake_q_1(x, y, nblocks, L, p, qmax()); break;
    }
  }
  // block_format.h's hook: groups of 8 blocks through fused_group8 where the
  // CPU has AVX2, FMA and F16C, the rest (and any group it declines) through
  // the generic local_run.
  bool fused_run(RunScratch<GgufCodec>& scratch, const float* x, float* y, int64_t nb, int64_t L, const Context& ctx,
                 const std::string& name) const {
    int64_t b = 0;
#if QUANTPPL_GGUF_X86
    if (kGgufFused && L == kGgufBlock) {
      for (; b + 8 <= nb; b += 8) {
        const int64_t at = b * kGgufBlock;
        if (!fused_group8(type, x + at, y + at) && !local_run(*this, scratch, x + at, y + at, 8, L, ctx, name)) {
          return false;
        }
      }
    }
#endif
    return b == nb || local_run(*this, scratch, x + b * L, y + b * L, nb - b, L, ctx, name);
  }
  void encode(const float* x, int32_t* codes, int64_t n, const Params& p, const Context&) const {
    for (int64_t i = 0; i < n; ++i) {
      const int q = code(x[i], p);
      codes[i] = type == GgufBlock::kQ8_0 ? static_cast<uint8_t>(static_cast<int8_t>(q)) : q;
    }
  }
  void decode(const int32_t* codes, float* y, int64_t n, const Params& p, const Context&) const {
    for (int64_t i = 0; i < n; ++i) {
      const int q = type == GgufBlock::kQ8_0 ? static_cast<int8_t>(static_cast<uint8_t>(codes[i])) : codes[i];
      y[i] = value(q, p);
    }
  }
  void write_params(const std::vector<Params>& params, const Context&, std::vector<PackedSection>& out) const {
    std::vector<uint16_t> d(params.size()), m(params.size());
    for (size_t b = 0; b < params.size(); ++b) {
      d[b] = params[b].d16;
      m[b] = params[b].m16;
    }
    out.push_back({"scales", "f16", static_cast<int64_t>(d.size()), pack_scalars(d)});
    if (has_min()) out.push_back({"mins", "f16", static_cast<int64_t>(m.size()), pack_scalars(m)});
  }
  void read_params(const std::vector<const PackedSection*>& sections, int64_t blocks, std::vector<Params>& params,
                   Context&, const std::string& name) const {
    const std::vector<uint16_t> d = unpack_scalars<uint16_t>(*sections[0]);
    const std::vector<uint16_t> m = has_min() ? unpack_scalars<uint16_t>(*sections[1]) : std::vector<uint16_t>(blocks, 0);
    params.resize(blocks);
    for (int64_t b = 0; b < blocks; ++b) {
      Params& p = params[b];
      p.d16 = d[b];
      p.m16 = m[b];
      p.d = f16_value(d[b]);
      p.m = f16_value(m[b]);
      if (!std::isfinite(p.d) || !std::isfinite(p.m)) {
        throw DataError("packed weight '" + name + "': block " + std::to_string(b) + " has a float16 scale or minimum that is Inf or NaN");
      }
    }
  }
};

// q4_1 / q5_1 with a method's (k, z) per block (ZeroPointGrid; the
// arithmetic is in gguf_blocks.h): codes from the float32 k and z, values
// from the stored float16 d and m, which is what the stored file computes.
class GgufGridPrepared final : public PreparedWeight {
 public:
  GgufGridPrepared(int bits, int64_t out, int64_t in, std::vector<float> k, std::vector<float> z,
                   std::vector<GgufParams> stored, std::string name)
      : bits_(bits), out_(out), in_(in), k_(std::move(k)), z_(std::move(z)), name_(std::move(name)) {
    d16_.resize(stored.size());
    m16_.resize(stored.size());
    d_.resize(stored.size());
    m_.resize(stored.size());
    for (size_t b = 0; b < stored.size(); ++b) {
      d16_[b] = stored[b].d16;
      m16_[b] = stored[b].m16;
      d_[b] = stored[b].d;
      m_[b] = stored[b].m;
    }
  }

  void fake_quantize_into(const torch::Tensor& src, torch::Tensor& dst) const override {
    check(src);
    check(dst);
    const float* x = src.data_ptr<float>();
    float* y = dst.data_ptr<float>();
    for_each_grid_run(out_ * in_, kGgufBlock, [&](int64_t b0, int64_t nb, int64_t lo, int64_t len) {
      grid_fake_mul_add(x + lo, y + lo, nb, len / nb, &k_[b0], &z_[b0], &d_[b0], &m_[b0], qmax());
    });
  }

  PackedWeight pack(const torch::Tensor& src) const override {
    check(src);
    const int64_t n = out_ * in_;
    std::vector<int32_t> codes(n);
    const float* x = src.data_ptr<float>();
    for_each_grid_run(n, kGgufBlock, [&](int64_t b0, int64_t nb, int64_t lo, int64_t) {
      for (int64_t b = 0; b < nb; ++b) {
        const int64_t at = lo + b * kGgufBlock;
        grid_codes(x + at, codes.data() + at, kGgufBlock, k_[b0 + b], z_[b0 + b], qmax());
      }
    });
    PackedWeight p;
    p.out_features = out_;
    p.in_features = in_;
    p.sections.push_back({"codes", "u" + std::to_string(bits_), n, pack_codes(codes, bits_)});
    p.sections.push_back({"scales", "f16", static_cast<int64_t>(d16_.size()), pack_scalars(d16_)});
    p.sections.push_back({"mins", "f16", static_cast<int64_t>(m16_.size()), pack_scalars(m16_)});
    return p;
  }

  std::optional<int64_t> packed_bytes() const override {
    return (out_ * in_ * bits_ + 7) / 8 + 4 * static_cast<int64_t>(d16_.size());
  }

 private:
  float qmax() const { return static_cast<float>((1 << bits_) - 1); }
  void check(const torch::Tensor& t) const {
    check_weight(t, name_, "fake-quantize");
    if (t.size(0) != out_ || t.size(1) != in_) {
      throw UsageError("weight '" + name_ + "' has shape [" + std::to_string(t.size(0)) + ", " +
                       std::to_string(t.size(1)) + "], prepared for [" + std::to_string(out_) + ", " +
                       std::to_string(in_) + "]");
    }
  }
  int bits_;
  int64_t out_, in_;
  std::vector<float> k_, z_;
  std::vector<uint16_t> d16_, m16_;
  std::vector<float> d_, m_;
  std::string name_;
};

class GgufGrid final : public ZeroPointGrid {
 public:
  explicit GgufGrid(GgufBlock type) : codec_{type} {}
  int bits() const override { return codec_.code_bits(); }

  // d = f16(fl(1 / k)), m = f16(fl(-(z * d))) with d the stored value: x_hat
  // = fl(q * d) + m = (q - z) * d up to the rounding of m, the grid the
  // method optimised with its scale rounded to float16.
  std::unique_ptr<PreparedWeight> prepare_with(const torch::Tensor& weight, std::vector<float> inverse_scale,
                                               std::vector<float> zero_point, const std::string& name) const override {
    check_weight(weight, name, "prepare");
    const int64_t out = weight.size(0), in = weight.size(1);
    codec_.block_len(in, name);
    const int64_t blocks = out * in / kGgufBlock;
    if (static_cast<int64_t>(inverse_scale.size()) != blocks || static_cast<int64_t>(zero_point.size()) != blocks) {
      throw UsageError("weight '" + name + "' has " + std::to_string(blocks) + " blocks under " + codec_.spec() +
                       ", got " + std::to_string(inverse_scale.size()) + " inverse scales and " +
                       std::to_string(zero_point.size()) + " zero points");
    }
    std::vector<GgufParams> stored(blocks);
    for (int64_t b = 0; b < blocks; ++b) {
      const float k = inverse_scale[b], z = zero_point[b];
      GgufParams& p = stored[b];
      if (std::isfinite(k) && k > 0 && std::isfinite(z)) {
        p.d = f16_round_trip(1.0f / k, &p.d16);
        p.m = f16_round_trip(-(z * p.d), &p.m16);
      }
      if (!(std::isfinite(k) && k > 0 && std::isfinite(z)) || !std::isfinite(p.d) || !std::isfinite(p.m) ||
          !(p.d > 0)) {
        throw DataError(codec_.spec() + " cannot store weight '" + name + "': block " + std::to_string(b) +
                        " has inverse scale " + std::to_string(k) + " and zero point " + std::to_string(z) +
                        "; d = 1/k and m = -z * d must be positive resp. finite in float16 (largest 65504)");
      }
    }
    return std::make_unique<GgufGridPrepared>(bits(), out, in, std::move(inverse_scale), std::move(zero_point),
                                              std::move(stored), name);
  }

 private:
  GgufCodec codec_;
};

constexpr GgufBlock kAll[] = {GgufBlock::kQ8_0, GgufBlock::kQ4_0, GgufBlock::kQ4_1, GgufBlock::kQ5_0, GgufBlock::kQ5_1};

}  // namespace

std::string gguf_name(GgufBlock type) {
  switch (type) {
    case GgufBlock::kQ8_0: return "q8_0";
    case GgufBlock::kQ4_0: return "q4_0";
    case GgufBlock::kQ4_1: return "q4_1";
    case GgufBlock::kQ5_0: return "q5_0";
    default: return "q5_1";
  }
}

std::unique_ptr<WeightFormat> make_gguf_format(GgufBlock type) {
  std::shared_ptr<const ZeroPointGrid> grid;
  if (type == GgufBlock::kQ4_1 || type == GgufBlock::kQ5_1) grid = std::make_shared<GgufGrid>(type);
  return std::make_unique<BlockFormat<GgufCodec>>(GgufCodec{type}, std::move(grid));
}

std::unique_ptr<WeightFormat> parse_gguf_format(const std::string& spec) {
  const std::string head = spec.substr(0, spec.find(':'));
  for (GgufBlock t : kAll) {
    if (head == gguf_name(t)) {
      if (head != spec) throw UsageError("invalid format '" + spec + "': " + head + " has no fields (its block is 32 inputs)");
      return make_gguf_format(t);
    }
  }
  return nullptr;
}

}  // namespace quantppl::formats
