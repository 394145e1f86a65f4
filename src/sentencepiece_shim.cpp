// A C API over sentencepiece, built as its own module (libquantppl_sentencepiece.so).
//
// Why a module: Debian's libsentencepiece carries a built-in protobuf 3.14
// and exports its symbols; LibTorch loads the system protobuf 3.21. In one
// link map they interpose each other and the process crashes during static
// initialisation. The quantppl library dlopen()s this module with
// RTLD_LOCAL | RTLD_DEEPBIND, so sentencepiece binds to its own protobuf and
// nothing else sees it. Only plain C types cross this boundary; the caller
// owns no C++ object from this side.
#include <sentencepiece_processor.h>

#include <cstring>
#include <string>
#include <vector>

namespace {

struct Handle {
  sentencepiece::SentencePieceProcessor processor;
  std::string last_error;
};

Handle* as_handle(void* h) { return static_cast<Handle*>(h); }

}  // namespace

extern "C" {

// Returns a new handle (never null unless allocation fails).
void* quantppl_spm_new() { return new (std::nothrow) Handle(); }

void quantppl_spm_free(void* h) { delete as_handle(h); }

// Loads a serialized model; returns 1 on success, 0 on failure (see last_error).
int quantppl_spm_load(void* h, const char* bytes, size_t size) {
  Handle* handle = as_handle(h);
  try {
    const auto status = handle->processor.LoadFromSerializedProto(std::string(bytes, size));
    if (!status.ok()) {
      handle->last_error = status.ToString();
      return 0;
    }
    return 1;
  } catch (const std::exception& e) {
    handle->last_error = e.what();
    return 0;
  }
}

const char* quantppl_spm_last_error(void* h) { return as_handle(h)->last_error.c_str(); }

int quantppl_spm_piece_size(void* h) { return as_handle(h)->processor.GetPieceSize(); }

// Encodes `size` bytes of UTF-8 text into ids. Writes at most `capacity` ids
// to `out` and returns the total count (call again with a larger buffer if
// it exceeds `capacity`), or -1 on failure (see last_error).
long quantppl_spm_encode(void* h, const char* text, size_t size, int* out, size_t capacity) {
  Handle* handle = as_handle(h);
  try {
    std::vector<int> ids;
    const auto status = handle->processor.Encode(std::string(text, size), &ids);
    if (!status.ok()) {
      handle->last_error = status.ToString();
      return -1;
    }
    if (ids.size() <= capacity && !ids.empty()) std::memcpy(out, ids.data(), ids.size() * sizeof(int));
    return static_cast<long>(ids.size());
  } catch (const std::exception& e) {
    handle->last_error = e.what();
    return -1;
  }
}

// Writes the piece for `id` (NUL-terminated, truncated to capacity) and returns its length.
long quantppl_spm_id_to_piece(void* h, int id, char* out, size_t capacity) {
  const std::string piece = as_handle(h)->processor.IdToPiece(id);
  if (capacity > 0) {
    const size_t n = piece.size() < capacity - 1 ? piece.size() : capacity - 1;
    std::memcpy(out, piece.data(), n);
    out[n] = '\0';
  }
  return static_cast<long>(piece.size());
}

}  // extern "C"
