// Element formats; the math is in the header. Compiled with
// -ffp-contract=off (CMakeLists.txt): (a + C) - C must be two separately
// rounded operations, and x / s * ... must not fuse.
#include "quantppl/formats/float_formats.h"

#include <array>
#include <cmath>
#include <limits>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#define QUANTPPL_FLOAT_FORMATS_AVX2 1
#else
#define QUANTPPL_FLOAT_FORMATS_AVX2 0
#endif

namespace quantppl::formats {
namespace {

// Value of a code from (1), in double (exact) then float (exact: every value
// of these formats has at most 4 significant bits and a float exponent).
float value_of_fields(uint32_t code, const MiniFloat& f) {
  const int m_bits = f.mantissa_bits;
  const uint32_t mant = code & ((1u << m_bits) - 1);
  const uint32_t exp = (code >> m_bits) & ((1u << f.exponent_bits) - 1);
  const bool negative = ((code >> (m_bits + f.exponent_bits)) & 1u) != 0;
  const uint32_t exp_all_ones = (1u << f.exponent_bits) - 1;
  const uint32_t mant_all_ones = (1u << m_bits) - 1;
  double v;
  if (f.max_finite == kE4M3.max_finite && f.exponent_bits == 4 && exp == exp_all_ones && mant == mant_all_ones) {
    v = std::numeric_limits<double>::quiet_NaN();  // E4M3's only special code
  } else if (f.exponent_bits == 5 && exp == exp_all_ones) {
    v = mant == 0 ? std::numeric_limits<double>::infinity() : std::numeric_limits<double>::quiet_NaN();
  } else if (exp == 0) {
    v = std::ldexp(static_cast<double>(mant), f.min_exponent() - m_bits);
  } else {
    v = std::ldexp(1.0 + static_cast<double>(mant) / (1u << m_bits), static_cast<int>(exp) - f.bias);
  }
  return static_cast<float>(negative ? -v : v);
}

struct DecodeTable {
  std::array<float, 256> values{};
  explicit DecodeTable(const MiniFloat& f) {
    for (uint32_t c = 0; c < (1u << f.bits()); ++c) values[c] = value_of_fields(c, f);
  }
};

const DecodeTable& table_of(const MiniFloat& f) {
  static const DecodeTable e2m1(kE2M1), e2m3(kE2M3), e3m2(kE3M2), e4m3(kE4M3), e5m2(kE5M2);
  switch (f.exponent_bits * 8 + f.mantissa_bits) {
    case 2 * 8 + 1: return e2m1;
    case 2 * 8 + 3: return e2m3;
    case 3 * 8 + 2: return e3m2;
    case 4 * 8 + 3: return e4m3;
    default: return e5m2;
  }
}

}  // namespace

uint8_t encode_minifloat(float v, const MiniFloat& f) {
  const uint32_t u = float_bits(v);
  const uint32_t sign = (u >> 31) << (f.exponent_bits + f.mantissa_bits);
  const float a = bits_float(u & 0x7fffffffu);
  if (a == 0.0f) return static_cast<uint8_t>(sign);
  const int e = floor_log2(a);
  uint32_t exp_field, mant;
  if (e < f.min_exponent()) {
    exp_field = 0;
    // a = mant * 2^(emin - M) exactly, so a * 2^(M - emin) is that integer.
    mant = static_cast<uint32_t>(a * pow2(f.mantissa_bits - f.min_exponent()));
  } else {
    exp_field = static_cast<uint32_t>(e + f.bias);
    mant = ((float_bits(a) & 0x7fffffu) >> (23 - f.mantissa_bits));
  }
  return static_cast<uint8_t>(sign | (exp_field << f.mantissa_bits) | mant);
}

float decode_minifloat(uint8_t code, const MiniFloat& f) { return table_of(f).values[code]; }

float decode_e8m0(uint8_t code) {
  if (code == 0xFF) return std::numeric_limits<float>::quiet_NaN();
  return pow2(static_cast<int>(code) - 127);
}

#if QUANTPPL_FLOAT_FORMATS_AVX2
// round_to_minifloat on 8 lanes, the same operations in the same order (see
// the header's (2)): a = min(|x|, max), the biased exponent of a clamped
// below at emin + 127, C = 2^(E' - M) * 2^23 from bits, (a + C) - C, sign.
struct Round8 {
  __m256 max_finite;
  __m256i emin_biased;  // emin + 127
  __m256i c_offset;     // 23 - M: C's biased exponent is E'_biased + 23 - M
  __attribute__((target("avx2"))) explicit Round8(const MiniFloat& f)
      : max_finite(_mm256_set1_ps(f.max_finite)),
        emin_biased(_mm256_set1_epi32(f.min_exponent() + 127)),
        c_offset(_mm256_set1_epi32(23 - f.mantissa_bits)) {}
};

__attribute__((target("avx2"))) inline __m256 round_minifloat8(__m256 x, const Round8& r) {
  const __m256 sign = _mm256_and_ps(x, _mm256_castsi256_ps(_mm256_set1_epi32(static_cast<int>(0x80000000u))));
  const __m256 a = _mm256_min_ps(_mm256_xor_ps(x, sign), r.max_finite);  // a < max ? a : max
  const __m256i e = _mm256_max_epi32(_mm256_srli_epi32(_mm256_castps_si256(a), 23), r.emin_biased);
  const __m256 c = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(e, r.c_offset), 23));
  return _mm256_or_ps(_mm256_sub_ps(_mm256_add_ps(a, c), c), sign);
}

// Blocks of L elements: 8-wide over i < L - L % 8, the scalar formula on the rest.
__attribute__((target("avx2"))) void minifloat_div_avx2(const float* src, float* dst, int64_t nblocks, int64_t L,
                                                        const MiniFloat& f, const float* scales, int64_t stride) {
  const Round8 r(f);
  const MiniFloat g = f;
  for (int64_t b = 0; b < nblocks; ++b) {
    const float s = scales[b * stride];
    const float* x = src + b * L;
    float* y = dst + b * L;
    int64_t i = 0;
    if (s == 0) {
      for (; i + 8 <= L; i += 8) _mm256_storeu_ps(y + i, _mm256_setzero_ps());
      for (; i < L; ++i) y[i] = 0.0f;
      continue;
    }
    const __m256 vs = _mm256_set1_ps(s);
    for (; i + 8 <= L; i += 8) {
      _mm256_storeu_ps(y + i, _mm256_mul_ps(round_minifloat8(_mm256_div_ps(_mm256_loadu_ps(x + i), vs), r), vs));
    }
    for (; i < L; ++i) y[i] = round_to_minifloat(x[i] / s, g) * s;
  }
}

// Blocks with a power-of-two scale 2^k (MX): x_hat = elem(x * 2^-k) * 2^k,
// 8-wide over i < L - L % 8, the scalar formula on the rest. Elem gives the
// element value of v = x * 2^-k on 8 lanes (lanes) and on one (scalar).
template <class Elem>
__attribute__((target("avx2"))) void pow2_blocks_avx2(const float* src, float* dst, int64_t nblocks, int64_t L,
                                                      const int32_t* ks, int64_t stride, const Elem& elem) {
  for (int64_t b = 0; b < nblocks; ++b) {
    const int k = ks[b * stride];
    const float inverse = pow2(-k), scale = pow2(k);
    const __m256 vi = _mm256_set1_ps(inverse), vs = _mm256_set1_ps(scale);
    const float* x = src + b * L;
    float* y = dst + b * L;
    int64_t i = 0;
    for (; i + 8 <= L; i += 8) {
      _mm256_storeu_ps(y + i, _mm256_mul_ps(elem.lanes(_mm256_mul_ps(_mm256_loadu_ps(x + i), vi)), vs));
    }
    for (; i < L; ++i) y[i] = elem.scalar(x[i], inverse) * scale;
  }
}

// round_to_minifloat of v.
struct MinifloatLanes {
  Round8 r;
  MiniFloat g;
  __attribute__((target("avx2"))) explicit MinifloatLanes(const MiniFloat& f) : r(f), g(f) {}
  __attribute__((target("avx2"))) __m256 lanes(__m256 v) const { return round_minifloat8(v, r); }
  float scalar(float x, float inverse) const { return round_to_minifloat(x * inverse, g); }
};

// mxint8_code on 8 lanes, times its step 2^-6: v * 64, min(|.|, 127),
// (a + 2^23) - 2^23, the sign put back unless the code is 0 (+0, as the
// scalar form).
struct Mxint8Lanes {
  __attribute__((target("avx2"))) __m256 lanes(__m256 v) const {
    const __m256 sign_mask = _mm256_castsi256_ps(_mm256_set1_epi32(static_cast<int>(0x80000000u)));
    const __m256 magic = _mm256_set1_ps(8388608.0f);
    const __m256 y = _mm256_mul_ps(v, _mm256_set1_ps(64.0f));
    const __m256 sign = _mm256_and_ps(y, sign_mask);
    const __m256 a = _mm256_min_ps(_mm256_xor_ps(y, sign), _mm256_set1_ps(127.0f));
    const __m256 q = _mm256_sub_ps(_mm256_add_ps(a, magic), magic);
    const __m256 code = _mm256_or_ps(q, _mm256_and_ps(sign, _mm256_cmp_ps(q, _mm256_setzero_ps(), _CMP_NEQ_OQ)));
    return _mm256_mul_ps(code, _mm256_set1_ps(0.015625f));
  }
  float scalar(float x, float inverse) const { return mxint8_code(x, inverse) * 0.015625f; }
};

const bool kFloatFormatsAvx2 = __builtin_cpu_supports("avx2");
#endif

// The loops copy the format's fields into locals so that the compiler keeps
// them in registers and vectorizes the inner loop; target_clones adds an
// AVX2 version chosen at load time (the same arithmetic, 8 lanes). On AVX2
// CPUs the explicit kernels above run instead (no per-block alias checks
// and loop peeling for 16- and 32-element blocks).
__attribute__((target_clones("avx2", "default"))) void fake_quantize_minifloat_div_loop(
    const float* src, float* dst, int64_t nblocks, int64_t L, const MiniFloat& f, const float* scales, int64_t stride) {
  const MiniFloat g = f;
  for (int64_t b = 0; b < nblocks; ++b) {
    const float s = scales[b * stride];
    const float* x = src + b * L;
    float* y = dst + b * L;
    if (s == 0) {
      for (int64_t i = 0; i < L; ++i) y[i] = 0.0f;
      continue;
    }
    for (int64_t i = 0; i < L; ++i) y[i] = round_to_minifloat(x[i] / s, g) * s;
  }
}

__attribute__((target_clones("avx2", "default"))) void fake_quantize_minifloat_pow2_loop(
    const float* src, float* dst, int64_t nblocks, int64_t L, const MiniFloat& f, const int32_t* ks, int64_t stride) {
  const MiniFloat g = f;
  for (int64_t b = 0; b < nblocks; ++b) {
    const int k = ks[b * stride];
    const float inverse = pow2(-k), scale = pow2(k);
    const float* x = src + b * L;
    float* y = dst + b * L;
    for (int64_t i = 0; i < L; ++i) y[i] = round_to_minifloat(x[i] * inverse, g) * scale;
  }
}

__attribute__((target_clones("avx2", "default"))) void fake_quantize_mxint8_loop(const float* src, float* dst,
                                                                                  int64_t nblocks, int64_t L,
                                                                                  const int32_t* ks, int64_t stride) {
  for (int64_t b = 0; b < nblocks; ++b) {
    const int k = ks[b * stride];
    const float inverse = pow2(-k), scale = pow2(k);
    const float* x = src + b * L;
    float* y = dst + b * L;
    for (int64_t i = 0; i < L; ++i) y[i] = (mxint8_code(x[i], inverse) * 0.015625f) * scale;
  }
}

void fake_quantize_minifloat_div(const float* src, float* dst, int64_t nblocks, int64_t L, const MiniFloat& f,
                                 const float* scales, int64_t stride) {
#if QUANTPPL_FLOAT_FORMATS_AVX2
  if (kFloatFormatsAvx2) return minifloat_div_avx2(src, dst, nblocks, L, f, scales, stride);
#endif
  fake_quantize_minifloat_div_loop(src, dst, nblocks, L, f, scales, stride);
}

void fake_quantize_minifloat_pow2(const float* src, float* dst, int64_t nblocks, int64_t L, const MiniFloat& f,
                                  const int32_t* ks, int64_t stride) {
#if QUANTPPL_FLOAT_FORMATS_AVX2
  if (kFloatFormatsAvx2) return pow2_blocks_avx2(src, dst, nblocks, L, ks, stride, MinifloatLanes(f));
#endif
  fake_quantize_minifloat_pow2_loop(src, dst, nblocks, L, f, ks, stride);
}

void fake_quantize_mxint8(const float* src, float* dst, int64_t nblocks, int64_t L, const int32_t* ks,
                          int64_t stride) {
#if QUANTPPL_FLOAT_FORMATS_AVX2
  if (kFloatFormatsAvx2) return pow2_blocks_avx2(src, dst, nblocks, L, ks, stride, Mxint8Lanes{});
#endif
  fake_quantize_mxint8_loop(src, dst, nblocks, L, ks, stride);
}

}  // namespace quantppl::formats
