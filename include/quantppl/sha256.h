// SHA-256 (FIPS 180-4), for the reproducibility fields of reports: the
// digest of the evaluation text and of model files.
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <string_view>

namespace quantppl {

// Incremental hasher: update() any number of times, then hex_digest() once.
class Sha256 {
 public:
  Sha256();
  void update(std::string_view bytes);
  // The digest as 64 lowercase hex digits; the hasher must not be updated afterwards.
  std::string hex_digest();

 private:
  void compress(const uint8_t* block);

  std::array<uint32_t, 8> state_;
  std::array<uint8_t, 64> buffer_{};
  size_t buffered_ = 0;
  uint64_t total_bytes_ = 0;
  bool finished_ = false;
};

std::string sha256(std::string_view bytes);
// Streams the file in 1 MiB blocks; IoError if it cannot be read.
std::string sha256_file(const std::string& path);

}  // namespace quantppl
