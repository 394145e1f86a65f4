// The tokenizer of a contract model (docs/model-contract.md, docs/tokenizers.md): one object
// whatever its kind, sentencepiece (tokenizer.model) or byte-level BPE (a Hugging Face
// tokenizer.json, model/bpe_tokenizer.h). The rest of this comment is about sentencepiece; a BPE
// tokenizer is plain C++ in the library and needs no module.
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
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace quantppl {

class BpeTokenizer;

// The contract's tokenizer kinds (quantppl.json "tokenizer": {"kind", "file"}).
enum class TokenizerKind { kSentencePiece, kBpe };
// "sentencepiece" / "bpe": the spelling in quantppl.json.
const char* tokenizer_kind_name(TokenizerKind kind);
// The inverse; nullopt for any other string.
std::optional<TokenizerKind> parse_tokenizer_kind(std::string_view name);
// The archive member a kind is stored as by default: "tokenizer.model" / "tokenizer.json".
const char* default_tokenizer_file(TokenizerKind kind);

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
  // A tokenizer of either kind from its file's bytes: sentencepiece as above, or a BPE
  // tokenizer.json (BpeTokenizer::from_json: DataError naming any unsupported feature).
  static Tokenizer from_bytes(TokenizerKind kind, std::string serialized_model, std::string source_name);
  // Reads a tokenizer file (a regular file of at most kMaxTokenizerBytes:
  // input_file.h); IoError if it cannot be read. The kind comes from the
  // content: a JSON object (first non-blank byte '{', which no sentencepiece
  // model starts with) is a tokenizer.json, anything else a sentencepiece model.
  static Tokenizer from_file(const std::string& path);
  static Tokenizer from_file(TokenizerKind kind, const std::string& path);

  Tokenizer(Tokenizer&& other) noexcept;
  Tokenizer& operator=(Tokenizer&& other) noexcept;
  Tokenizer(const Tokenizer&) = delete;
  Tokenizer& operator=(const Tokenizer&) = delete;
  ~Tokenizer();

  // The ids of `text` (UTF-8), without EOS, BOS or any post-processor token:
  // sentencepiece's encode(text), tokenizers' encode(text,
  // add_special_tokens=False). DataError if the tokenizer rejects the text.
  // A BPE tokenizer is exact on the whole text in one call, in linear time
  // (a text cut into pieces may tokenize differently at the cuts).
  std::vector<int64_t> encode(std::string_view text) const;
  // Number of pieces (ids are in [0, piece_count)); for BPE one more than the
  // largest id of the vocabulary and added tokens.
  int64_t piece_count() const { return piece_count_; }
  // The piece string of `id` ("▁the"; BPE: "Ġthe" in the byte-level
  // alphabet, or an added token's content, "" for an id no token has); for
  // diagnostics and tests.
  std::string id_to_piece(int64_t id) const;
  TokenizerKind kind() const { return kind_; }
  // The BPE tokenizer (its post_processor_bos_id(), token_to_id()...); nullptr for sentencepiece.
  const BpeTokenizer* bpe() const { return bpe_.get(); }
  // The serialized model this tokenizer was built from (written back by ContractModel::save).
  const std::string& serialized_model() const { return serialized_model_; }
  const std::string& source_name() const { return source_name_; }

 private:
  Tokenizer(void* handle, std::string serialized_model, std::string source_name, int64_t piece_count);

  TokenizerKind kind_ = TokenizerKind::kSentencePiece;
  void* handle_ = nullptr;  // owned shim handle (quantppl_spm_new / quantppl_spm_free)
  std::unique_ptr<BpeTokenizer> bpe_;  // kind_ == kBpe
  std::string serialized_model_;
  std::string source_name_;
  int64_t piece_count_ = 0;
};

// DataError naming both when `given` (a --tokenizer override) is not the
// tokenizer of the model whose own tokenizer is `own`: another kind, a different number of
// pieces, or a different piece string at any id. (Ids index the model's
// embedding: another vocabulary gives fluent-looking but meaningless numbers.)
// Only the normalization and other settings may differ.
void check_same_vocabulary(const Tokenizer& given, const Tokenizer& own);

// The path of the sentencepiece shim module that is (or would be) loaded;
// IoError naming every place searched if none loads.
std::string sentencepiece_shim_path();

}  // namespace quantppl
