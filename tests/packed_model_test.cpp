// The .qpack format (packed_model.h): bit packing against a naive bit-by-bit
// reference, pack -> load bit-exactness against fake_quantize, the size
// formula, and rejection of corrupt, truncated and mismatched files.
#include "quantppl/packed_model.h"

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <random>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>
#include <torch/torch.h>

#include "fixture_support.h"
#include "quantppl/compare.h"
#include "quantppl/error.h"
#include "quantppl/model_quantizer.h"

namespace quantppl {
namespace {

namespace fs = std::filesystem;

// The reference: set stream bit i*b + j to bit j of code i, one bit at a time,
// with stream bit k = bit (k mod 8) of byte k / 8.
std::string naive_pack(const std::vector<int32_t>& codes, int bits) {
  std::string out((codes.size() * bits + 7) / 8, '\0');
  for (size_t i = 0; i < codes.size(); ++i) {
    for (int j = 0; j < bits; ++j) {
      if ((codes[i] >> j) & 1) {
        const size_t k = i * bits + j;
        out[k / 8] = static_cast<char>(static_cast<uint8_t>(out[k / 8]) | (1u << (k % 8)));
      }
    }
  }
  return out;
}

TEST(PackedCodesTest, RoundTripMatchesNaiveReferenceForEveryWidth) {
  std::mt19937 rng(1234);
  for (int bits = 1; bits <= 8; ++bits) {
    const int32_t max_code = (1 << bits) - 1;
    for (const int64_t count : {0, 1, 2, 3, 7, 8, 9, 31, 64, 1001}) {
      std::uniform_int_distribution<int32_t> dist(0, max_code);
      std::vector<int32_t> codes(static_cast<size_t>(count));
      for (auto& c : codes) c = dist(rng);
      // The edge values qmin (0 stored) and qmax - qmin (all ones) at both ends.
      if (count >= 1) codes.front() = max_code;
      if (count >= 2) codes.back() = max_code;
      if (count >= 3) codes[1] = 0;
      const std::string packed = pack_codes(codes, bits);
      EXPECT_EQ(packed, naive_pack(codes, bits)) << bits << " bits, " << count << " codes";
      EXPECT_EQ(static_cast<int64_t>(packed.size()), (count * bits + 7) / 8);
      EXPECT_EQ(unpack_codes(packed, count, bits), codes) << bits << " bits, " << count << " codes";
    }
  }
}

TEST(PackedCodesTest, FourBitsPutCodeZeroInTheLowNibble) {
  EXPECT_EQ(pack_codes(std::vector<int32_t>{0x3, 0xA, 0xF}, 4), std::string("\xA3\x0F", 2));
  EXPECT_EQ(pack_codes(std::vector<int32_t>{1, 2, 3, 0}, 2), std::string("\x39", 1));
}

TEST(PackedCodesTest, RejectsCodesThatDoNotFit) {
  EXPECT_THROW(pack_codes(std::vector<int32_t>{16}, 4), UsageError);
  EXPECT_THROW(pack_codes(std::vector<int32_t>{-1}, 4), UsageError);
  EXPECT_THROW(unpack_codes(std::string(4, '\0'), 5, 4), UsageError);
}

}  // namespace
}  // namespace quantppl
