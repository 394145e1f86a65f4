#include "quantppl/tokenizer.h"

#include <dlfcn.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iterator>
#include <memory>
#include <mutex>
#include <sstream>

#include "quantppl/error.h"
#include "quantppl/input_file.h"
#include "quantppl/model/bpe_tokenizer.h"

namespace quantppl {
namespace {

constexpr const char* kShimFileName = "libquantppl_sentencepiece.so";

// The C API of src/sentencepiece_shim.cpp.
struct ShimApi {
  std::string path;
  void* (*spm_new)() = nullptr;
  void (*spm_free)(void*) = nullptr;
  int (*spm_load)(void*, const char*, size_t) = nullptr;
  const char* (*spm_last_error)(void*) = nullptr;
  int (*spm_piece_size)(void*) = nullptr;
  long (*spm_encode)(void*, const char*, size_t, int*, size_t) = nullptr;
  long (*spm_id_to_piece)(void*, int, char*, size_t) = nullptr;
};

std::string executable_dir() {
  std::string buf(4096, '\0');
  const ssize_t n = readlink("/proc/self/exe", buf.data(), buf.size());
  if (n <= 0) return {};
  buf.resize(static_cast<size_t>(n));
  const auto slash = buf.rfind('/');
  return slash == std::string::npos ? std::string() : buf.substr(0, slash);
}

template <typename Fn>
void bind(void* lib, const std::string& path, const char* symbol, Fn& fn) {
  void* p = dlsym(lib, symbol);
  if (p == nullptr) {
    throw IoError("sentencepiece shim '" + path + "' lacks the symbol " + symbol +
                  " (stale build? rebuild target quantppl_sentencepiece)");
  }
  fn = reinterpret_cast<Fn>(p);
}

ShimApi load_shim() {
  std::vector<std::string> candidates;
  const char* env = std::getenv("QUANTPPL_SENTENCEPIECE_SHIM");
  if (env != nullptr && *env != '\0') {
    candidates.emplace_back(env);  // explicit choice: no silent fallback
  } else {
    const std::string dir = executable_dir();
    if (!dir.empty()) candidates.push_back(dir + "/" + kShimFileName);
#ifdef QUANTPPL_SENTENCEPIECE_SHIM_PATH
    candidates.emplace_back(QUANTPPL_SENTENCEPIECE_SHIM_PATH);
#endif
  }
  std::string tried;
  for (const std::string& path : candidates) {
    if (access(path.c_str(), F_OK) != 0) {
      tried += (tried.empty() ? "" : "; ") + path + " (no such file)";
      continue;
    }
#if defined(__SANITIZE_ADDRESS__)
    // AddressSanitizer refuses RTLD_DEEPBIND (google/sanitizers#611), and without it the shim's
    // protobuf 3.14 binds to LibTorch's 3.21 and aborts. A new link-map namespace isolates it as
    // well; the shim must then be an uninstrumented build, since a second ASan runtime cannot
    // load there: scripts/sanitize.sh points QUANTPPL_SENTENCEPIECE_SHIM at build/'s.
    void* lib = dlmopen(LM_ID_NEWLM, path.c_str(), RTLD_NOW | RTLD_LOCAL);
#else
    void* lib = dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL | RTLD_DEEPBIND);
#endif
    if (lib == nullptr) {
      const char* why = dlerror();
      tried += (tried.empty() ? "" : "; ") + path + " (" + (why ? why : "dlopen failed") + ")";
      continue;
    }
    ShimApi api;
    api.path = path;
    bind(lib, path, "quantppl_spm_new", api.spm_new);
    bind(lib, path, "quantppl_spm_free", api.spm_free);
    bind(lib, path, "quantppl_spm_load", api.spm_load);
    bind(lib, path, "quantppl_spm_last_error", api.spm_last_error);
    bind(lib, path, "quantppl_spm_piece_size", api.spm_piece_size);
    bind(lib, path, "quantppl_spm_encode", api.spm_encode);
    bind(lib, path, "quantppl_spm_id_to_piece", api.spm_id_to_piece);
    return api;
  }
  throw IoError(std::string("cannot load the sentencepiece module ") + kShimFileName +
                (env != nullptr && *env != '\0' ? " named by QUANTPPL_SENTENCEPIECE_SHIM" : "") +
                "; tried: " + (tried.empty() ? "nothing" : tried));
}

// Loaded once per process; a failed load is retried by the next caller (and
// fails the same way), so no half-initialised state is ever kept.
const ShimApi& shim() {
  static std::mutex mutex;
  static std::unique_ptr<ShimApi> api;
  std::lock_guard<std::mutex> lock(mutex);
  if (!api) api = std::make_unique<ShimApi>(load_shim());
  return *api;
}

}  // namespace

std::string sentencepiece_shim_path() { return shim().path; }

const char* tokenizer_kind_name(TokenizerKind kind) {
  return kind == TokenizerKind::kBpe ? "bpe" : "sentencepiece";
}

std::optional<TokenizerKind> parse_tokenizer_kind(std::string_view name) {
  if (name == "sentencepiece") return TokenizerKind::kSentencePiece;
  if (name == "bpe") return TokenizerKind::kBpe;
  return std::nullopt;
}

const char* default_tokenizer_file(TokenizerKind kind) {
  return kind == TokenizerKind::kBpe ? "tokenizer.json" : "tokenizer.model";
}

Tokenizer::Tokenizer(void* handle, std::string serialized_model, std::string source_name,
                     int64_t piece_count)
    : handle_(handle),
      serialized_model_(std::move(serialized_model)),
      source_name_(std::move(source_name)),
      piece_count_(piece_count) {}

namespace {

// Protocol-buffer wire format, just enough to reach ModelProto.normalizer_spec
// (field 3).precompiled_charsmap (field 2) without linking protobuf.
bool read_varint(std::string_view b, size_t& i, uint64_t& v) {
  v = 0;
  for (int shift = 0; shift < 64 && i < b.size(); shift += 7) {
    const auto c = static_cast<unsigned char>(b[i++]);
    v |= static_cast<uint64_t>(c & 0x7F) << shift;
    if ((c & 0x80) == 0) return true;
  }
  return false;
}

// The bytes of length-delimited field `field` of message `b`, or "" (absent or malformed:
// sentencepiece itself reports a malformed model).
std::string_view find_field(std::string_view b, uint64_t field) {
  size_t i = 0;
  while (i < b.size()) {
    uint64_t key = 0, len = 0;
    if (!read_varint(b, i, key)) return {};
    switch (key & 7) {
      case 0:
        if (!read_varint(b, i, len)) return {};
        break;
      case 1:
        i += 8;
        break;
      case 5:
        i += 4;
        break;
      case 2:
        if (!read_varint(b, i, len) || len > b.size() - std::min(i, b.size())) return {};
        if ((key >> 3) == field) return b.substr(i, len);
        i += len;
        break;
      default:
        return {};
    }
  }
  return {};
}

// The longest replacement string of the normalizer's rules, in bytes. The
// precompiled charsmap is a uint32 trie size, the trie (a darts-clone double
// array), then the replacement strings, each ending in NUL. Each rule
// consumes at least one input byte, so normalizing n bytes gives at most
// n * max(1, this) bytes.
size_t longest_normalization(std::string_view model) {
  const std::string_view charsmap = find_field(find_field(model, 3), 2);
  if (charsmap.size() < 4) return 0;
  uint32_t trie_bytes = 0;
  std::memcpy(&trie_bytes, charsmap.data(), 4);  // little-endian, as written on x86 and ARM
  if (trie_bytes > charsmap.size() - 4) return 0;
  const std::string_view strings = charsmap.substr(4 + trie_bytes);
  size_t longest = 0, start = 0;
  for (size_t i = 0; i < strings.size(); ++i) {
    if (strings[i] == '\0') {
      longest = std::max(longest, i - start);
      start = i + 1;
    }
  }
  return std::max(longest, strings.size() - start);
}

}  // namespace

Tokenizer Tokenizer::from_bytes(std::string serialized_model, std::string source_name) {
  if (static_cast<int64_t>(serialized_model.size()) > kMaxTokenizerBytes) {
    throw DataError(source_name + " is " + std::to_string(serialized_model.size()) + " bytes, more than the " +
                    std::to_string(kMaxTokenizerBytes >> 20) + " MiB maximum for a tokenizer");
  }
  // Before sentencepiece sees any text: a rule that replaces a character by thousands of bytes
  // would make every encode() call allocate thousands of times the text.
  if (const size_t longest = longest_normalization(serialized_model); longest > kMaxNormalizationBytes) {
    throw DataError(source_name + ": a normalization rule of this sentencepiece model produces " +
                    std::to_string(longest) + " bytes, more than the " + std::to_string(kMaxNormalizationBytes) +
                    " any real tokenizer needs (NFKC's longest is 33): a hostile or corrupt tokenizer");
  }
  const ActivityScope activity("loading " + source_name);
  const ShimApi& api = shim();
  void* handle = api.spm_new();
  if (handle == nullptr) throw std::bad_alloc();
  if (serialized_model.empty() ||
      api.spm_load(handle, serialized_model.data(), serialized_model.size()) != 1) {
    std::string why = serialized_model.empty() ? "it is empty" : api.spm_last_error(handle);
    api.spm_free(handle);
    if (const auto nl = why.find('\n'); nl != std::string::npos) why.resize(nl);
    throw DataError(source_name + ": not a sentencepiece model (" + why + ")");
  }
  const int64_t pieces = api.spm_piece_size(handle);
  return Tokenizer(handle, std::move(serialized_model), std::move(source_name), pieces);
}

Tokenizer Tokenizer::from_bytes(TokenizerKind kind, std::string serialized_model, std::string source_name) {
  if (kind == TokenizerKind::kSentencePiece) return from_bytes(std::move(serialized_model), std::move(source_name));
  const ActivityScope activity("loading " + source_name);
  auto bpe = std::make_unique<BpeTokenizer>(BpeTokenizer::from_json(serialized_model, source_name));
  Tokenizer t(nullptr, std::move(serialized_model), std::move(source_name), bpe->vocab_size());
  t.kind_ = TokenizerKind::kBpe;
  t.bpe_ = std::move(bpe);
  return t;
}

Tokenizer Tokenizer::from_file(const std::string& path) {
  std::string bytes = read_input_file(path, kTokenizerInput);
  const size_t first = bytes.find_first_not_of(" \t\r\n");
  const TokenizerKind kind =
      first != std::string::npos && bytes[first] == '{' ? TokenizerKind::kBpe : TokenizerKind::kSentencePiece;
  return from_bytes(kind, std::move(bytes), "tokenizer '" + path + "'");
}

Tokenizer Tokenizer::from_file(TokenizerKind kind, const std::string& path) {
  return from_bytes(kind, read_input_file(path, kTokenizerInput), "tokenizer '" + path + "'");
}

void check_same_vocabulary(const Tokenizer& given, const Tokenizer& own) {
  if (given.kind() != own.kind()) {
    throw DataError(given.source_name() + " does not belong to this model: it is a " +
                    tokenizer_kind_name(given.kind()) + " tokenizer, " + own.source_name() + " is " +
                    tokenizer_kind_name(own.kind()) + "; pass the model's own tokenizer, or none");
  }
  if (given.piece_count() != own.piece_count()) {
    throw DataError(given.source_name() + " does not belong to this model: it has " +
                    std::to_string(given.piece_count()) + " pieces, " + own.source_name() + " has " +
                    std::to_string(own.piece_count()) + "; pass the model's own tokenizer, or none");
  }
  for (int64_t id = 0; id < own.piece_count(); ++id) {
    const std::string a = given.id_to_piece(id);
    const std::string b = own.id_to_piece(id);
    if (a != b) {
      throw DataError(given.source_name() + " does not belong to this model: its piece " + std::to_string(id) +
                      " is '" + a + "', in " + own.source_name() + " it is '" + b +
                      "'; pass the model's own tokenizer, or none");
    }
  }
}

Tokenizer::Tokenizer(Tokenizer&& other) noexcept
    : kind_(other.kind_),
      handle_(other.handle_),
      bpe_(std::move(other.bpe_)),
      serialized_model_(std::move(other.serialized_model_)),
      source_name_(std::move(other.source_name_)),
      piece_count_(other.piece_count_) {
  other.handle_ = nullptr;
}

Tokenizer& Tokenizer::operator=(Tokenizer&& other) noexcept {
  if (this != &other) {
    if (handle_ != nullptr) shim().spm_free(handle_);
    kind_ = other.kind_;
    handle_ = other.handle_;
    bpe_ = std::move(other.bpe_);
    serialized_model_ = std::move(other.serialized_model_);
    source_name_ = std::move(other.source_name_);
    piece_count_ = other.piece_count_;
    other.handle_ = nullptr;
  }
  return *this;
}

Tokenizer::~Tokenizer() {
  if (handle_ != nullptr) shim().spm_free(handle_);
}

std::vector<int64_t> Tokenizer::encode(std::string_view text) const {
  // BPE gives at most one id per byte of normalized text, and its normalizers expand a character
  // at most 18-fold (NFKC's U+FDFA): no unbounded expansion to guard against.
  if (bpe_) return bpe_->encode(text);
  const ShimApi& api = shim();
  // A piece covers at least one byte, plus possibly a lone leading "▁": the
  // first guess almost always suffices; the shim reports the true count if not.
  std::vector<int> ids(text.size() + 8);
  long n = api.spm_encode(handle_, text.data(), text.size(), ids.data(), ids.size());
  if (n > static_cast<long>(ids.size())) {
    ids.resize(static_cast<size_t>(n));
    n = api.spm_encode(handle_, text.data(), text.size(), ids.data(), ids.size());
  }
  if (n < 0) {
    throw DataError(source_name_ + ": sentencepiece cannot encode the text: " +
                    api.spm_last_error(handle_));
  }
  if (n > kMaxPiecesPerByte * static_cast<long>(text.size()) + kMaxPiecesPerByte) {
    throw DataError(source_name_ + ": " + std::to_string(n) + " pieces for " + std::to_string(text.size()) +
                    " bytes of text, more than " + std::to_string(kMaxPiecesPerByte) +
                    " per byte: the tokenizer's normalization expands the text; expected a real tokenizer");
  }
  return std::vector<int64_t>(ids.begin(), ids.begin() + n);
}

std::string Tokenizer::id_to_piece(int64_t id) const {
  if (id < 0 || id >= piece_count_) {
    throw UsageError(source_name_ + ": piece id must be in [0, " + std::to_string(piece_count_) +
                     "), got " + std::to_string(id));
  }
  if (bpe_) return bpe_->id_to_token(id);
  const ShimApi& api = shim();
  std::string piece(64, '\0');
  long n = api.spm_id_to_piece(handle_, static_cast<int>(id), piece.data(), piece.size());
  if (n >= static_cast<long>(piece.size())) {
    piece.assign(static_cast<size_t>(n) + 1, '\0');
    n = api.spm_id_to_piece(handle_, static_cast<int>(id), piece.data(), piece.size());
  }
  piece.resize(static_cast<size_t>(n));
  return piece;
}

}  // namespace quantppl
