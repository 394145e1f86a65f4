// Element formats; the math is in the header. Compiled with
// -ffp-contract=off (CMakeLists.txt): (a + C) - C must be two separately
// rounded operations, and x / s * ... must not fuse.
#include "quantppl/formats/float_formats.h"

#include <array>
#include <cmath>
#include <limits>

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

// The loops copy the format's fields into locals so that the compiler keeps
// them in registers and vectorizes the inner loop; target_clones adds an
// AVX2 version chosen at load time (the same arithmetic, 8 lanes).
__attribute__((target_clones("avx2", "default"))) void fake_quantize_minifloat_div(
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

__attribute__((target_clones("avx2", "default"))) void fake_quantize_minifloat_pow2(
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

__attribute__((target_clones("avx2", "default"))) void fake_quantize_mxint8(const float* src, float* dst,
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

}  // namespace quantppl::formats
