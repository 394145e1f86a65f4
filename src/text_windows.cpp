#include "quantppl/text_windows.h"

#include <sys/stat.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <memory>

#include "quantppl/error.h"
#include "quantppl/input_file.h"
#include "quantppl/json_input.h"
#include "quantppl/sha256.h"

namespace quantppl {
namespace {

// Pieces handed to sentencepiece are at most this long: its lattice costs a
// few hundred bytes per input byte, so 64 KiB keeps it in the tens of MB.
constexpr size_t kMaxPieceBytes = 64 * 1024;

bool is_space(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f'; }
bool is_continuation(unsigned char c) { return (c & 0xC0) == 0x80; }

// The byte offset of the first byte that does not start a well-formed UTF-8
// sequence (RFC 3629: no overlong forms, no surrogates, nothing above
// U+10FFFF), or npos.
size_t first_invalid_utf8(std::string_view s) {
  const auto* p = reinterpret_cast<const unsigned char*>(s.data());
  const size_t n = s.size();
  size_t i = 0;
  while (i < n) {
    const unsigned char c = p[i];
    if (c < 0x80) {
      ++i;
      continue;
    }
    size_t len;
    unsigned char lo = 0x80, hi = 0xBF;  // allowed range of the second byte
    if (c >= 0xC2 && c <= 0xDF) {
      len = 2;
    } else if (c >= 0xE0 && c <= 0xEF) {
      len = 3;
      if (c == 0xE0) lo = 0xA0;  // overlong
      if (c == 0xED) hi = 0x9F;  // surrogates
    } else if (c >= 0xF0 && c <= 0xF4) {
      len = 4;
      if (c == 0xF0) lo = 0x90;  // overlong
      if (c == 0xF4) hi = 0x8F;  // above U+10FFFF
    } else {
      return i;
    }
    if (i + len > n || p[i + 1] < lo || p[i + 1] > hi) return i;
    for (size_t k = 2; k < len; ++k) {
      if (!is_continuation(p[i + k])) return i;
    }
    i += len;
  }
  return std::string_view::npos;
}

[[noreturn]] void throw_nul(const std::string& source_name, size_t offset) {
  throw DataError("text " + source_name + " contains a NUL byte at byte offset " + std::to_string(offset) +
                  ": binary data, expected UTF-8 text");
}

[[noreturn]] void throw_invalid_utf8(const std::string& source_name, size_t offset) {
  throw DataError("text " + source_name + " is not valid UTF-8 at byte offset " + std::to_string(offset));
}

void append(std::vector<int64_t>& out, const std::vector<int64_t>& ids) { out.insert(out.end(), ids.begin(), ids.end()); }

}  // namespace

std::string read_text_file(const std::string& path) {
  const std::string name = input_display_name(path, kTextInput);
  // Streaming validation: each block is checked as it arrives, up to the last complete UTF-8
  // character (a sequence cut by the block boundary is checked with the next block), so binary
  // input fails at its first bad byte instead of after kMaxTextBytes.
  size_t checked = 0;
  std::string text = read_input_file(path, kTextInput, [&](std::string_view data, size_t new_from) {
    if (const size_t nul = data.find('\0', new_from); nul != std::string_view::npos) throw_nul(name, nul);
    size_t end = data.size();
    for (size_t back = 0; back < 3 && end > checked && is_continuation(static_cast<unsigned char>(data[end - 1])); ++back) --end;
    if (end > checked && static_cast<unsigned char>(data[end - 1]) >= 0xC0) --end;  // a lead byte whose sequence may go on
    if (end > checked) {
      if (const size_t bad = first_invalid_utf8(data.substr(checked, end - checked)); bad != std::string_view::npos) {
        throw_invalid_utf8(name, checked + bad);
      }
      checked = end;
    }
  });
  // The tail the blocks left unchecked (a sequence that might have continued).
  if (const size_t bad = first_invalid_utf8(std::string_view(text).substr(checked)); bad != std::string_view::npos) {
    throw_invalid_utf8(name, checked + bad);
  }
  return text;
}

void validate_text(std::string_view text, const std::string& source_name) {
  if (text.empty()) throw DataError("text " + source_name + " is empty");
  if (const size_t nul = text.find('\0'); nul != std::string_view::npos) throw_nul(source_name, nul);
  if (const size_t bad = first_invalid_utf8(text); bad != std::string_view::npos) throw_invalid_utf8(source_name, bad);
  bool blank = true;
  for (const char c : text) blank = blank && is_space(c);
  if (blank) throw DataError("text " + source_name + " contains only whitespace");
}

// Encoding piece by piece. A piece is a line (up to '\n'); a line longer than
// kMaxPieceBytes is cut at the last whitespace before the limit (or, with no
// whitespace there, at the last UTF-8 character boundary).
//
// Why the ids can differ slightly from encoding the whole text at once:
// sentencepiece starts every input with the word-boundary marker "▁" and
// treats whitespace (newlines included, after normalisation) as "▁" too, and
// by default never builds a piece across a "▁". So cutting at whitespace
// usually reproduces the one-call ids exactly; what can differ is (a) the
// normaliser's view across a cut (whitespace collapsing, a rule spanning the
// cut), (b) a line starting with spaces, which in one call would be merged
// into the previous line's whitespace run, and (c) a forced cut inside a word
// (no whitespace within 64 KiB), where the two halves become two words.
// The cost of ignoring this is a handful of tokens in texts of thousands;
// the alternative, one call over a large text, can exhaust memory, and is not
// even the better segmentation: beyond ~128 KiB in one call sentencepiece's
// own result degrades (measured with the test fixture's model on a 300 KB
// line: 0.09% more pieces than word by word, "▁a" "t" where "▁at" fits).
std::vector<int64_t> tokenize_text(const Tokenizer& tokenizer, std::string_view text, int64_t eos_id) {
  std::vector<int64_t> ids = encode_text(tokenizer, text);
  ids.push_back(eos_id);
  return ids;
}

std::vector<int64_t> encode_text(const Tokenizer& tokenizer, std::string_view text) {
  // Byte-level BPE (model/bpe_tokenizer.h) streams its pre-tokenization in
  // linear time and bounded memory, so the whole text is one call: cutting at
  // newlines would change ids where a whitespace run crosses a newline
  // ("a\n\nb"), which Hugging Face tokenizers encode as one pre-token.
  if (tokenizer.kind() == TokenizerKind::kBpe) return tokenizer.encode(text);
  std::vector<int64_t> ids;
  ids.reserve(text.size() / 3 + 1);
  size_t pos = 0;
  while (pos < text.size()) {
    size_t end = text.find('\n', pos);
    end = end == std::string_view::npos ? text.size() : end + 1;
    if (end - pos > kMaxPieceBytes) {
      end = pos + kMaxPieceBytes;
      size_t cut = end;
      while (cut > pos && !is_space(text[cut - 1])) --cut;
      if (cut == pos) {  // no whitespace: stay on a character boundary
        cut = end;
        while (cut > pos && is_continuation(static_cast<unsigned char>(text[cut]))) --cut;
      }
      end = cut;
    }
    append(ids, tokenizer.encode(text.substr(pos, end - pos)));
    pos = end;
  }
  return ids;
}

EvalText read_token_file(const std::string& path, int64_t vocab_size) {
  const std::string name = input_display_name(path, kTokenFileInput);
  const ActivityScope activity("reading --tokens file " + name);
  EvalText out;
  out.source = path == "-" ? "<stdin>" : path;
  const std::string bytes = read_input_file(path, kTokenFileInput);
  out.sha256 = sha256(bytes);
  out.bytes = static_cast<int64_t>(bytes.size());
  const std::string source = std::string(kTokenFileInput.what) + " " + name;
  const nlohmann::json j = parse_json(bytes, source);
  const JsonReader r(source);
  if (!j.is_array()) throw DataError(source + ": expected a JSON array of token ids, got " + JsonReader::shown(j));
  if (j.empty()) throw DataError(source + ": the array of token ids is empty");
  out.token_ids.reserve(j.size());
  for (size_t i = 0; i < j.size(); ++i) {
    // Built piecewise: `"[" + std::to_string(i)` trips GCC 12's -Wstringop-overflow under C++20 (a false positive).
    std::string field = "[";
    field += std::to_string(i);
    field += ']';
    out.token_ids.push_back(r.integer_value(j[i], field, 0, vocab_size - 1));
  }
  return out;
}

std::vector<std::vector<int64_t>> cut_windows(const std::vector<int64_t>& token_ids, int64_t max_length) {
  if (max_length < 1) throw UsageError("window length must be >= 1, got " + std::to_string(max_length));
  std::vector<std::vector<int64_t>> windows;
  const auto step = static_cast<size_t>(max_length);
  for (size_t begin = 0; begin < token_ids.size(); begin += step) {
    const size_t end = std::min(token_ids.size(), begin + step);
    windows.emplace_back(token_ids.begin() + static_cast<std::ptrdiff_t>(begin),
                         token_ids.begin() + static_cast<std::ptrdiff_t>(end));
  }
  return windows;
}

EvalText load_eval_ids(const std::string& path, const Tokenizer& tokenizer) {
  const ActivityScope activity("reading and tokenizing text " + input_display_name(path, kTextInput));
  EvalText out;
  out.source = path == "-" ? "<stdin>" : path;
  const std::string text = read_text_file(path);
  validate_text(text, path == "-" ? "<stdin>" : "'" + path + "'");
  out.sha256 = sha256(text);
  out.bytes = static_cast<int64_t>(text.size());
  out.token_ids = encode_text(tokenizer, text);
  if (out.token_ids.empty()) {  // nothing of the text itself to predict or to condition on
    throw DataError("text " + (path == "-" ? std::string("<stdin>") : "'" + path + "'") +
                    " gives no token: the tokenizer drops every character in it (control or format "
                    "characters such as U+0001 or U+200B), expected text with words");
  }
  return out;
}

EvalText load_eval_text(const std::string& path, const Tokenizer& tokenizer, int64_t eos_id, int64_t max_length) {
  EvalText out = load_eval_ids(path, tokenizer);
  out.token_ids.push_back(eos_id);
  out.windows = cut_windows(out.token_ids, max_length);
  return out;
}

}  // namespace quantppl
