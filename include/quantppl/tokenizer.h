// The sentencepiece tokenizer of a contract model (docs/model-contract.md).
//
// Why it goes through a dlopen()ed module: Debian's libsentencepiece carries
// its own protobuf 3.14 and LibTorch loads the system protobuf 3.21; linked
// into one process the two interpose each other and the process dies before
// main(). So the library never links sentencepiece. It loads
// libquantppl_sentencepiece.so (src/sentencepiece_shim.cpp, a C API) with
// RTLD_NOW | RTLD_LOCAL | RTLD_DEEPBIND, which keeps sentencepiece's symbols
// (and its protobuf) private to that module. The module is searched in order:
//   1. $QUANTPPL_SENTENCEPIECE_SHIM, if set (and then only there);
//   2. libquantppl_sentencepiece.so beside the running executable;
//   3. the path the build wrote into the library (QUANTPPL_SENTENCEPIECE_SHIM_PATH).
// The module is loaded once per process and never unloaded.
//
// encode() returns what Python's SentencePieceProcessor.encode(text) returns:
// piece ids with no EOS appended (T5's EOS is added by the caller, once per
// text; see text_windows.h).
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace quantppl {

// What a tokenizer may produce, bounded before it can exhaust memory (README
// "Limits"). sentencepiece normalizes its whole input before it segments
// it; a rule replacing one character by 8000 bytes made every call allocate
// 8000x its input. A model whose longest normalization output exceeds
// kMaxNormalizationBytes is refused when loaded, so one encode() call over
// text_windows.h's 64 KiB pieces normalizes at most 64 KiB * 64 = 4 MiB; an
// encode() giving more than kMaxPiecesPerByte ids per input byte (+ that many
// for the "▁" prefix) is a DataError.
constexpr size_t kMaxNormalizationBytes = 64;
constexpr long kMaxPiecesPerByte = 8;

class Tokenizer {
 public:
  // `serialized_model` is the bytes of a sentencepiece ModelProto (the
  // contract's tokenizer.model); `source_name` names it in error messages
  // ("model 'x.pt': tokenizer.model"). Throws DataError if the bytes are not a
  // sentencepiece model, exceed kMaxTokenizerBytes (input_file.h) or hold a
  // normalization rule longer than kMaxNormalizationBytes; IoError if the shim
  // module cannot be loaded.
  static Tokenizer from_bytes(std::string serialized_model, std::string source_name);
  // Reads a .model file (a regular file of at most kMaxTokenizerBytes:
  // input_file.h); IoError if it cannot be read.
  static Tokenizer from_file(const std::string& path);

  Tokenizer(Tokenizer&& other) noexcept;
  Tokenizer& operator=(Tokenizer&& other) noexcept;
  Tokenizer(const Tokenizer&) = delete;
  Tokenizer& operator=(const Tokenizer&) = delete;
  ~Tokenizer();

  // Sentencepiece ids of `text` (UTF-8), without EOS. DataError if
  // sentencepiece rejects the text.
  std::vector<int64_t> encode(std::string_view text) const;
  // Number of pieces in the sentencepiece model (ids are in [0, piece_count)).
  int64_t piece_count() const { return piece_count_; }
  // The piece string of `id` ("▁the"); for diagnostics and tests.
  std::string id_to_piece(int64_t id) const;
  // The serialized model this tokenizer was built from (written back by ContractModel::save).
  const std::string& serialized_model() const { return serialized_model_; }
  const std::string& source_name() const { return source_name_; }

 private:
  Tokenizer(void* handle, std::string serialized_model, std::string source_name, int64_t piece_count);

  void* handle_ = nullptr;  // owned shim handle (quantppl_spm_new / quantppl_spm_free)
  std::string serialized_model_;
  std::string source_name_;
  int64_t piece_count_ = 0;
};

// DataError naming both when `given` (a --tokenizer override) is not the
// tokenizer of the model whose own tokenizer is `own`: a different number of
// pieces, or a different piece string at any id. (Ids index the model's
// embedding: another vocabulary gives fluent-looking but meaningless numbers.)
// Only the normalization and other settings may differ.
void check_same_vocabulary(const Tokenizer& given, const Tokenizer& own);

// The path of the sentencepiece shim module that is (or would be) loaded;
// IoError naming every place searched if none loads.
std::string sentencepiece_shim_path();

}  // namespace quantppl
