// Element formats (float_formats.h) against an independent enumeration: every
// representable value is computed here from its bit fields with std::ldexp in
// double, and rounding is checked against a brute-force nearest search over
// that list (ties to the even mantissa, saturation at the largest value).
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <random>
#include <vector>

#include "quantppl/formats/float_formats.h"

namespace quantppl::formats {
namespace {

struct Value {
  double v;
  uint32_t code;
  bool even;  // mantissa field's low bit is 0
};

// (sign, exponent, mantissa) -> value, written from the OCP definitions:
// normal 2^(e - bias) * (1 + m / 2^M), subnormal 2^(1 - bias) * m / 2^M.
struct Spec {
  const MiniFloat* f;
  int E, M, bias;
  double max;
  bool e4m3_nan;    // S.1111.111 is NaN
  bool ieee_specials;  // exponent all ones is Inf/NaN
};

const Spec kSpecs[] = {
    {&kE2M1, 2, 1, 1, 6.0, false, false},        {&kE2M3, 2, 3, 1, 7.5, false, false},
    {&kE3M2, 3, 2, 3, 28.0, false, false},       {&kE4M3, 4, 3, 7, 448.0, true, false},
    {&kE5M2, 5, 2, 15, 57344.0, false, true},
};

// Finite non-negative values (sign 0), from the bit fields.
std::vector<Value> enumerate(const Spec& s) {
  std::vector<Value> out;
  for (uint32_t e = 0; e < (1u << s.E); ++e) {
    for (uint32_t m = 0; m < (1u << s.M); ++m) {
      if (s.e4m3_nan && e == (1u << s.E) - 1 && m == (1u << s.M) - 1) continue;
      if (s.ieee_specials && e == (1u << s.E) - 1) continue;
      const double v = e == 0 ? std::ldexp(static_cast<double>(m), 1 - s.bias - s.M)
                              : std::ldexp(1.0 + static_cast<double>(m) / (1 << s.M), static_cast<int>(e) - s.bias);
      out.push_back({v, (e << s.M) | m, (m & 1u) == 0});
    }
  }
  return out;
}

// Brute force: nearest finite value to x (ties: the even one), saturating.
double reference_round(double x, const std::vector<Value>& values, double max) {
  const double a = std::min(std::fabs(x), max);
  double best = 0, best_d = std::numeric_limits<double>::infinity();
  bool best_even = true;
  for (const Value& v : values) {
    const double d = std::fabs(v.v - a);
    if (d < best_d || (d == best_d && v.even && !best_even)) {
      best = v.v;
      best_d = d;
      best_even = v.even;
    }
  }
  return std::signbit(x) ? -best : best;
}

TEST(FloatFormatsTest, LargestValuesMatchTheOcpTables) {
  for (const Spec& s : kSpecs) {
    const std::vector<Value> values = enumerate(s);
    double mx = 0;
    for (const Value& v : values) mx = std::max(mx, v.v);
    EXPECT_EQ(mx, s.max) << s.f->name;
    EXPECT_EQ(static_cast<double>(s.f->max_finite), s.max) << s.f->name;
  }
  // E2M1's positive values, as the issue lists them.
  std::vector<double> fp4;
  for (const Value& v : enumerate(kSpecs[0])) fp4.push_back(v.v);
  EXPECT_EQ(fp4, (std::vector<double>{0, 0.5, 1, 1.5, 2, 3, 4, 6}));
}

TEST(FloatFormatsTest, EveryCodeDecodesToItsFieldsAndRoundTrips) {
  for (const Spec& s : kSpecs) {
    const int bits = 1 + s.E + s.M;
    const std::vector<Value> values = enumerate(s);
    int finite = 0;
    for (uint32_t code = 0; code < (1u << bits); ++code) {
      const uint32_t magnitude = code & ((1u << (bits - 1)) - 1);
      const bool negative = (code >> (bits - 1)) != 0;
      const float got = decode_minifloat(static_cast<uint8_t>(code), *s.f);
      const Value* want = nullptr;
      for (const Value& v : values) want = v.code == magnitude ? &v : want;
      if (want == nullptr) {
        const uint32_t e = magnitude >> s.M;
        if (s.ieee_specials && (magnitude & ((1u << s.M) - 1)) == 0 && e == (1u << s.E) - 1) {
          EXPECT_TRUE(std::isinf(got)) << s.f->name << " code " << code;
        } else {
          EXPECT_TRUE(std::isnan(got)) << s.f->name << " code " << code;
        }
        continue;
      }
      ++finite;
      EXPECT_EQ(static_cast<double>(got), negative ? -want->v : want->v) << s.f->name << " code " << code;
      EXPECT_EQ(std::signbit(got), negative) << s.f->name << " code " << code;
      EXPECT_EQ(encode_minifloat(got, *s.f), code) << s.f->name << " code " << code;
      // A representable value rounds to itself.
      EXPECT_EQ(float_bits(round_to_minifloat(got, *s.f)), float_bits(got)) << s.f->name << " code " << code;
    }
    EXPECT_EQ(finite, 2 * static_cast<int>(values.size())) << s.f->name;
  }
}

TEST(FloatFormatsTest, MidpointsTieToEvenAndNeighboursGoToTheNearest) {
  for (const Spec& s : kSpecs) {
    const std::vector<Value> values = enumerate(s);
    for (size_t i = 0; i + 1 < values.size(); ++i) {
      const Value& lo = values[i];
      const Value& hi = values[i + 1];
      const double mid = (lo.v + hi.v) / 2;
      const auto m = static_cast<float>(mid);
      ASSERT_EQ(static_cast<double>(m), mid);  // these formats' midpoints are float32
      for (const float sign : {1.0f, -1.0f}) {
        const double want_tie = hi.even ? hi.v : lo.v;
        EXPECT_EQ(round_to_minifloat(sign * m, *s.f), static_cast<float>(sign * want_tie))
            << s.f->name << " midpoint of " << lo.v << " and " << hi.v;
        EXPECT_EQ(round_to_minifloat(sign * std::nextafter(m, 0.0f), *s.f), static_cast<float>(sign * lo.v))
            << s.f->name << " just below the midpoint of " << lo.v << " and " << hi.v;
        EXPECT_EQ(round_to_minifloat(sign * std::nextafter(m, 1e30f), *s.f), static_cast<float>(sign * hi.v))
            << s.f->name << " just above the midpoint of " << lo.v << " and " << hi.v;
      }
    }
  }
}

TEST(FloatFormatsTest, OverflowSaturatesAtTheLargestFiniteValue) {
  for (const Spec& s : kSpecs) {
    const auto mx = static_cast<float>(s.max);
    for (const float x : {mx * 1.0001f, mx * 1.0625f, mx * 1.125f, mx * 2.0f, 1e30f, std::numeric_limits<float>::max()}) {
      EXPECT_EQ(round_to_minifloat(x, *s.f), mx) << s.f->name << " " << x;
      EXPECT_EQ(round_to_minifloat(-x, *s.f), -mx) << s.f->name << " " << -x;
    }
  }
}

TEST(FloatFormatsTest, SubnormalsAndZeros) {
  for (const Spec& s : kSpecs) {
    const double tiny = std::ldexp(1.0, 1 - s.bias - s.M);  // the smallest subnormal
    const auto t = static_cast<float>(tiny);
    EXPECT_EQ(round_to_minifloat(t, *s.f), t) << s.f->name;
    EXPECT_EQ(round_to_minifloat(t / 2, *s.f), 0.0f) << s.f->name;  // tie with 0: 0 is even
    EXPECT_EQ(round_to_minifloat(std::nextafter(t / 2, 1.0f), *s.f), t) << s.f->name;
    EXPECT_EQ(round_to_minifloat(1.5f * t, *s.f), 2 * t) << s.f->name;  // tie 1 (odd) / 2 (even)
    EXPECT_TRUE(std::signbit(round_to_minifloat(-t / 4, *s.f))) << s.f->name;  // -0 stays -0
    EXPECT_EQ(round_to_minifloat(1e-45f, *s.f), 0.0f) << s.f->name;  // float32 subnormal input
  }
}

TEST(FloatFormatsTest, RandomInputsMatchTheBruteForceNearestValue) {
  std::mt19937 rng(14);
  for (const Spec& s : kSpecs) {
    const std::vector<Value> values = enumerate(s);
    std::uniform_real_distribution<double> exponent(std::log2(std::ldexp(1.0, -s.bias - s.M - 2)), std::log2(s.max * 1.5));
    for (int i = 0; i < 20000; ++i) {
      const auto x = static_cast<float>((i % 2 ? -1 : 1) * std::exp2(exponent(rng)));
      EXPECT_EQ(static_cast<double>(round_to_minifloat(x, *s.f)), reference_round(x, values, s.max))
          << s.f->name << " x = " << x;
    }
  }
}

TEST(FloatFormatsTest, E8M0EncodesEveryPowerOfTwo) {
  for (int k = -127; k <= 127; ++k) {
    EXPECT_EQ(static_cast<double>(decode_e8m0(encode_e8m0(k))), std::ldexp(1.0, k)) << k;
    EXPECT_EQ(encode_e8m0(k), k + 127);
    EXPECT_EQ(static_cast<double>(pow2(k)), std::ldexp(1.0, k)) << k;
  }
  EXPECT_TRUE(std::isnan(decode_e8m0(0xFF)));
}

TEST(FloatFormatsTest, FloorLog2FromBits) {
  EXPECT_EQ(floor_log2(1.0f), 0);
  EXPECT_EQ(floor_log2(std::nextafter(1.0f, 0.0f)), -1);
  EXPECT_EQ(floor_log2(448.0f), 8);
  EXPECT_EQ(floor_log2(std::numeric_limits<float>::max()), 127);
  EXPECT_EQ(floor_log2(std::numeric_limits<float>::denorm_min()), -149);
  EXPECT_EQ(floor_log2(3 * std::numeric_limits<float>::denorm_min()), -148);
  EXPECT_EQ(floor_log2(std::numeric_limits<float>::min()), -126);
}

}  // namespace
}  // namespace quantppl::formats
