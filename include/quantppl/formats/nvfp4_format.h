// NVFP4: FP4 E2M1 elements in blocks of 16 consecutive inputs, a per-block
// E4M3 scale, and one per-tensor float32 scale (NVIDIA's two-level scaling).
//
// ---------------------------------------------------------------------------
// The math (all float32, each operation correctly rounded)
// ---------------------------------------------------------------------------
//   (1) g = amax_tensor / 2688                  (2688 = 6 * 448: E2M1's and E4M3's largest values)
//   (2) d = e4m3(amax_block / fl(6 * g))         the block scale, stored as one E4M3 byte
//   (3) s = fl(d * g)
//   (4) x_hat = e2m1(x / s) * s
//
// e4m3 and e2m1 are float_formats.h's round_to_minifloat: nearest, ties to
// even, saturating (amax_block / (6 g) is <= 448 up to rounding, and x / s
// can exceed 6 by rounding: both come back to the largest value). Why g:
// E4M3 alone spans 2^-9 .. 448, so g maps the tensor's largest block onto
// E4M3's top and keeps every block scale inside its range.
// Zero: an all-zero tensor has g = 0, and a block whose d rounds to 0 (its
// amax below 2^-10 * 6 g) has s = 0; both reconstruct as +0.
//
// Storage: "codes" u4 (E2M1 bit patterns), "scales" e4m3 (one byte per
// block, d's bit pattern) and "global_scale" f32 (g). bits per weight =
// 4 + 8/16 + 32/numel = 4.5 + 32/numel.
#pragma once

#include <memory>
#include <string>

#include "quantppl/formats/weight_format.h"

namespace quantppl::formats {

constexpr int64_t kNvfp4Block = 16;

std::unique_ptr<WeightFormat> make_nvfp4_format();

// The format for "nvfp4", nullptr for another name; UsageError for "nvfp4:..." (no fields).
std::unique_ptr<WeightFormat> parse_nvfp4_format(const std::string& spec);

}  // namespace quantppl::formats
