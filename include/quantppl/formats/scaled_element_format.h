// Scaled element grids: NF4 (QLoRA / bitsandbytes), FP4 E2M1 and OCP FP8
// (E4M3, E5M2), each with one float32 scale per block, cut like the uniform
// grids (tensor, channel, groupN) and ranged like them (minmax, pP, mse).
//
//   spec:  nf4[:GRAN[:RANGE]]  fp4[...]  fp8e4m3[...]  fp8e5m2[...]
//          GRAN  = tensor (default, as the uniform grammar) | channel | groupN
//          RANGE = minmax (default) | pP (0 < P <= 100) | mse
//   canonical spelling: every field, e.g. "nf4:group64:minmax".
//
// ---------------------------------------------------------------------------
// The math, per block with clipping magnitude a (max|x| for minmax)
// ---------------------------------------------------------------------------
// Let E be the grid's largest magnitude: 1 for NF4, 6 for E2M1, 448 for
// E4M3, 57344 for E5M2. Then
//
//   (1) s = a / E                                   (float32 division; NF4: s = a)
//   (2) x_hat = s * c(x / s)                        (x / s one float32 division)
//
// where c rounds to the grid:
//   * FP4/FP8: round_to_minifloat (float_formats.h): nearest, ties to the
//     even mantissa, saturated at +-E (x / s can exceed E by an ulp, and
//     clipped ranges put values beyond it).
//   * NF4: the value of the table below nearest to x / s, a tie going to
//     the LOWER value, as bitsandbytes' decision tree (its thresholds are the
//     midpoints, compared with `x > threshold`). The midpoint of two float32
//     values is exact in double; the comparison uses the largest float32 not
//     above it, which decides every float32 input identically.
//     Values beyond +-1 (clipped ranges) go to +-1.
//
//   NF4 (code 0..15): -1, -0.6961928009986877, -0.5250730514526367,
//     -0.39491748809814453, -0.28444138169288635, -0.18477343022823334,
//     -0.09105003625154495, 0, 0.07958029955625534, 0.16093020141124725,
//     0.24611230194568634, 0.33791524171829224, 0.44070982933044434,
//     0.5626170039176941, 0.7229568362236023, 1      (each a float32)
//
// Ranges: pP clips a to numpy's percentile of |x| over the block
// (percentile.h); a block whose percentile is 0 but which is not all zero
// keeps a = max|x| (a zero scale would zero it). mse picks, per block, the
// a = max|x| * (1 - i/100), i = 0..79, with the smallest squared
// reconstruction error (summed in double; ties keep the larger a), the same
// candidates as the uniform grids' mse.
//
// An all-zero block (a = 0) has s = 0 and reconstructs as +0.
//
// Storage (.qpack): "codes" u4 (NF4: the table index; FP4: the E2M1 bit
// pattern s|e|m) or u8 (the FP8 bit pattern), and "scales" f32 (s per
// block). bits per weight = code bits + 32 / block size (tensor: 32 / numel).
#pragma once

#include <array>
#include <memory>
#include <string>

#include "quantppl/formats/weight_format.h"
#include "quantppl/quantize.h"

namespace quantppl::formats {

enum class ElementGrid { kNf4, kFp4, kFp8E4M3, kFp8E5M2 };

struct ScaledElementConfig {
  ElementGrid grid = ElementGrid::kNf4;
  Granularity granularity = Granularity::kPerTensor;
  int64_t group_size = 0;  // kPerGroup only
  RangeMethod range = RangeMethod::kMinMax;
  double percentile = 99.99;  // kPercentile only, in (0, 100]
};

// The NF4 table above, code order.
extern const std::array<float, 16> kNf4Values;

// The spec name of a grid: "nf4", "fp4", "fp8e4m3", "fp8e5m2".
std::string grid_name(ElementGrid grid);

std::unique_ptr<WeightFormat> make_scaled_element_format(const ScaledElementConfig& config);

// The format a spec names, nullptr when its first field names no grid of
// this family; UsageError naming the spec for a malformed GRAN or RANGE.
std::unique_ptr<WeightFormat> parse_scaled_element_format(const std::string& spec);

}  // namespace quantppl::formats
