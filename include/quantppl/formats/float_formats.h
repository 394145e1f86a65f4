// Element number formats: the small floats of OCP FP8 / OCP Microscaling
// (FP4 E2M1, FP6 E2M3 and E3M2, FP8 E4M3 and E5M2), the power-of-two scale
// E8M0, and their rounding from float32.
//
// ---------------------------------------------------------------------------
// The math
// ---------------------------------------------------------------------------
// A minifloat with E exponent bits, M mantissa bits and bias B encodes a
// code (sign s, exponent field e, mantissa field m) as
//
//   (1) e > 0:  (-1)^s * 2^(e - B) * (1 + m / 2^M)        normal
//       e = 0:  (-1)^s * 2^(1 - B) * (m / 2^M)            subnormal
//
// so its smallest normal exponent is emin = 1 - B and every value in the
// binade [2^E', 2^(E'+1)) (E' >= emin), or below 2^emin, is a multiple of the
// quantum q(E') = 2^(max(E', emin) - M). The formats here (OCP names):
//
//   format  E  M  B   largest finite           special codes
//   E2M1    2  1  1   6     = 2^2 * 1.5         none
//   E2M3    2  3  1   7.5   = 2^2 * 1.875       none
//   E3M2    3  2  3   28    = 2^4 * 1.75        none
//   E4M3    4  3  7   448   = 2^8 * 1.75        S.1111.111 is NaN (no infinities)
//   E5M2    5  2  15  57344 = 2^15 * 1.75       e = 31: Inf (m = 0) and NaN
//
// Rounding (round_to_minifloat) of a finite float32 x:
//
//   (2) a = min(|x|, max_finite)                        saturation
//       E' = max(floor(log2 a), emin)                  (from a's exponent bits)
//       r  = a rounded to the nearest multiple of q(E'), ties to the even
//            multiple (= the even mantissa)
//       result = sign(x) * r                           (-0 stays -0)
//
// Why saturate instead of overflowing to NaN/Inf: the formats here are used
// with a scale chosen so that the block's largest value lands on the largest
// finite value; float rounding of x / s can put it a hair above, and it must
// come back to max_finite, not to NaN. Clipping before rounding equals
// rounding then clipping (max_finite is representable and rounding is
// monotone), and it is what ml_dtypes' cast gives on np.clip(x, -max, max).
//
// How (2) is computed without pow/log2: with C = 2^(E' - M + 23) (built from
// bits), a < 2^(E'+1) <= C, so a + C lies in [C, 2C) where the float32 spacing
// is exactly q(E'): the IEEE addition (round to nearest even, the default
// mode) rounds a to a multiple of q(E') with ties to even, and (a + C) - C is
// exact. Everything else is integer work on the float's bits. This file is
// compiled with -ffp-contract=off and without -ffast-math, so the addition is
// neither fused nor reassociated.
//
// E8M0 (the MX shared scale): an unsigned byte k + 127 encodes 2^k for
// k in [-127, 127]; 0xFF is NaN. No sign, no mantissa.
#pragma once

#include <cstdint>
#include <cstring>
#include <string>

namespace quantppl::formats {

struct MiniFloat {
  const char* name;
  int exponent_bits;
  int mantissa_bits;
  int bias;
  float max_finite;
  int bits() const { return 1 + exponent_bits + mantissa_bits; }
  int min_exponent() const { return 1 - bias; }  // emin of (1)
};

inline constexpr MiniFloat kE2M1{"e2m1", 2, 1, 1, 6.0f};
inline constexpr MiniFloat kE2M3{"e2m3", 2, 3, 1, 7.5f};
inline constexpr MiniFloat kE3M2{"e3m2", 3, 2, 3, 28.0f};
inline constexpr MiniFloat kE4M3{"e4m3", 4, 3, 7, 448.0f};
inline constexpr MiniFloat kE5M2{"e5m2", 5, 2, 15, 57344.0f};

inline uint32_t float_bits(float x) {
  uint32_t u;
  std::memcpy(&u, &x, sizeof u);
  return u;
}
inline float bits_float(uint32_t u) {
  float x;
  std::memcpy(&x, &u, sizeof x);
  return x;
}

// 2^k exactly, for k in [-149, 127] (subnormal below -126), from bits.
inline float pow2(int k) {
  return k >= -126 ? bits_float(static_cast<uint32_t>(k + 127) << 23) : bits_float(1u << (k + 149));
}

// floor(log2 a) for a finite a > 0, subnormals included, from bits.
inline int floor_log2(float a) {
  const uint32_t u = float_bits(a) & 0x7fffffffu;
  const int e = static_cast<int>(u >> 23);
  if (e > 0) return e - 127;
  return (31 - __builtin_clz(u)) - 149;  // highest set bit of the subnormal's mantissa
}

// (2): x rounded to `f`, to nearest with ties to even, saturated at
// +-max_finite. x must be finite.
inline float round_to_minifloat(float x, const MiniFloat& f) {
  const uint32_t u = float_bits(x);
  const uint32_t sign = u & 0x80000000u;
  float a = bits_float(u ^ sign);
  a = a < f.max_finite ? a : f.max_finite;
  int e = static_cast<int>(float_bits(a) >> 23) - 127;  // -127 for 0 and subnormals: clamped below
  e = e < f.min_exponent() ? f.min_exponent() : e;
  const float c = bits_float(static_cast<uint32_t>(e - f.mantissa_bits + 23 + 127) << 23);
  const float r = (a + c) - c;
  return bits_float(float_bits(r) | sign);
}

// The MX INT8 element code of x with the block's 2^-k = `inverse`:
// q = clamp(round_half_even(x * 2^-k * 64), -127, 127), as a float holding an
// integer, +0 for a zero code (an integer element has no -0).
inline float mxint8_code(float x, float inverse) {
  const float y = (x * inverse) * 64.0f;  // two exact products (2^(6-k) alone may overflow at k = -127)
  const uint32_t sign = float_bits(y) & 0x80000000u;
  float a = bits_float(float_bits(y) ^ sign);
  a = a < 127.0f ? a : 127.0f;
  const float magic = 8388608.0f;  // 2^23: (a + 2^23) - 2^23 rounds a < 2^22 to an integer, ties to even
  const float q = (a + magic) - magic;
  return q == 0.0f ? 0.0f : bits_float(float_bits(q) | sign);
}

// The code (sign, exponent field, mantissa field packed as s|e|m, f.bits()
// wide) of a value v that `f` represents exactly (e.g. a result of
// round_to_minifloat). -0 has the sign bit set.
uint8_t encode_minifloat(float v, const MiniFloat& f);

// (1) for every code 0 .. 2^bits - 1: the value, NaN for NaN codes, +-Inf
// for E5M2's infinities. Built once from the bit fields.
float decode_minifloat(uint8_t code, const MiniFloat& f);

// The E8M0 byte of 2^k (k in [-127, 127]) and back (NaN for 0xFF).
inline uint8_t encode_e8m0(int k) { return static_cast<uint8_t>(k + 127); }
float decode_e8m0(uint8_t code);

// ---------------------------------------------------------------------------
// Fused loops over runs of blocks (parallel callers cut the runs; per-block
// function calls would cost more than the arithmetic of a 32-element block).
// Block b is src[b*L, (b+1)*L) -> dst[...]; its parameter is params[b*stride]
// (callers pass their per-block parameter structs with a stride). src == dst
// allowed. Every element must be finite (the callers check first).
// ---------------------------------------------------------------------------

// dst = round_to_minifloat(src / s, f) * s with s = scales[b*stride] (the
// divide form of fp4/fp8 and NVFP4: x / s is one correctly rounded
// division); a block with s = 0 is written as +0.
void fake_quantize_minifloat_div(const float* src, float* dst, int64_t nblocks, int64_t L, const MiniFloat& f,
                                 const float* scales, int64_t stride);

// dst = round_to_minifloat(src * 2^-k, f) * 2^k with k = ks[b*stride] in
// [-127, 127] (the MX element rule: V / X with X = 2^k; both products are exact).
void fake_quantize_minifloat_pow2(const float* src, float* dst, int64_t nblocks, int64_t L, const MiniFloat& f,
                                  const int32_t* ks, int64_t stride);

// The MX INT8 element: dst = (mxint8_code(src, 2^-k) / 64) * 2^k.
void fake_quantize_mxint8(const float* src, float* dst, int64_t nblocks, int64_t L, const int32_t* ks,
                          int64_t stride);

}  // namespace quantppl::formats
