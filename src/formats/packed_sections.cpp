#include "quantppl/formats/packed_sections.h"

#include <cstring>
#include <limits>

#include <fmt/format.h>

#include "quantppl/error.h"

namespace quantppl {

int dtype_bits(std::string_view dtype) {
  if (dtype.size() == 2 && dtype[0] == 'u' && dtype[1] >= '1' && dtype[1] <= '8') return dtype[1] - '0';
  if (dtype == "i16" || dtype == "f16") return 16;
  if (dtype == "f32") return 32;
  if (dtype == "e8m0" || dtype == "e4m3") return 8;
  return 0;
}

std::string code_dtype(int bits) {
  if (bits < 1 || bits > 8) throw UsageError(fmt::format("code width must be in [1, 8] bits, got {}", bits));
  return fmt::format("u{}", bits);  // (not "u" + std::to_string: a GCC 12 -Wrestrict false positive under C++20)
}

int64_t section_bytes(std::string_view dtype, int64_t count) {
  const int bits = dtype_bits(dtype);
  if (bits == 0 || count < 0 || count > (std::numeric_limits<int64_t>::max() - 7) / bits) return -1;
  return (count * bits + 7) / 8;
}

std::string pack_codes(const int32_t* codes, int64_t count, int bits) {
  if (bits < 1 || bits > 8) throw UsageError(fmt::format("pack_codes: bits must be in [1, 8], got {}", bits));
  const int32_t max_code = (1 << bits) - 1;
  std::string out(static_cast<size_t>((count * bits + 7) / 8), '\0');
  uint64_t acc = 0;
  int filled = 0;
  size_t pos = 0;
  for (int64_t i = 0; i < count; ++i) {
    const int32_t c = codes[i];
    if (c < 0 || c > max_code) {
      throw UsageError(fmt::format("pack_codes: code {} at index {} does not fit {} bits", c, i, bits));
    }
    acc |= static_cast<uint64_t>(c) << filled;
    filled += bits;
    while (filled >= 8) {
      out[pos++] = static_cast<char>(acc & 0xff);
      acc >>= 8;
      filled -= 8;
    }
  }
  if (filled > 0) out[pos++] = static_cast<char>(acc & 0xff);
  return out;
}

std::string pack_codes(const std::vector<int32_t>& codes, int bits) {
  return pack_codes(codes.data(), static_cast<int64_t>(codes.size()), bits);
}

bool unpack_codes_into(const uint8_t* data, int64_t count, int bits, int32_t* out) {
  const uint64_t mask = (uint64_t{1} << bits) - 1;
  uint64_t acc = 0;
  int filled = 0;
  for (int64_t i = 0; i < count; ++i) {
    while (filled < bits) {
      acc |= static_cast<uint64_t>(*data++) << filled;
      filled += 8;
    }
    out[i] = static_cast<int32_t>(acc & mask);
    acc >>= bits;
    filled -= bits;
  }
  return acc == 0;
}

std::vector<int32_t> unpack_codes(std::string_view bytes, int64_t count, int bits) {
  if (bits < 1 || bits > 8) throw UsageError(fmt::format("unpack_codes: bits must be in [1, 8], got {}", bits));
  const int64_t expected = (count * bits + 7) / 8;
  if (static_cast<int64_t>(bytes.size()) != expected) {
    throw UsageError(fmt::format("unpack_codes: {} codes of {} bits need {} bytes, got {}", count, bits, expected,
                                 bytes.size()));
  }
  std::vector<int32_t> out(static_cast<size_t>(count));
  unpack_codes_into(reinterpret_cast<const uint8_t*>(bytes.data()), count, bits, out.data());
  return out;
}

PackedSection make_section(std::string name, std::string dtype, int64_t count, const void* data, size_t bytes) {
  PackedSection s;
  s.name = std::move(name);
  s.dtype = std::move(dtype);
  s.count = count;
  s.bytes.assign(static_cast<const char*>(data), bytes);
  return s;
}

const PackedSection& expect_section(const PackedWeight& packed, size_t index, size_t expected_sections,
                                    const std::string& name, const std::string& dtype, int64_t count,
                                    const std::string& weight) {
  if (packed.sections.size() != expected_sections) {
    throw DataError(fmt::format("'{}': {} packed sections, expected {}", weight, packed.sections.size(),
                                expected_sections));
  }
  const PackedSection& s = packed.sections.at(index);
  const std::string field = fmt::format("'{}': section {} ('{}')", weight, index, s.name);
  if (s.name != name) throw DataError(fmt::format("{}: expected the section '{}'", field, name));
  if (s.dtype != dtype) throw DataError(fmt::format("{}: dtype \"{}\", expected \"{}\"", field, s.dtype, dtype));
  if (s.count != count) throw DataError(fmt::format("{}: {} elements, expected {}", field, s.count, count));
  const int64_t bytes = section_bytes(dtype, count);
  if (static_cast<int64_t>(s.bytes.size()) != bytes) {
    throw DataError(fmt::format("{}: {} bytes, expected {}", field, s.bytes.size(), bytes));
  }
  return s;
}

}  // namespace quantppl
