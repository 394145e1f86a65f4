// OCP Microscaling (MX) formats, OCP MX specification v1.0:
// mxfp4, mxfp6e2m3, mxfp6e3m2, mxfp8e4m3, mxfp8e5m2, mxint8.
//
// ---------------------------------------------------------------------------
// The math (spec section 6.3, "conversion from vector of floats")
// ---------------------------------------------------------------------------
// A block is 32 consecutive inputs of a row (32 must divide in_features).
// With amax = max|V| over the block and emax_elem the element type's
// exponent of its largest normal (E2M1: 2, E2M3: 2, E3M2: 4, E4M3: 8,
// E5M2: 15, INT8: 0):
//
//   (1) k = floor(log2(amax)) - emax_elem, clamped to [-127, 127] (E8M0's range)
//       X = 2^k                                   shared scale, one E8M0 byte
//   (2) P_i = round(V_i / X), to nearest with ties to even, clamped to the
//       element's largest normal +-max (6, 7.5, 28, 448, 57344, 127/64)
//   (3) x_hat_i = P_i * X
//
// floor(log2(amax)) is read from amax's float32 exponent bits (subnormals
// included), and V / X, P * X are exact multiplications by powers of two, so
// nothing here calls pow or log2. Why clamp (2): amax / X lies in
// [2^emax, 2^(emax+1)), which overshoots the largest normal (e.g. up to
// 7.99 > 6 for E2M1); the spec clamps it, it does not raise the scale.
// FP elements round with float_formats.h's round_to_minifloat (subnormals
// included). INT8 elements are two's complement with an implicit scale
// 2^-6: P = q / 64, q = round_half_even(64 V / X) clamped to [-127, 127].
// Why +-127/64 and not [-2, 127/64]: the spec's INT8 element table gives the
// code 0x80 the value -2 but names 1 63/64 (= 127/64) as the largest normal,
// and (2) clamps to +-(largest normal), as for the FP elements; the spec
// authors' reference emulation (microxcaling, ElemFormat.int8: emax 0,
// max_norm = 2^0 * 127/64) clamps to the same symmetric +-127/64, so -128
// is never produced (it still decodes, to -2, from a .qpack). An all-zero
// block has k = -127 and stays zero.
//
// Storage: "codes" uN = the element's bit pattern (FP: sign|exponent|
// mantissa; INT8: the two's complement byte) and "scales" e8m0 (one byte per
// block, k + 127). bits per weight = element bits + 8 / 32: 4.25, 6.25, 6.25,
// 8.25, 8.25, 8.25.
#pragma once

#include <memory>
#include <string>

#include "quantppl/formats/weight_format.h"

namespace quantppl::formats {

enum class MxElement { kFp4E2M1, kFp6E2M3, kFp6E3M2, kFp8E4M3, kFp8E5M2, kInt8 };

constexpr int64_t kMxBlock = 32;

// "mxfp4", "mxfp6e2m3", "mxfp6e3m2", "mxfp8e4m3", "mxfp8e5m2", "mxint8".
std::string mx_name(MxElement element);
// emax_elem of (1).
int mx_emax(MxElement element);

std::unique_ptr<WeightFormat> make_mx_format(MxElement element);

// The format a spec names, nullptr if it names no MX format (MX specs have
// no fields: "mxfp4:group32" is a UsageError).
std::unique_ptr<WeightFormat> parse_mx_format(const std::string& spec);

}  // namespace quantppl::formats
