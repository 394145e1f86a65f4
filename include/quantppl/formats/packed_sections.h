// The storage pieces every WeightFormat's pack()/unpack() share: the code bit
// stream and the dtype tags of a PackedSection (formats/weight_format.h).
//
// Codes: N-bit unsigned codes are ONE bit stream in row-major order, without
// row padding: code i occupies stream bits [i*N, i*N + N), stream bit k is bit
// (k mod 8) of byte k / 8 (LSB first), so at 4 bits code 0 is the low nibble
// of byte 0; the last byte's unused high bits are zero. dtype tag "uN".
//
// Other tags (docs/qpack-format.md): "u8" bytes, "i16", "f16", "f32" (IEEE,
// little-endian), "e8m0" (OCP MX shared scale, one byte: 2^(e - 127)), "e4m3"
// (OCP FP8 E4M3, one byte). bytes(dtype, count) = ceil(count * width / 8).
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "quantppl/formats/weight_format.h"

namespace quantppl {

// Bits one element of `dtype` occupies; 0 for a tag this build does not know.
int dtype_bits(std::string_view dtype);
// "u" + bits: the tag of N-bit codes (1 <= N <= 8).
std::string code_dtype(int bits);
// ceil(count * dtype_bits / 8); -1 for an unknown dtype or a count whose size overflows.
int64_t section_bytes(std::string_view dtype, int64_t count);

// Packs unsigned codes (each in [0, 2^bits - 1]) into ceil(n * bits / 8)
// bytes in the bit order above. UsageError for bits outside [1, 8] or a
// code that does not fit.
std::string pack_codes(const int32_t* codes, int64_t count, int bits);
std::string pack_codes(const std::vector<int32_t>& codes, int bits);
// The inverse; `bytes` must hold exactly ceil(count * bits / 8) bytes.
std::vector<int32_t> unpack_codes(std::string_view bytes, int64_t count, int bits);
// Unpacks count codes from `data` (ceil(count * bits / 8) readable bytes) into
// `out`; false if a padding bit after the last code is set.
bool unpack_codes_into(const uint8_t* data, int64_t count, int bits, int32_t* out);

// A section built from raw little-endian elements.
PackedSection make_section(std::string name, std::string dtype, int64_t count, const void* data, size_t bytes);

// The section `index` of `packed`, checked to be named `name` with dtype
// `dtype` and `count` elements of the right byte size; DataError naming
// `weight` (the layer) and the section otherwise, or when `packed` does not
// have exactly `expected_sections` sections.
const PackedSection& expect_section(const PackedWeight& packed, size_t index, size_t expected_sections,
                                    const std::string& name, const std::string& dtype, int64_t count,
                                    const std::string& weight);

}  // namespace quantppl
