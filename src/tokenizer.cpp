#include "quantppl/tokenizer.h"

#include <dlfcn.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iterator>
#include <memory>
#include <mutex>
#include <sstream>

#include "quantppl/error.h"

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

Tokenizer::Tokenizer(void* handle, std::string serialized_model, std::string source_name,
                     int64_t piece_count)
    : handle_(handle),
      serialized_model_(std::move(serialized_model)),
      source_name_(std::move(source_name)),
      piece_count_(piece_count) {}

Tokenizer Tokenizer::from_bytes(std::string serialized_model, std::string source_name) {
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

Tokenizer Tokenizer::from_file(const std::string& path) {
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) {
    throw IoError("cannot open tokenizer '" + path + "': " + std::strerror(errno));
  }
  if (S_ISDIR(st.st_mode)) throw IoError("tokenizer '" + path + "' is a directory, expected a sentencepiece .model file");
  std::ifstream in(path, std::ios::binary);
  if (!in) throw IoError("cannot open tokenizer '" + path + "'");
  std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  if (in.bad()) throw IoError("cannot read tokenizer '" + path + "'");
  return from_bytes(std::move(bytes), "tokenizer '" + path + "'");
}

Tokenizer::Tokenizer(Tokenizer&& other) noexcept
    : handle_(other.handle_),
      serialized_model_(std::move(other.serialized_model_)),
      source_name_(std::move(other.source_name_)),
      piece_count_(other.piece_count_) {
  other.handle_ = nullptr;
}

Tokenizer& Tokenizer::operator=(Tokenizer&& other) noexcept {
  if (this != &other) {
    if (handle_ != nullptr) shim().spm_free(handle_);
    handle_ = other.handle_;
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
  return std::vector<int64_t>(ids.begin(), ids.begin() + n);
}

std::string Tokenizer::id_to_piece(int64_t id) const {
  if (id < 0 || id >= piece_count_) {
    throw UsageError(source_name_ + ": piece id must be in [0, " + std::to_string(piece_count_) +
                     "), got " + std::to_string(id));
  }
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
