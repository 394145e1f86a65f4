// The evaluation text: read, validated, tokenized, cut into windows.
//
// Tokens (T5): the sentencepiece ids of the whole text followed by ONE eos id
// (T5 appends EOS to every text; the text is one document). A causal model's
// stream is the ids alone (its BOS is added per window by
// eval/causal_windows.h). With --tokens FILE (read_token_file) the file's ids
// take the place of the tokenizer's output (EOS is still appended for T5).
// The T5 stream is cut
// into consecutive, non-overlapping windows of max_length tokens; the last
// window holds the remainder (1..max_length tokens). Every token is in
// exactly one window.
//
// Large texts are encoded piece by piece, never as one string: sentencepiece
// builds a lattice over its whole input, and its memory grows faster than the
// input (measured on the test fixture's tokenizer: +48 MB for a 1 MB line,
// +357 MB for a 4 MB line; a 30 MB line would need gigabytes). The rule:
//   - a piece is one line, up to and including its '\n';
//   - a line longer than 64 KiB (kMaxPieceBytes) is cut into pieces of at most
//     64 KiB, each ending at the last whitespace byte before the limit, or,
//     with no whitespace in those 64 KiB, at the last UTF-8 character
//     boundary (never inside a multi-byte sequence).
// So tokenizing needs O(64 KiB) of sentencepiece memory whatever the text;
// what grows with the text is the text itself and its ids (8 bytes a token).
// See tokenize_text() in text_windows.cpp for why the ids can differ slightly
// from encoding the text in one call.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "quantppl/input_file.h"
#include "quantppl/tokenizer.h"

namespace quantppl {

struct EvalText {
  std::string source;  // path as given, or "<stdin>"
  std::string sha256;  // of the raw bytes
  int64_t bytes = 0;
  std::vector<int64_t> token_ids;                // EOS included
  std::vector<std::vector<int64_t>> windows;     // consecutive cuts of token_ids
};

// Reads a whole file, or standard input for "-", through read_input_file
// (input_file.h): at most kMaxTextBytes (64 MiB), a regular file (or any
// standard input). IoError if it is missing, not a regular file or
// unreadable; DataError if it is too large, or, as soon as the block holding
// it is read, at a NUL byte or invalid UTF-8 (validate_text's messages).
std::string read_text_file(const std::string& path);

// DataError (naming `source_name`) for empty or whitespace-only text, a NUL
// byte (binary data), or invalid UTF-8 (with the byte offset of the first
// bad byte).
void validate_text(std::string_view text, const std::string& source_name);

// Sentencepiece ids of `text`, followed by `eos_id` once.
std::vector<int64_t> tokenize_text(const Tokenizer& tokenizer, std::string_view text, int64_t eos_id);
// The same ids without EOS (the causal stream).
std::vector<int64_t> encode_text(const Tokenizer& tokenizer, std::string_view text);

// --tokens FILE: a JSON array of token ids, at most kMaxTokenFileBytes (16 MiB
// holds ~3 M ids of 5 digits; nlohmann holds each element in 16 bytes, so at
// most ~130 MB while parsing), read
// through input_file.h ("-" is standard input) and json_input.h (depth
// limit, DataError naming the file and the element: "--tokens file 't.json':
// field '[3]' must be in [0, 384), got 999"). Every element an integer in
// [0, vocab_size); at least one.
constexpr int64_t kMaxTokenFileBytes = int64_t{16} << 20;
inline constexpr InputKind kTokenFileInput{"--tokens file", kMaxTokenFileBytes, true};
// The ids, and in `text` the file's source/sha256/bytes (token_ids filled, windows empty).
EvalText read_token_file(const std::string& path, int64_t vocab_size);

// Consecutive windows of at most `max_length` tokens (UsageError if < 1).
std::vector<std::vector<int64_t>> cut_windows(const std::vector<int64_t>& token_ids, int64_t max_length);

// read_text_file + validate_text + sha256 + encode_text: the text's ids
// without EOS (windows empty). DataError naming the file if the text gives
// no token at all.
EvalText load_eval_ids(const std::string& path, const Tokenizer& tokenizer);

// read_text_file + validate_text + sha256 + tokenize_text + cut_windows.
// DataError naming the file if the text gives no token at all (only EOS):
// e.g. a file of control characters, which sentencepiece drops.
EvalText load_eval_text(const std::string& path, const Tokenizer& tokenizer, int64_t eos_id, int64_t max_length);

}  // namespace quantppl
