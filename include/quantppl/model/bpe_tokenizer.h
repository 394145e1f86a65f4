// Byte-level BPE from a Hugging Face `tokenizer.json` (GPT-2, Qwen2, Llama-3 style), giving the
// ids the `tokenizers` library gives with encode(text, add_special_tokens=False). docs/tokenizers.md
// lists what is supported; anything else in the file is a DataError naming the feature.
//
// The pipeline, in the order `tokenizers` runs it:
//   1. added tokens: the text is cut at every occurrence of an added token's content (special or
//      not), leftmost-longest, honouring lstrip/rstrip/single_word; each occurrence is its id.
//      Tokens with normalized=false are matched in the raw text, those with normalized=true in
//      the normalized remainder.
//   2. normalizer (none, NFC/NFD/NFKC/NFKD via ICU, or a Sequence of them) on each remainder.
//   3. pre-tokenizers, each applied to every piece of the previous one: Split (a PCRE2 regex or a
//      literal string, with its behavior and invert flags) and ByteLevel (GPT-2's regex when
//      use_regex, an optional prefix space, then every byte b of a piece replaced by the
//      character byte_level_char(b)). ByteLevel must come last.
//   4. BPE on each piece ("word"): with ignore_merges, a word that is itself in the vocabulary is
//      that one id; otherwise the word starts as its characters and the adjacent pair with the
//      lowest merge rank (leftmost on ties) is merged until no pair has a rank.
//
// Bounds (docs/reliability.md): the file is at most kMaxTokenizerBytes (input_file.h) and
// duplicate-key-free JSON nested at most kMaxJsonDepth; the vocabulary and merges at most
// kMaxBpeVocab / kMaxBpeMerges entries; an added token at most kMaxAddedTokenBytes; a
// pre-tokenizer or normalizer chain at most 64 steps; regexes are run with PCRE2 match and depth
// limits per call and a matching budget per byte of text (kRegexStepsPerByte), and hitting one is
// a DataError, never a hang.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace quantppl {

// Qwen2's 151 646 and Gemma's 256 000 tokens are the largest in use; 8x headroom.
constexpr int64_t kMaxBpeVocab = int64_t{1} << 21;
constexpr int64_t kMaxBpeMerges = int64_t{1} << 21;
// Added tokens ("<|reserved_special_token_250|>") are tens of bytes; matching costs at most this
// many byte comparisons per text position.
constexpr size_t kMaxAddedTokenBytes = 256;
constexpr int64_t kMaxAddedTokens = int64_t{1} << 16;
// All added tokens' contents (as matched: normalized ones in their normalized form) together:
// each byte is a node of the matching trie (~64 bytes), so 2^16 tokens of 256 bytes would take
// ~1 GB from a 20 MB file. Llama-3's 256 special tokens total ~7 KB.
constexpr size_t kMaxAddedTokenTotalBytes = size_t{1} << 20;
// A pre-tokenizer regex is one line of alternatives (Llama-3's is 110 bytes).
constexpr size_t kMaxPreTokenizerPatternBytes = 4096;
// PCRE2 limits per match call: real patterns need tens of steps per character of a match.
constexpr uint32_t kRegexMatchLimit = 10'000'000;
constexpr uint32_t kRegexDepthLimit = 10'000;
// And per encode() call, a pre-tokenizer regex from the file may take kRegexMatchLimit matching
// steps plus this many per byte it scans (real patterns take ~1-3; an interpreted step is ~40 ns,
// so a hostile regex costs at most ~10 us per byte of text): beyond that, a DataError.
constexpr uint64_t kRegexStepsPerByte = 256;

// GPT-2's byte-to-unicode map (openai/gpt-2 encoder.py bytes_to_unicode): the printable bytes
// 33-126, 161-172 and 174-255 map to the code point of the same value; the other 68 bytes, in
// increasing order, to U+0100, U+0101, ... U+0143. So every byte becomes one printable character
// and no byte becomes whitespace. Returns the UTF-8 encoding of that character.
std::string byte_level_char(unsigned char byte);
// byte_level_char of every byte of `bytes`, concatenated.
std::string byte_level_encode(std::string_view bytes);

class BpeTokenizer {
 public:
  // Parses a tokenizer.json; `source_name` names it in every error ("model 'm.pt':
  // tokenizer.json"). DataError for malformed or unsupported content, naming the field.
  static BpeTokenizer from_json(std::string_view json_text, const std::string& source_name);

  BpeTokenizer(BpeTokenizer&&) noexcept;
  BpeTokenizer& operator=(BpeTokenizer&&) noexcept;
  BpeTokenizer(const BpeTokenizer&) = delete;
  BpeTokenizer& operator=(const BpeTokenizer&) = delete;
  ~BpeTokenizer();

  // The ids of `text` (UTF-8), without the post-processor's special tokens: what
  // tokenizers.Tokenizer.encode(text, add_special_tokens=False).ids gives. DataError for text that
  // is not valid UTF-8 or on which a pre-tokenizer regex hits a PCRE2 limit. Thread-safe.
  std::vector<int64_t> encode(std::string_view text) const;

  // One more than the largest id of the vocabulary and the added tokens: ids are in [0, this).
  int64_t vocab_size() const;
  // The token string of `id` in the byte-level alphabet ("Ġthe") or an added token's content;
  // "" for an id in range that no token has.
  std::string id_to_token(int64_t id) const;
  std::optional<int64_t> token_to_id(std::string_view token) const;
  // The rank of merging `left` + `right` (byte-level strings), or nullopt if there is no such merge.
  std::optional<int64_t> merge_rank(std::string_view left, std::string_view right) const;
  // The id of the special token a TemplateProcessing post-processor puts before a single
  // sequence (Llama-3's <|begin_of_text|>), or nullopt when it adds none (GPT-2, Qwen2). What
  // tokenizers' encode(add_special_tokens=True) prepends; quantppl itself adds BOS per the
  // contract's metadata, never from here.
  std::optional<int64_t> post_processor_bos_id() const;
  bool ignore_merges() const;
  const std::string& source_name() const;

 private:
  struct Impl;
  explicit BpeTokenizer(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace quantppl
