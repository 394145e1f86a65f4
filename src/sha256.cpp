#include "quantppl/sha256.h"

#include <openssl/evp.h>

#include <algorithm>
#include <stdexcept>
#include <vector>

#include "quantppl/error.h"
#include "quantppl/regular_file.h"

namespace quantppl {

// An OpenSSL failure here means an allocation failed or the library is broken, not bad input.
Sha256::Sha256() : ctx_(EVP_MD_CTX_new()) {
  if (ctx_ == nullptr || EVP_DigestInit_ex(ctx_, EVP_sha256(), nullptr) != 1) {
    EVP_MD_CTX_free(ctx_);
    throw std::runtime_error("OpenSSL: cannot start a SHA-256 digest");
  }
}

Sha256::~Sha256() { EVP_MD_CTX_free(ctx_); }

void Sha256::update(std::string_view bytes) {
  if (!digest_.empty()) throw std::logic_error("Sha256::update after hex_digest");
  if (EVP_DigestUpdate(ctx_, bytes.data(), bytes.size()) != 1) {
    throw std::runtime_error("OpenSSL: SHA-256 update failed");
  }
}

std::string Sha256::hex_digest() {
  if (digest_.empty()) {
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int length = 0;
    if (EVP_DigestFinal_ex(ctx_, md, &length) != 1 || length != 32) {
      throw std::runtime_error("OpenSSL: SHA-256 final failed");
    }
    static const char* kHex = "0123456789abcdef";
    for (unsigned int i = 0; i < length; ++i) {
      digest_ += kHex[md[i] >> 4];
      digest_ += kHex[md[i] & 0xf];
    }
  }
  return digest_;
}

std::string sha256(std::string_view bytes) {
  Sha256 h;
  h.update(bytes);
  return h.hex_digest();
}

std::string sha256_file(const std::string& path) {
  const RegularFile file(path, "file", INT64_MAX);
  Sha256 h;
  std::vector<char> block(static_cast<size_t>(std::min<int64_t>(file.size(), int64_t{1} << 20)));
  for (int64_t at = 0; at < file.size();) {
    const size_t n = static_cast<size_t>(std::min<int64_t>(file.size() - at, static_cast<int64_t>(block.size())));
    file.read_at(at, block.data(), n);
    h.update({block.data(), n});
    at += static_cast<int64_t>(n);
  }
  return h.hex_digest();
}

}  // namespace quantppl
