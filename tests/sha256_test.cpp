#include "quantppl/sha256.h"

#include <fstream>

#include <gtest/gtest.h>

#include "quantppl/error.h"

namespace quantppl {
namespace {

// FIPS 180-4 / NIST CSRC example vectors.
TEST(Sha256Test, NistVectors) {
  EXPECT_EQ(sha256(""), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
  EXPECT_EQ(sha256("abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  EXPECT_EQ(sha256("abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq"),
            "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1");
  EXPECT_EQ(sha256(std::string(1000000, 'a')),
            "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0");
}

TEST(Sha256Test, IncrementalUpdatesAcrossBlockBoundariesMatchOneShot) {
  std::string text;
  for (int i = 0; i < 300; ++i) text += static_cast<char>('a' + i % 26);
  const std::string whole = sha256(text);
  for (const size_t step : {1u, 7u, 55u, 56u, 63u, 64u, 65u, 200u}) {
    Sha256 h;
    for (size_t i = 0; i < text.size(); i += step) h.update(std::string_view(text).substr(i, step));
    EXPECT_EQ(h.hex_digest(), whole) << "step " << step;
  }
}

TEST(Sha256Test, FileDigestEqualsBytesDigest) {
  const std::string path = ::testing::TempDir() + "sha256_test.bin";
  std::string bytes(3 * (1 << 20) + 17, '\0');
  for (size_t i = 0; i < bytes.size(); ++i) bytes[i] = static_cast<char>(i * 2654435761u >> 24);
  std::ofstream(path, std::ios::binary) << bytes;
  EXPECT_EQ(sha256_file(path), sha256(bytes));
  EXPECT_THROW(sha256_file("/nonexistent/file"), IoError);
  EXPECT_THROW(sha256_file("/"), IoError);
}

}  // namespace
}  // namespace quantppl
