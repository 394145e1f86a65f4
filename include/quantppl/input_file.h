// Reading an input file other than the model archive (the text, a tokenizer,
// a --check file) with its size bounded before anything is allocated.
//
// Each kind of input has a stated maximum (README "Limits",
// docs/reliability.md). A named input must be a regular file: a directory, a
// character device (/dev/zero, /dev/urandom), a FIFO or a socket is refused
// before it is read, since it could deliver unbounded data or block forever
// (a FIFO is opened with O_NONBLOCK, so even opening it cannot hang). A
// regular file larger than the maximum is refused from its size. Standard
// input ("-", where the kind allows it) can be anything, so it is read up to
// the maximum and refused one byte beyond it. `check_block`, if given, sees
// the data as it arrives (the text's streaming validation: /dev/zero on
// standard input fails at its first NUL, not after the maximum).
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <string_view>

namespace quantppl {

// ~16 M tokens of English at ~4 bytes a token: hours of evaluation per variant
// already, and with the token ids and batches (~41 bytes a token) about
// 0.7 GB of memory.
constexpr int64_t kMaxTextBytes = int64_t{64} << 20;
// Real sentencepiece models are 0.2-5 MB (T5's 0.8 MB, mT5's 4.3 MB).
constexpr int64_t kMaxTokenizerBytes = int64_t{64} << 20;
// A --check file lists a few variants; a compare JSON with every field is kilobytes.
constexpr int64_t kMaxCheckFileBytes = int64_t{16} << 20;

struct InputKind {
  const char* what;        // "text", "tokenizer", "--check file": the first word of every message
  int64_t max_bytes;       // the stated maximum
  bool allow_stdin;        // "-" means standard input
};
inline constexpr InputKind kTextInput{"text", kMaxTextBytes, true};
inline constexpr InputKind kTokenizerInput{"tokenizer", kMaxTokenizerBytes, false};
inline constexpr InputKind kCheckFileInput{"--check file", kMaxCheckFileBytes, false};

// "<stdin>" for "-" (where allowed), else "'path'": how messages name the input.
std::string input_display_name(const std::string& path, const InputKind& kind);

// The whole input. IoError (naming the kind and the path) if it is missing,
// unreadable or not a regular file; DataError if it exceeds kind.max_bytes
// (stating the maximum). `check_block(data, new_from)` is called after each
// block is appended, with everything read so far and the offset where the new
// bytes begin; it may throw.
std::string read_input_file(const std::string& path, const InputKind& kind,
                            const std::function<void(std::string_view data, size_t new_from)>& check_block = {});

}  // namespace quantppl
