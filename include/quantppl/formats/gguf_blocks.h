// llama.cpp's legacy GGUF block formats q8_0, q4_0, q4_1, q5_0, q5_1, as
// ggml's reference quantizers (quantize_row_*_ref, ggml-quants.c) and the
// gguf Python package (gguf-py/gguf/quants.py) compute them.
//
// ---------------------------------------------------------------------------
// The math, per block of 32 consecutive inputs of a row, float32
// ---------------------------------------------------------------------------
// f16(v) is v rounded to IEEE binary16 (nearest, ties to even; ggml's
// GGML_FP32_TO_FP16, numpy's astype(float16)); codes are computed with the
// float32 d, values are rebuilt from the STORED f16 scale(s):
//
//   q8_0:  amax = max|x|;  d = amax / 127;  id = d ? 1/d : 0
//          q = roundf(x * id)                  (half away from zero), int8
//          x_hat = q * f16(d)
//   q4_0:  m = the first x with the largest |x|;  d = m / -8;  id = d ? 1/d : 0
//          q = min(15, trunc(fl32(x * id + 8.5)))     codes 0..15
//          x_hat = (q - 8) * f16(d)
//   q5_0:  as q4_0 with d = m / -16, 16.5, 31 and x_hat = (q - 16) * f16(d)
//   q4_1:  lo = min x, hi = max x;  d = (hi - lo) / 15;  id = d ? 1/d : 0
//          q = min(15, trunc(fl32(fl32(x - lo) * id) + 0.5))
//          x_hat = fl32(q * f16(d)) + f16(lo)
//   q5_1:  as q4_1 with 31
//
// Rounding details, and why:
// * q4_0 / q5_0: ggml writes `(int8_t)(x*id + 8.5f)`; compilers contract
//   x*id + 8.5f into one fused multiply-add where the hardware has it, so
//   the stored files depend on the build. gguf-py (the reference our tests
//   use, bit for bit) evaluates x*id exactly in float64, adds 8.5 in
//   float64, rounds to float32, then truncates; we do exactly that. It
//   agrees with the FMA except when the float64 sum rounds twice.
// * q4_1 / q5_1 and q8_0: every operation is a separate float32 rounding
//   (as gguf-py and the unfused C), this file is built with -ffp-contract=off.
// * The division by -8 / -16 makes d negative when the extreme value is
//   positive: the extreme value itself is then coded exactly as code 0
//   (q - 8 = -8), which is why ggml uses the signed extreme.
// * All-zero blocks: d = 0, id = 0, every code is the middle code, x_hat is
//   a zero (with d's sign: -0.0 for q4_0 / q5_0, as ggml and gguf-py).
// * A scale or minimum beyond binary16's range (|v| > 65504) would become
//   Inf in the file: a DataError naming the weight.
//
// Storage (.qpack): "codes" u8 (q8_0: the int8 two's complement byte), u4
// (q4_*), u5 (q5_*) in one LSB-first bit stream; "scales" f16 (d per
// block); q4_1 / q5_1 also "mins" f16. bits per weight: q8_0 8.5, q4_0 4.5,
// q4_1 5.0, q5_0 5.5, q5_1 6.0 (ggml's block sizes 34, 18, 20, 22, 24 bytes).
//
// A method's zero points (ZeroPointGrid, weight_format.h; HQQ sets them) on
// q4_1 / q5_1, x_hat = d * q + m with the method's per-block inverse scale k
// and real zero point z (x_hat = (q - z) / k before storage rounding):
//   q = clamp(round_half_even(fl32(x * k) + z), 0, 15 or 31)   from the float32 k, z
//   d = f16(fl32(1 / k)),  m = f16(fl32(-(z * d)))  with d the stored value
//   x_hat = fl32(q * d) + m                         as every q4_1 / q5_1 file
// So the codes are the method's (the hqq package also computes its codes
// before it rounds its scale and zero to float16), the rounding of d and m
// moves x_hat by at most ~q * d * 2^-11 + |m| * 2^-11, and x_hat is exactly
// what a reader of the stored d, m and codes (ggml, gguf-py) computes.
// Stored as the format's own sections: bits per weight unchanged (5.0, 6.0).
#pragma once

#include <memory>
#include <string>

#include "quantppl/formats/weight_format.h"

namespace quantppl::formats {

enum class GgufBlock { kQ8_0, kQ4_0, kQ4_1, kQ5_0, kQ5_1 };

constexpr int64_t kGgufBlock = 32;

// "q8_0", "q4_0", "q4_1", "q5_0", "q5_1".
std::string gguf_name(GgufBlock type);

std::unique_ptr<WeightFormat> make_gguf_format(GgufBlock type);

// The format a spec names, nullptr for another name; UsageError for fields.
std::unique_ptr<WeightFormat> parse_gguf_format(const std::string& spec);

}  // namespace quantppl::formats
