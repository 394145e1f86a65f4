#include "quantppl/model/bpe_tokenizer.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>
#include <unicode/uchar.h>
#include <unicode/unorm2.h>
#include <unicode/ustring.h>

#include <algorithm>
#include <array>
#include <functional>
#include <queue>
#include <unordered_map>
#include <unordered_set>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "quantppl/error.h"
#include "quantppl/input_file.h"
#include "quantppl/json_input.h"

namespace quantppl {
namespace {

using nlohmann::json;

// ---- UTF-8 ----

// The code point starting at s[i] and its length in bytes; s must be valid UTF-8.
char32_t decode_at(std::string_view s, size_t i, size_t& len) {
  const auto b = [&](size_t k) { return static_cast<unsigned char>(s[i + k]); };
  const unsigned char c = b(0);
  if (c < 0x80) { len = 1; return c; }
  if (c < 0xE0) { len = 2; return (char32_t(c & 0x1F) << 6) | (b(1) & 0x3F); }
  if (c < 0xF0) { len = 3; return (char32_t(c & 0x0F) << 12) | (char32_t(b(1) & 0x3F) << 6) | (b(2) & 0x3F); }
  len = 4;
  return (char32_t(c & 0x07) << 18) | (char32_t(b(1) & 0x3F) << 12) | (char32_t(b(2) & 0x3F) << 6) | (b(3) & 0x3F);
}

// The code point ending at s[end - 1].
char32_t decode_before(std::string_view s, size_t end, size_t& len) {
  size_t start = end - 1;
  while (start > 0 && (static_cast<unsigned char>(s[start]) & 0xC0) == 0x80) --start;
  return decode_at(s, start, len);
}

// The offset of the first byte that does not start a well-formed UTF-8 sequence (Unicode's
// definition, as Rust's str: no overlong forms, no surrogates, nothing above U+10FFFF), or npos.
size_t first_invalid_utf8(std::string_view s) {
  size_t i = 0;
  const size_t n = s.size();
  while (i < n) {
    const auto c = static_cast<unsigned char>(s[i]);
    if (c < 0x80) { ++i; continue; }
    size_t len = 0;
    unsigned char lo = 0x80, hi = 0xBF;
    if (c >= 0xC2 && c <= 0xDF) len = 2;
    else if (c == 0xE0) { len = 3; lo = 0xA0; }
    else if (c == 0xED) { len = 3; hi = 0x9F; }
    else if (c >= 0xE1 && c <= 0xEF) len = 3;
    else if (c == 0xF0) { len = 4; lo = 0x90; }
    else if (c == 0xF4) { len = 4; hi = 0x8F; }
    else if (c >= 0xF1 && c <= 0xF3) len = 4;
    else return i;
    if (n - i < len) return i;
    const auto c1 = static_cast<unsigned char>(s[i + 1]);
    if (c1 < lo || c1 > hi) return i;
    for (size_t k = 2; k < len; ++k) {
      if ((static_cast<unsigned char>(s[i + k]) & 0xC0) != 0x80) return i;
    }
    i += len;
  }
  return std::string_view::npos;
}

// Unicode's White_Space property (PropList.txt), which Rust's char::is_whitespace tests: what
// tokenizers' lstrip/rstrip strip.
bool is_white_space(char32_t c) {
  return (c >= 0x09 && c <= 0x0D) || c == 0x20 || c == 0x85 || c == 0xA0 || c == 0x1680 ||
         (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 || c == 0x202F || c == 0x205F ||
         c == 0x3000;
}

// Rust's char::is_alphanumeric (Alphabetic or a numeric general category) or '_': tokenizers'
// notion of a word character for single_word.
bool is_word_char(char32_t c) {
  if (c == U'_') return true;
  if (u_hasBinaryProperty(static_cast<UChar32>(c), UCHAR_ALPHABETIC)) return true;
  const int8_t t = u_charType(static_cast<UChar32>(c));
  return t == U_DECIMAL_DIGIT_NUMBER || t == U_LETTER_NUMBER || t == U_OTHER_NUMBER;
}

std::string utf8_of(char32_t c) {
  std::string out;
  if (c < 0x80) {
    out += static_cast<char>(c);
  } else if (c < 0x800) {
    out += static_cast<char>(0xC0 | (c >> 6));
    out += static_cast<char>(0x80 | (c & 0x3F));
  } else {
    out += static_cast<char>(0xE0 | (c >> 12));
    out += static_cast<char>(0x80 | ((c >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (c & 0x3F));
  }
  return out;
}

const std::array<std::string, 256>& byte_level_table() {
  static const std::array<std::string, 256> table = [] {
    std::array<std::string, 256> t;
    char32_t next_free = 0x100;
    for (int b = 0; b < 256; ++b) {
      const bool printable = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174 && b <= 255);
      t[static_cast<size_t>(b)] = utf8_of(printable ? static_cast<char32_t>(b) : next_free++);
    }
    return t;
  }();
  return table;
}

constexpr size_t kMaxCachedWords = 1 << 16;
// A pre-tokenizer chain is a few steps; each step is a level of recursion in pre_tokenize, and
// each Split or ByteLevel step a compiled regex: counted while parsing, so a
// file of a million steps fails at the 65th, not after compiling them all.
constexpr size_t kMaxPreTokenizerSteps = 64;
// A normalizer chain likewise: every step is a pass over the whole text.
constexpr size_t kMaxNormalizerSteps = 64;

// GPT-2's pre-tokenizer regex, the one tokenizers' ByteLevel(use_regex=true) applies.
constexpr const char* kGpt2Pattern =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";

// ---- JSON with duplicate keys refused ----

json parse_tokenizer_json(std::string_view text, const std::string& source) {
  // nlohmann keeps the last of duplicate keys silently; a vocabulary with "the" twice would then
  // lose a token without a word. One set of keys per open object.
  std::vector<std::unordered_set<std::string>> keys;
  const json::parser_callback_t callback = [&](int depth, json::parse_event_t event, json& parsed) {
    if (depth > kMaxJsonDepth) {
      throw DataError(fmt::format("{}: not valid JSON: arrays/objects nested deeper than {} levels", source,
                                  kMaxJsonDepth));
    }
    switch (event) {
      case json::parse_event_t::object_start:
        keys.emplace_back();
        break;
      case json::parse_event_t::object_end:
        if (!keys.empty()) keys.pop_back();
        break;
      case json::parse_event_t::key:
        if (!keys.empty() && !keys.back().insert(parsed.get<std::string>()).second) {
          throw DataError(fmt::format("{}: duplicate key {} in a JSON object (tokens must be unique)", source,
                                      JsonReader::shown(parsed)));
        }
        break;
      default:
        break;
    }
    return true;
  };
  try {
    return json::parse(text.begin(), text.end(), callback);
  } catch (const json::exception& e) {
    const std::string what = e.what();
    throw DataError(source + ": not valid JSON: " + what.substr(0, what.find('\n')));
  }
}

// ---- PCRE2 ----

struct CodeDeleter {
  void operator()(pcre2_code* code) const { pcre2_code_free(code); }
};

struct Regex {
  std::shared_ptr<pcre2_code> code;
  std::string pattern;  // as given, for messages
};

// What a regex may cost per encode() call. PCRE2's interpreter counts backtracking points per
// start position it tries (the match limit), so a call with limit L that tried P positions did at
// most L x P steps. Calls run with kFirstMatchLimit, which real patterns never reach (GPT-2's and
// Llama-3's take at most ~18 steps a call on English, ~2 per byte), charged L x P against a
// budget that grows by kRegexStepsPerByte for every byte a regex step scans; a position that
// needs more (a long whitespace run before a lookahead) gets a limit quadrupled as needed. So a
// regex that backtracks at every position within the per-call limit ((a|a) 22 times then b|.:
// 2^23 steps at each a) fails after ~kRegexStepsPerByte steps per byte instead of running for days.
// The JIT runs only quantppl's own GPT-2 pattern and literals: its match limit does not count
// backtracking into plain alternatives, and (a|a) 32 times then b|. took 59 s on 33 a's in it
// (doubling with each further group). The interpreter is ~1.7x slower on Llama-3's pattern.
constexpr uint64_t kFirstMatchLimit = 32;

std::string pcre2_message(int code) {
  std::array<PCRE2_UCHAR, 256> buffer{};
  pcre2_get_error_message(code, buffer.data(), buffer.size());
  return reinterpret_cast<const char*>(buffer.data());
}

// UTF + UCP: \p{L}, \p{N}, \s and case folding follow Unicode, as in Oniguruma (which tokenizers
// uses). MULTILINE: Oniguruma's Ruby syntax makes ^ and $ match at line boundaries.
// `trusted`: quantppl's own GPT-2 pattern, JIT-compiled (it is linear on any text); a file's Regex
// runs in the interpreter, where the match limit bounds it (kFirstMatchLimit above).
Regex compile_regex(const std::string& pattern, bool literal, bool trusted, const std::string& source,
                    const std::string& field) {
  if (pattern.empty()) throw DataError(fmt::format("{}: field '{}' is an empty pattern", source, field));
  if (pattern.size() > kMaxPreTokenizerPatternBytes) {
    throw DataError(fmt::format("{}: field '{}' is a {}-byte pattern, more than the {} allowed", source, field,
                                pattern.size(), kMaxPreTokenizerPatternBytes));
  }
  int error = 0;
  PCRE2_SIZE offset = 0;
  // (PCRE2_LITERAL allows no other option than UTF.)
  const uint32_t options = literal ? PCRE2_UTF | PCRE2_LITERAL
                                   : PCRE2_UTF | PCRE2_UCP | PCRE2_MULTILINE | PCRE2_NEVER_BACKSLASH_C;
  pcre2_code* code = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(pattern.data()), pattern.size(), options, &error,
                                   &offset, nullptr);
  if (code == nullptr) {
    throw DataError(fmt::format("{}: field '{}': PCRE2 rejects the regex {} at offset {}: {}", source, field,
                                JsonReader::shown(json(pattern)), offset, pcre2_message(error)));
  }
  // JIT where the platform has it; the interpreter gives the same matches otherwise. A literal
  // cannot backtrack.
  if (trusted || literal) pcre2_jit_compile(code, PCRE2_JIT_COMPLETE);
  return Regex{std::shared_ptr<pcre2_code>(code, CodeDeleter{}), pattern};
}

// Per encode() call: PCRE2's match data, limits and JIT stack are not shareable across threads.
class Matcher {
 public:
  Matcher() {
    context_ = pcre2_match_context_create(nullptr);
    data_ = pcre2_match_data_create(4, nullptr);
    stack_ = pcre2_jit_stack_create(32 * 1024, 1024 * 1024, nullptr);
    if (context_ == nullptr || data_ == nullptr) {
      release();
      throw std::bad_alloc();
    }
    pcre2_set_match_limit(context_, kRegexMatchLimit);
    pcre2_set_depth_limit(context_, kRegexDepthLimit);
    if (stack_ != nullptr) pcre2_jit_stack_assign(context_, nullptr, stack_);
  }
  ~Matcher() { release(); }
  Matcher(const Matcher&) = delete;
  Matcher& operator=(const Matcher&) = delete;

  // tokenizers' Pattern::find_matches for a regex, streamed: `piece(begin, end, is_match)` for
  // each piece of `text` in order, matches non-overlapping left to right and the gaps between
  // them as non-matches. Empty matches are skipped (tokenizers drops empty pieces). `piece` may
  // itself use this Matcher: nothing is read from the match data after it is called.
  template <typename Piece>
  void for_each_piece(const Regex& re, std::string_view text, const std::string& source, Piece&& piece) {
    budget_ += kRegexStepsPerByte * (text.size() + 1);
    size_t prev = 0;
    size_t start = 0;
    while (start <= text.size()) {
      const int rc = match(re, text, start, source);
      if (rc == PCRE2_ERROR_NOMATCH) break;
      const PCRE2_SIZE* ovector = pcre2_get_ovector_pointer(data_);
      const size_t begin = ovector[0], end = ovector[1];
      if (end < begin || begin < start) {  // \K can do this
        throw DataError(fmt::format("{}: the pre-tokenizer regex {} gives a match ending before its start "
                                    "(\\K is not supported)",
                                    source, JsonReader::shown(json(re.pattern))));
      }
      if (end == begin) {
        if (begin >= text.size()) break;
        size_t len = 1;
        decode_at(text, begin, len);
        start = begin + len;
        continue;
      }
      if (prev != begin) piece(prev, begin, false);
      piece(begin, end, true);
      prev = start = end;
    }
    if (prev != text.size()) piece(prev, text.size(), false);
  }

 private:
  // The leftmost match from `start` (pcre2_match's result: >= 0, or NOMATCH) within the budget
  // (kFirstMatchLimit). First one call in which every start position may take kFirstMatchLimit
  // steps, charged that many per position it tried; if some position needs more, the positions
  // from `start` are tried one at a time (anchored: the same match at each, so the same leftmost
  // one), each with a limit quadrupled as needed and charged what it was allowed.
  int match(const Regex& re, std::string_view text, size_t start, const std::string& source) {
    int rc = run(re, text, start, 0, kFirstMatchLimit);
    if (rc != PCRE2_ERROR_MATCHLIMIT) {
      if (rc < 0 && rc != PCRE2_ERROR_NOMATCH) throw fails(re, start, source, pcre2_message(rc));
      size_t end = text.size();
      if (rc >= 0) end = std::clamp<size_t>(pcre2_get_ovector_pointer(data_)[0], start, text.size());
      charge(kFirstMatchLimit * (end - start + 1), re, start, source);
      return rc;
    }
    for (size_t pos = start;;) {
      charge(kFirstMatchLimit, re, pos, source);  // what the first call may have spent here
      for (uint64_t limit = kFirstMatchLimit;; limit *= 4) {
        const uint64_t allowed = std::min({limit, uint64_t{kRegexMatchLimit}, budget_});
        charge(allowed, re, pos, source);
        rc = run(re, text, pos, PCRE2_ANCHORED, allowed);
        if (rc != PCRE2_ERROR_MATCHLIMIT) break;
        if (allowed == kRegexMatchLimit) throw fails(re, pos, source, pcre2_message(rc));
        if (allowed < limit) throw fails(re, pos, source, over_budget());
      }
      if (rc >= 0) return rc;
      if (rc != PCRE2_ERROR_NOMATCH) throw fails(re, pos, source, pcre2_message(rc));
      if (pos >= text.size()) return rc;
      size_t len = 1;
      decode_at(text, pos, len);
      pos += len;
    }
  }
  int run(const Regex& re, std::string_view text, size_t start, uint32_t options, uint64_t limit) {
    pcre2_set_match_limit(context_, static_cast<uint32_t>(limit));
    return pcre2_match(re.code.get(), reinterpret_cast<PCRE2_SPTR>(text.data()), text.size(), start,
                       options | PCRE2_NO_UTF_CHECK, data_, context_);
  }
  void charge(uint64_t steps, const Regex& re, size_t at, const std::string& source) {
    if (steps > budget_ || steps == 0) throw fails(re, at, source, over_budget());
    budget_ -= steps;
  }
  static std::string over_budget() {
    return fmt::format("it needs more than {} matching steps per byte of text (it backtracks too much)",
                       kRegexStepsPerByte);
  }
  static DataError fails(const Regex& re, size_t at, const std::string& source, const std::string& why) {
    return DataError(fmt::format("{}: the pre-tokenizer regex {} fails on the text at byte {}: {}", source,
                                 JsonReader::shown(json(re.pattern)), at, why));
  }

  void release() {
    if (stack_ != nullptr) pcre2_jit_stack_free(stack_);
    if (data_ != nullptr) pcre2_match_data_free(data_);
    if (context_ != nullptr) pcre2_match_context_free(context_);
    stack_ = nullptr;
    data_ = nullptr;
    context_ = nullptr;
  }
  pcre2_match_context* context_ = nullptr;
  pcre2_match_data* data_ = nullptr;
  pcre2_jit_stack* stack_ = nullptr;
  // Matching steps left for this encode() call: kRegexMatchLimit to start with, plus
  // kRegexStepsPerByte for every byte each regex step scans.
  uint64_t budget_ = kRegexMatchLimit;
};

// tokenizers' SplitDelimiterBehavior.
enum class SplitBehavior { kRemoved, kIsolated, kMergedWithPrevious, kMergedWithNext, kContiguous };

// tokenizers' NormalizedString::split, streamed: fed find_matches' pieces in order, it calls
// emit(begin, end) for each range tokenizers keeps, in order. (tokenizers folds the whole list;
// each behavior only ever joins a piece with its neighbour, so one pending range suffices.)
template <typename Emit>
class BehaviorStream {
 public:
  BehaviorStream(SplitBehavior behavior, bool invert, Emit& emit) : behavior_(behavior), invert_(invert), emit_(emit) {}

  void piece(size_t b, size_t e, bool is_match) {
    const bool m = is_match != invert_;
    switch (behavior_) {
      case SplitBehavior::kIsolated:
        emit_(b, e);
        break;
      case SplitBehavior::kRemoved:
        if (!m) emit_(b, e);
        break;
      case SplitBehavior::kMergedWithPrevious:  // a match joins the piece before it, unless that is a match
        if (m && !previous_match_ && pending_) {
          end_ = e;
        } else {
          hold(b, e);
        }
        break;
      case SplitBehavior::kMergedWithNext:  // a match joins the piece after it, unless that is a match
        if (pending_ && pending_match_ && !m) {
          emit_(begin_, e);
          pending_ = false;
        } else {
          hold(b, e);
        }
        break;
      case SplitBehavior::kContiguous:  // runs of matches and runs of non-matches
        if (m == previous_match_ && pending_) {
          end_ = e;
        } else {
          hold(b, e);
        }
        break;
    }
    previous_match_ = m;
    pending_match_ = m;
  }
  void finish() {
    if (pending_) emit_(begin_, end_);
    pending_ = false;
  }

 private:
  void hold(size_t b, size_t e) {
    if (pending_) emit_(begin_, end_);
    pending_ = true;
    begin_ = b;
    end_ = e;
  }
  SplitBehavior behavior_;
  bool invert_;
  Emit& emit_;
  bool pending_ = false, pending_match_ = false, previous_match_ = false;
  size_t begin_ = 0, end_ = 0;
};

struct PreTokenizerStep {
  // A Split, or (byte_level) ByteLevel: regex = GPT-2's pattern when use_regex, else none.
  bool byte_level = false;
  bool add_prefix_space = false;
  std::optional<Regex> regex;
  SplitBehavior behavior = SplitBehavior::kIsolated;
  bool invert = false;
};

// ---- added tokens ----

struct AddedToken {
  int64_t id = 0;
  std::string content;
  bool single_word = false, lstrip = false, rstrip = false, normalized = false, special = false;
};

// A byte trie over the added tokens' contents, for leftmost-longest matching (what tokenizers'
// aho-corasick automaton does with MatchKind::LeftmostLongest). Each position costs at most
// kMaxAddedTokenBytes steps.
class AddedTokenTrie {
 public:
  AddedTokenTrie() : nodes_(1) {}
  void insert(const std::string& content, int32_t token) {
    int32_t node = 0;
    for (const char c : content) {
      const int32_t next = child(node, static_cast<unsigned char>(c));
      if (next >= 0) {
        node = next;
      } else {
        nodes_.push_back(Node{});
        const auto created = static_cast<int32_t>(nodes_.size() - 1);
        nodes_[static_cast<size_t>(node)].children.emplace_back(static_cast<unsigned char>(c), created);
        node = created;
      }
    }
    // A repeated content keeps its first token, as the automaton's first pattern wins.
    if (nodes_[static_cast<size_t>(node)].token < 0) nodes_[static_cast<size_t>(node)].token = token;
  }
  bool empty() const { return nodes_.size() == 1; }
  // The longest token starting at text[pos]: (token, length), token -1 if none.
  std::pair<int32_t, size_t> longest_at(std::string_view text, size_t pos) const {
    int32_t node = 0, best = -1;
    size_t best_len = 0;
    for (size_t i = pos; i < text.size(); ++i) {
      node = child(node, static_cast<unsigned char>(text[i]));
      if (node < 0) break;
      if (nodes_[static_cast<size_t>(node)].token >= 0) {
        best = nodes_[static_cast<size_t>(node)].token;
        best_len = i + 1 - pos;
      }
    }
    return {best, best_len};
  }

 private:
  struct Node {
    std::vector<std::pair<unsigned char, int32_t>> children;
    int32_t token = -1;
  };
  int32_t child(int32_t node, unsigned char c) const {
    for (const auto& [byte, next] : nodes_[static_cast<size_t>(node)].children) {
      if (byte == c) return next;
    }
    return -1;
  }
  std::vector<Node> nodes_;
};

// A piece of the text: an added token (token >= 0, an index into added_tokens) or text to go on.
struct Segment {
  size_t begin, end;
  int32_t token;
};

}  // namespace

std::string byte_level_char(unsigned char byte) { return byte_level_table()[byte]; }

std::string byte_level_encode(std::string_view bytes) {
  const auto& table = byte_level_table();
  std::string out;
  out.reserve(bytes.size() * 2);
  for (const char c : bytes) out += table[static_cast<unsigned char>(c)];
  return out;
}

struct BpeTokenizer::Impl {
  std::string source;
  std::unordered_map<std::string, int32_t> vocab;
  std::vector<std::string> id_to_token;  // vocabulary and added tokens; "" where no token has the id
  struct Merge {
    int32_t rank;
    int32_t id;
  };
  std::unordered_map<uint64_t, Merge> merges;
  std::array<int32_t, 256> byte_ids{};  // the vocabulary id of byte_level_char(b)
  bool ignore_merges = false;
  std::vector<const UNormalizer2*> normalizers;
  std::vector<PreTokenizerStep> pre_tokenizers;
  std::vector<AddedToken> added_tokens;
  AddedTokenTrie raw_trie, normalized_trie;  // normalized=false / normalized=true tokens
  std::optional<int64_t> bos_id;

  static uint64_t pair_key(int32_t a, int32_t b) {
    return (static_cast<uint64_t>(static_cast<uint32_t>(a)) << 32) | static_cast<uint32_t>(b);
  }

  // tokenizers' AddedVocabulary::find_matches: the text cut at the trie's tokens.
  std::vector<Segment> split_on_added(std::string_view text, const AddedTokenTrie& trie) const {
    std::vector<Segment> out;
    if (trie.empty()) {
      out.push_back({0, text.size(), -1});
      return out;
    }
    size_t start_offset = 0;
    size_t pos = 0;
    while (pos < text.size()) {
      const auto [token, len] = trie.longest_at(text, pos);
      if (token < 0) {
        ++pos;
        continue;
      }
      size_t start = pos, stop = pos + len;
      pos = stop;  // the automaton resumes after the match as found, whatever the flags do below
      const AddedToken& t = added_tokens[static_cast<size_t>(token)];
      if (t.single_word) {
        size_t l = 0;
        const bool start_space = start == 0 || !is_word_char(decode_before(text, start, l));
        const bool stop_space = stop == text.size() || !is_word_char(decode_at(text, stop, l));
        if (!start_space || !stop_space) continue;
      }
      if (t.lstrip) {
        size_t new_start = start;
        while (new_start > 0) {
          size_t l = 0;
          if (!is_white_space(decode_before(text, new_start, l))) break;
          new_start -= l;
        }
        start = std::max(new_start, start_offset);
      }
      if (t.rstrip) {
        while (stop < text.size()) {
          size_t l = 0;
          if (!is_white_space(decode_at(text, stop, l))) break;
          stop += l;
        }
      }
      if (start_offset < start) out.push_back({start_offset, start, -1});
      out.push_back({start, stop, token});
      start_offset = stop;
    }
    if (start_offset < text.size()) out.push_back({start_offset, text.size(), -1});
    return out;
  }

  std::string normalize(std::string_view text) const {
    if (normalizers.empty()) return std::string(text);
    std::string current(text);
    for (const UNormalizer2* n : normalizers) {
      UErrorCode status = U_ZERO_ERROR;
      int32_t len16 = 0;
      if (current.size() > static_cast<size_t>(INT32_MAX / 4)) {
        throw DataError(fmt::format("{}: a text piece of {} bytes is too long to normalize", source, current.size()));
      }
      std::u16string utf16(current.size() + 1, u'\0');
      u_strFromUTF8(reinterpret_cast<UChar*>(utf16.data()), static_cast<int32_t>(utf16.size()), &len16,
                    current.data(), static_cast<int32_t>(current.size()), &status);
      if (U_FAILURE(status)) throw DataError(fmt::format("{}: ICU cannot read the text: {}", source, u_errorName(status)));
      utf16.resize(static_cast<size_t>(len16));
      if (unorm2_isNormalized(n, reinterpret_cast<const UChar*>(utf16.data()), len16, &status) && U_SUCCESS(status)) {
        continue;
      }
      // Normalized text is rarely longer than its source; when it is, ICU reports the length
      // needed and the call is repeated once with that size.
      std::u16string normalized(utf16.size() + utf16.size() / 4 + 16, u'\0');
      int32_t out_len = 0;
      for (int attempt = 0; attempt < 2; ++attempt) {
        status = U_ZERO_ERROR;
        out_len = unorm2_normalize(n, reinterpret_cast<const UChar*>(utf16.data()), len16,
                                   reinterpret_cast<UChar*>(normalized.data()), static_cast<int32_t>(normalized.size()),
                                   &status);
        if (status != U_BUFFER_OVERFLOW_ERROR) break;
        normalized.assign(static_cast<size_t>(out_len) + 1, u'\0');
      }
      if (U_FAILURE(status)) throw DataError(fmt::format("{}: ICU cannot normalize the text: {}", source, u_errorName(status)));
      status = U_ZERO_ERROR;
      int32_t len8 = 0;
      std::string utf8(static_cast<size_t>(out_len) * 3 + 1, '\0');
      u_strToUTF8(utf8.data(), static_cast<int32_t>(utf8.size()), &len8, reinterpret_cast<const UChar*>(normalized.data()),
                  out_len, &status);
      if (U_FAILURE(status)) throw DataError(fmt::format("{}: ICU cannot write the text: {}", source, u_errorName(status)));
      utf8.resize(static_cast<size_t>(len8));
      current = std::move(utf8);
    }
    return current;
  }

  // Pre-tokenizer `step` and the ones after it on `piece`, depth first: word(w) for each final
  // piece, as raw (not yet byte-mapped) bytes. Streamed, so memory does not grow with the text.
  template <typename Word>
  void pre_tokenize(size_t step, std::string_view piece, Matcher& matcher, Word& word) const {
    if (piece.empty()) return;
    if (step == pre_tokenizers.size()) {
      word(piece);
      return;
    }
    const PreTokenizerStep& st = pre_tokenizers[step];
    std::string prefixed;
    if (st.byte_level && st.add_prefix_space && piece[0] != ' ') {
      prefixed = " " + std::string(piece);
      piece = prefixed;
    }
    if (!st.regex) {
      pre_tokenize(step + 1, piece, matcher, word);
      return;
    }
    auto emit = [&](size_t b, size_t e) { pre_tokenize(step + 1, piece.substr(b, e - b), matcher, word); };
    BehaviorStream<decltype(emit)> stream(st.behavior, st.invert, emit);
    matcher.for_each_piece(*st.regex, piece, source, [&](size_t b, size_t e, bool m) { stream.piece(b, e, m); });
    stream.finish();
  }

  // BPE of one word (raw bytes): tokenizers' Word::merge_all without dropout.
  void bpe_word(const std::string& word, std::vector<int32_t>& out) const {
    if (ignore_merges) {
      if (const auto it = vocab.find(byte_level_encode(word)); it != vocab.end()) {
        out.push_back(it->second);
        return;
      }
    }
    const size_t n = word.size();
    std::vector<int32_t> ids(n), prev(n), next(n);
    std::vector<bool> alive(n, true);
    for (size_t i = 0; i < n; ++i) {
      ids[i] = byte_ids[static_cast<unsigned char>(word[i])];
      prev[i] = static_cast<int32_t>(i) - 1;
      next[i] = i + 1 < n ? static_cast<int32_t>(i + 1) : -1;
    }
    // (rank, position, merged id): the lowest rank first, the leftmost among equal ranks.
    using Entry = std::tuple<int32_t, int32_t, int32_t>;
    std::priority_queue<Entry, std::vector<Entry>, std::greater<>> queue;
    const auto push = [&](int32_t pos) {
      if (pos < 0 || next[static_cast<size_t>(pos)] < 0) return;
      const auto it = merges.find(pair_key(ids[static_cast<size_t>(pos)], ids[static_cast<size_t>(next[static_cast<size_t>(pos)])]));
      if (it != merges.end()) queue.emplace(it->second.rank, pos, it->second.id);
    };
    for (size_t i = 0; i + 1 < n; ++i) push(static_cast<int32_t>(i));
    while (!queue.empty()) {
      const auto [rank, pos, merged] = queue.top();
      queue.pop();
      const auto p = static_cast<size_t>(pos);
      if (!alive[p] || next[p] < 0) continue;
      const auto it = merges.find(pair_key(ids[p], ids[static_cast<size_t>(next[p])]));
      if (it == merges.end() || it->second.id != merged) continue;  // stale: a neighbour has merged since
      const auto right = static_cast<size_t>(next[p]);
      ids[p] = merged;
      alive[right] = false;
      next[p] = next[right];
      if (next[right] >= 0) prev[static_cast<size_t>(next[right])] = pos;
      push(prev[p]);
      push(pos);
    }
    for (size_t i = 0; i < n; ++i) {
      if (alive[i]) out.push_back(ids[i]);
    }
  }
};

namespace {

SplitBehavior parse_behavior(const JsonReader& r, const json& object, const std::string& field) {
  const std::string b = r.string(object, "behavior", field);
  if (b == "Removed") return SplitBehavior::kRemoved;
  if (b == "Isolated") return SplitBehavior::kIsolated;
  if (b == "MergedWithPrevious") return SplitBehavior::kMergedWithPrevious;
  if (b == "MergedWithNext") return SplitBehavior::kMergedWithNext;
  if (b == "Contiguous") return SplitBehavior::kContiguous;
  r.fail(JsonReader::join(field, "behavior"),
         "must be Removed, Isolated, MergedWithPrevious, MergedWithNext or Contiguous, got " + JsonReader::shown(json(b)));
}

[[noreturn]] void unsupported(const JsonReader& r, const std::string& field, const std::string& what) {
  throw DataError(fmt::format("{}: unsupported {} in field '{}' (quantppl reads byte-level BPE tokenizers: "
                              "docs/tokenizers.md)",
                              r.source(), what, field));
}

void parse_pre_tokenizer(const JsonReader& r, const json& node, const std::string& field,
                         std::vector<PreTokenizerStep>& steps) {
  if (node.is_null()) return;
  r.require_object(node, field);
  const std::string type = r.string(node, "type", field);
  if (type == "Sequence") {
    const json& list = r.array(node, "pretokenizers", field);
    for (size_t i = 0; i < list.size(); ++i) {
      parse_pre_tokenizer(r, list[i], fmt::format("{}.pretokenizers[{}]", field, i), steps);
    }
    return;
  }
  if (steps.size() >= kMaxPreTokenizerSteps) {
    r.fail(field, fmt::format("is a step beyond the {} a pre-tokenizer chain may have", kMaxPreTokenizerSteps));
  }
  if (type == "Split") {
    PreTokenizerStep step;
    const json& pattern = r.object(node, "pattern", field);
    const std::string pfield = JsonReader::join(field, "pattern");
    if (r.has(pattern, "Regex")) {
      step.regex = compile_regex(r.string(pattern, "Regex", pfield), false, false, r.source(), pfield + ".Regex");
    } else if (r.has(pattern, "String")) {
      step.regex = compile_regex(r.string(pattern, "String", pfield), true, false, r.source(), pfield + ".String");
    } else {
      r.fail(pfield, "must hold \"Regex\" or \"String\", got " + JsonReader::shown(pattern));
    }
    step.behavior = parse_behavior(r, node, field);
    step.invert = r.has(node, "invert") ? r.boolean(node, "invert", field) : false;
    steps.push_back(std::move(step));
  } else if (type == "ByteLevel") {
    PreTokenizerStep step;
    step.byte_level = true;
    step.add_prefix_space = r.boolean(node, "add_prefix_space", field);
    const bool use_regex = r.has(node, "use_regex") ? r.boolean(node, "use_regex", field) : true;
    if (use_regex) step.regex = compile_regex(kGpt2Pattern, false, true, r.source(), field);
    steps.push_back(std::move(step));
  } else {
    unsupported(r, JsonReader::join(field, "type"), "pre-tokenizer type " + JsonReader::shown(json(type)));
  }
}

void parse_normalizer(const JsonReader& r, const json& node, const std::string& field,
                      std::vector<const UNormalizer2*>& out) {
  if (node.is_null()) return;
  r.require_object(node, field);
  const std::string type = r.string(node, "type", field);
  if (type == "Sequence") {
    const json& list = r.array(node, "normalizers", field);
    for (size_t i = 0; i < list.size(); ++i) {
      parse_normalizer(r, list[i], fmt::format("{}.normalizers[{}]", field, i), out);
    }
    return;
  }
  if (out.size() >= kMaxNormalizerSteps) {
    r.fail(field, fmt::format("is a step beyond the {} a normalizer chain may have", kMaxNormalizerSteps));
  }
  UErrorCode status = U_ZERO_ERROR;
  const UNormalizer2* n = nullptr;
  if (type == "NFC") n = unorm2_getNFCInstance(&status);
  else if (type == "NFD") n = unorm2_getNFDInstance(&status);
  else if (type == "NFKC") n = unorm2_getNFKCInstance(&status);
  else if (type == "NFKD") n = unorm2_getNFKDInstance(&status);
  else unsupported(r, JsonReader::join(field, "type"), "normalizer type " + JsonReader::shown(json(type)));
  if (U_FAILURE(status) || n == nullptr) {
    throw IoError(fmt::format("{}: ICU has no {} normalizer: {}", r.source(), type, u_errorName(status)));
  }
  out.push_back(n);
}

// The BOS of a TemplateProcessing post-processor's single-sequence template, which must be one of
// the tokens (`names`: the vocabulary and the added tokens by id, "" where none has the id).
void parse_post_processor(const JsonReader& r, const json& node, const std::string& field,
                          const std::vector<std::string>& names, std::optional<int64_t>& bos) {
  if (node.is_null()) return;
  r.require_object(node, field);
  const std::string type = r.string(node, "type", field);
  if (type == "ByteLevel") return;  // offsets only
  if (type == "Sequence") {
    const json& list = r.array(node, "processors", field);
    for (size_t i = 0; i < list.size(); ++i) {
      parse_post_processor(r, list[i], fmt::format("{}.processors[{}]", field, i), names, bos);
    }
    return;
  }
  if (type != "TemplateProcessing") {
    unsupported(r, JsonReader::join(field, "type"), "post-processor type " + JsonReader::shown(json(type)));
  }
  const json& single = r.array(node, "single", field);
  if (single.empty()) return;
  const std::string first_field = JsonReader::join(field, "single[0]");
  r.require_object(single[0], first_field);
  if (!r.has(single[0], "SpecialToken")) return;
  const json& special = r.object(single[0], "SpecialToken", first_field);
  const std::string name = r.string(special, "id", first_field + ".SpecialToken");
  const json& specials = r.object(node, "special_tokens", field);
  const std::string sfield = JsonReader::join(field, "special_tokens");
  const json& entry = r.object(specials, name, sfield);
  const json& ids = r.array(entry, "ids", JsonReader::join(sfield, name));
  if (ids.size() != 1) {
    unsupported(r, JsonReader::join(sfield, name) + ".ids", fmt::format("special token of {} ids", ids.size()));
  }
  const std::string id_field = JsonReader::join(sfield, name) + ".ids[0]";
  const int64_t id = r.integer_value(ids[0], id_field, 0, kMaxBpeVocab - 1);
  if (id >= static_cast<int64_t>(names.size()) || names[static_cast<size_t>(id)].empty()) {
    r.fail(id_field, fmt::format("is {}, which is no token of model.vocab or added_tokens (ids below {})", id,
                                 names.size()));
  }
  bos = id;
}

void check_null_or(const JsonReader& r, const json& object, const std::string& key, const std::string& field,
                   const std::function<bool(const json&)>& accepted, const std::string& what) {
  if (!r.has(object, key)) return;
  const json& v = object.at(key);
  if (v.is_null() || accepted(v)) return;
  unsupported(r, JsonReader::join(field, key), what + ", got " + JsonReader::shown(v));
}

}  // namespace

BpeTokenizer::BpeTokenizer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
BpeTokenizer::BpeTokenizer(BpeTokenizer&&) noexcept = default;
BpeTokenizer& BpeTokenizer::operator=(BpeTokenizer&&) noexcept = default;
BpeTokenizer::~BpeTokenizer() = default;

BpeTokenizer BpeTokenizer::from_json(std::string_view json_text, const std::string& source_name) {
  if (static_cast<int64_t>(json_text.size()) > kMaxTokenizerBytes) {
    throw DataError(fmt::format("{} is {} bytes, more than the {} MiB maximum for a tokenizer", source_name,
                                json_text.size(), kMaxTokenizerBytes >> 20));
  }
  const json doc = parse_tokenizer_json(json_text, source_name);
  const JsonReader r(source_name);
  r.require_object(doc, "");
  auto impl = std::make_unique<Impl>();
  impl->source = source_name;

  for (const char* key : {"truncation", "padding"}) {
    if (r.has(doc, key) && !doc.at(key).is_null()) {
      unsupported(r, key, fmt::format("{} (quantppl cuts the text into windows itself; set it to null)", key));
    }
  }

  // ---- model ----
  const json& model = r.object(doc, "model");
  // Files written by tokenizers < 0.10 (GPT-2's on the Hub) have no model.type; tokenizers then
  // reads a model with vocab and merges as BPE.
  const std::string type = r.has(model, "type") ? r.string(model, "type", "model") : "BPE";
  if (type != "BPE") {
    unsupported(r, "model.type", "model type " + JsonReader::shown(json(type)) + " (only BPE is)");
  }
  check_null_or(r, model, "dropout", "model", [](const json& v) { return v.is_number() && v.get<double>() == 0.0; },
                "BPE dropout (random segmentation; expected null)");
  const auto empty_string = [](const json& v) { return v.is_string() && v.get<std::string>().empty(); };
  check_null_or(r, model, "continuing_subword_prefix", "model", empty_string, "continuing_subword_prefix (expected null or \"\")");
  check_null_or(r, model, "end_of_word_suffix", "model", empty_string, "end_of_word_suffix (expected null or \"\")");
  impl->ignore_merges = r.has(model, "ignore_merges") ? r.boolean(model, "ignore_merges", "model") : false;

  const json& vocab = r.object(model, "vocab", "model");
  if (static_cast<int64_t>(vocab.size()) > kMaxBpeVocab) {
    r.fail("model.vocab", fmt::format("holds {} tokens, more than the {} allowed", vocab.size(), kMaxBpeVocab));
  }
  int64_t size = 0;
  impl->vocab.reserve(vocab.size());
  for (const auto& [token, value] : vocab.items()) {
    const int64_t id = r.integer_value(value, "model.vocab[" + JsonReader::shown(json(token)) + "]", 0, kMaxBpeVocab - 1);
    size = std::max(size, id + 1);
    impl->vocab.emplace(token, static_cast<int32_t>(id));
  }
  std::vector<std::string>& names = impl->id_to_token;
  names.assign(static_cast<size_t>(size), std::string());
  std::vector<bool> taken(static_cast<size_t>(size), false);
  for (const auto& [token, id] : impl->vocab) {
    if (taken[static_cast<size_t>(id)]) {
      r.fail("model.vocab", fmt::format("gives id {} to both {} and {}", id, JsonReader::shown(json(names[static_cast<size_t>(id)])),
                                        JsonReader::shown(json(token))));
    }
    taken[static_cast<size_t>(id)] = true;
    names[static_cast<size_t>(id)] = token;
  }
  // Every byte must have its symbol: tokenizers would silently drop a byte that has none (or map
  // it to unk), and byte_fallback/unk_token then decide; quantppl refuses instead.
  for (int b = 0; b < 256; ++b) {
    const auto it = impl->vocab.find(byte_level_char(static_cast<unsigned char>(b)));
    if (it == impl->vocab.end()) {
      unsupported(r, "model.vocab",
                  fmt::format("vocabulary without the byte-level symbol {} of byte 0x{:02X} (not a byte-level BPE)",
                              JsonReader::shown(json(byte_level_char(static_cast<unsigned char>(b)))), b));
    }
    impl->byte_ids[static_cast<size_t>(b)] = it->second;
  }

  const json& merges = r.array(model, "merges", "model");
  if (static_cast<int64_t>(merges.size()) > kMaxBpeMerges) {
    r.fail("model.merges", fmt::format("holds {} merges, more than the {} allowed", merges.size(), kMaxBpeMerges));
  }
  impl->merges.reserve(merges.size());
  for (size_t i = 0; i < merges.size(); ++i) {
    const std::string field = fmt::format("model.merges[{}]", i);
    const json& m = merges[i];
    std::string left, right;
    if (m.is_string()) {  // "a b"
      const std::string& s = m.get_ref<const std::string&>();
      const size_t space = s.find(' ');
      if (space == std::string::npos || s.find(' ', space + 1) != std::string::npos) {
        r.fail(field, "must be two tokens separated by one space, got " + JsonReader::shown(m));
      }
      left = s.substr(0, space);
      right = s.substr(space + 1);
    } else if (m.is_array() && m.size() == 2 && m[0].is_string() && m[1].is_string()) {  // ["a", "b"]
      left = m[0].get<std::string>();
      right = m[1].get<std::string>();
    } else {
      r.fail(field, "must be \"a b\" or [\"a\", \"b\"], got " + JsonReader::shown(m));
    }
    const auto a = impl->vocab.find(left), b = impl->vocab.find(right), ab = impl->vocab.find(left + right);
    for (const auto& [it, tok] : {std::pair{a, &left}, std::pair{b, &right}}) {
      if (it == impl->vocab.end()) r.fail(field, "names " + JsonReader::shown(json(*tok)) + ", which is not in model.vocab");
    }
    if (ab == impl->vocab.end()) {
      r.fail(field, "merges into " + JsonReader::shown(json(left + right)) + ", which is not in model.vocab");
    }
    // A repeated pair keeps its last rank, as tokenizers' HashMap collect does.
    impl->merges[Impl::pair_key(a->second, b->second)] = {static_cast<int32_t>(i), ab->second};
  }

  if (r.has(doc, "normalizer")) parse_normalizer(r, doc.at("normalizer"), "normalizer", impl->normalizers);

  // ---- added tokens: ids as tokenizers' AddedVocabulary assigns them ----
  if (r.has(doc, "added_tokens")) {
    const json& added = r.array(doc, "added_tokens");
    if (static_cast<int64_t>(added.size()) > kMaxAddedTokens) {
      r.fail("added_tokens", fmt::format("holds {} tokens, more than the {} allowed", added.size(), kMaxAddedTokens));
    }
    std::unordered_map<std::string, int64_t> added_ids;
    int64_t max_added = -1;
    size_t trie_bytes = 0;
    const auto count_bytes = [&](const std::string& field, size_t bytes) {
      trie_bytes += bytes;
      if (trie_bytes > kMaxAddedTokenTotalBytes) {
        r.fail(field, fmt::format("brings the added tokens' contents to more than the {} bytes allowed in all",
                                  kMaxAddedTokenTotalBytes));
      }
    };
    const auto model_size = static_cast<int64_t>(impl->vocab.size());
    for (size_t i = 0; i < added.size(); ++i) {
      const std::string field = fmt::format("added_tokens[{}]", i);
      r.require_object(added[i], field);
      AddedToken t;
      t.id = r.integer(added[i], "id", field, 0, kMaxBpeVocab - 1);
      t.content = r.string(added[i], "content", field);
      if (t.content.empty()) r.fail(field + ".content", "must not be empty");
      if (t.content.size() > kMaxAddedTokenBytes) {
        r.fail(field + ".content", fmt::format("is {} bytes, more than the {} allowed", t.content.size(), kMaxAddedTokenBytes));
      }
      const auto flag = [&](const char* key, bool fallback) {
        return r.has(added[i], key) ? r.boolean(added[i], key, field) : fallback;
      };
      t.special = flag("special", false);
      t.single_word = flag("single_word", false);
      t.lstrip = flag("lstrip", false);
      t.rstrip = flag("rstrip", false);
      t.normalized = flag("normalized", !t.special);
      int64_t expected = 0;
      if (const auto it = added_ids.find(t.content); it != added_ids.end()) {
        expected = it->second;
      } else if (const auto v = impl->vocab.find(t.content); v != impl->vocab.end()) {
        expected = v->second;
      } else if (max_added < 0) {
        expected = model_size;
      } else {
        expected = max_added >= model_size ? max_added + 1 : model_size;
      }
      if (t.id != expected) {
        r.fail(field + ".id", fmt::format("is {} but tokenizers would give {} id {} (the vocabulary has {} tokens)",
                                          t.id, JsonReader::shown(json(t.content)), expected, model_size));
      }
      if (added_ids.count(t.content) != 0) continue;  // a repeat: already matched
      if (t.id < static_cast<int64_t>(names.size()) && !names[static_cast<size_t>(t.id)].empty() &&
          names[static_cast<size_t>(t.id)] != t.content) {
        r.fail(field + ".id", fmt::format("is {}, which model.vocab gives to {}", t.id,
                                          JsonReader::shown(json(names[static_cast<size_t>(t.id)]))));
      }
      added_ids.emplace(t.content, t.id);
      max_added = std::max(max_added, t.id);
      if (t.id >= static_cast<int64_t>(names.size())) names.resize(static_cast<size_t>(t.id + 1));
      names[static_cast<size_t>(t.id)] = t.content;
      impl->added_tokens.push_back(t);
      const auto index = static_cast<int32_t>(impl->added_tokens.size() - 1);
      // A normalized token is looked for in normalized text, so in its normalized form ("ﬁx" is
      // "fix" under NFKC), as tokenizers' refresh_added_tokens does.
      if (t.normalized) {
        const std::string form = impl->normalize(t.content);
        count_bytes(field + ".content", form.size());
        if (!form.empty()) impl->normalized_trie.insert(form, index);
      } else {
        count_bytes(field + ".content", t.content.size());
        impl->raw_trie.insert(t.content, index);
      }
    }
  }

  // ---- pipeline ----
  if (!r.has(doc, "pre_tokenizer") || doc.at("pre_tokenizer").is_null()) {
    unsupported(r, "pre_tokenizer", "missing pre-tokenizer (byte-level BPE needs ByteLevel)");
  }
  parse_pre_tokenizer(r, doc.at("pre_tokenizer"), "pre_tokenizer", impl->pre_tokenizers);
  const auto& steps = impl->pre_tokenizers;
  const auto byte_levels = std::count_if(steps.begin(), steps.end(), [](const auto& s) { return s.byte_level; });
  if (byte_levels != 1 || !steps.back().byte_level) {
    unsupported(r, "pre_tokenizer",
                fmt::format("pre-tokenizer chain with {} ByteLevel steps{} (expected exactly one, last)", byte_levels,
                            steps.empty() || steps.back().byte_level ? "" : ", not last"));
  }
  if (r.has(doc, "post_processor")) parse_post_processor(r, doc.at("post_processor"), "post_processor", names, impl->bos_id);
  if (r.has(doc, "decoder") && !doc.at("decoder").is_null()) {
    const json& decoder = doc.at("decoder");
    r.require_object(decoder, "decoder");
    const std::string dtype = r.string(decoder, "type", "decoder");
    if (dtype != "ByteLevel") unsupported(r, "decoder.type", "decoder type " + JsonReader::shown(json(dtype)));
  }
  return BpeTokenizer(std::move(impl));
}

std::vector<int64_t> BpeTokenizer::encode(std::string_view text) const {
  const Impl& m = *impl_;
  if (const size_t bad = first_invalid_utf8(text); bad != std::string_view::npos) {
    throw DataError(fmt::format("{}: the text is not valid UTF-8 at byte {}", m.source, bad));
  }
  Matcher matcher;
  std::vector<int64_t> ids;
  ids.reserve(text.size() / 3 + 1);
  // word -> ids, bounded: a text of distinct words would otherwise keep all of them.
  std::unordered_map<std::string, std::vector<int32_t>> cache;
  std::vector<int32_t> word_ids;
  auto encode_word = [&](std::string_view w) {
    auto it = cache.find(std::string(w));
    if (it == cache.end()) {
      word_ids.clear();
      m.bpe_word(std::string(w), word_ids);
      if (cache.size() >= kMaxCachedWords) cache.clear();
      it = cache.emplace(std::string(w), word_ids).first;
    }
    ids.insert(ids.end(), it->second.begin(), it->second.end());
  };
  const auto encode_words = [&](std::string_view piece) { m.pre_tokenize(0, piece, matcher, encode_word); };
  for (const Segment& raw : m.split_on_added(text, m.raw_trie)) {
    if (raw.token >= 0) {
      ids.push_back(m.added_tokens[static_cast<size_t>(raw.token)].id);
      continue;
    }
    const std::string normalized = m.normalize(text.substr(raw.begin, raw.end - raw.begin));
    for (const Segment& s : m.split_on_added(normalized, m.normalized_trie)) {
      if (s.token >= 0) {
        ids.push_back(m.added_tokens[static_cast<size_t>(s.token)].id);
      } else if (s.end > s.begin) {
        encode_words(std::string_view(normalized).substr(s.begin, s.end - s.begin));
      }
    }
  }
  return ids;
}

int64_t BpeTokenizer::vocab_size() const { return static_cast<int64_t>(impl_->id_to_token.size()); }

std::string BpeTokenizer::id_to_token(int64_t id) const {
  if (id < 0 || id >= vocab_size()) {
    throw UsageError(fmt::format("{}: token id must be in [0, {}), got {}", impl_->source, vocab_size(), id));
  }
  return impl_->id_to_token[static_cast<size_t>(id)];
}

std::optional<int64_t> BpeTokenizer::token_to_id(std::string_view token) const {
  for (const AddedToken& t : impl_->added_tokens) {
    if (t.content == token) return t.id;
  }
  if (const auto it = impl_->vocab.find(std::string(token)); it != impl_->vocab.end()) return it->second;
  return std::nullopt;
}

std::optional<int64_t> BpeTokenizer::merge_rank(std::string_view left, std::string_view right) const {
  const auto a = impl_->vocab.find(std::string(left)), b = impl_->vocab.find(std::string(right));
  if (a == impl_->vocab.end() || b == impl_->vocab.end()) return std::nullopt;
  const auto it = impl_->merges.find(Impl::pair_key(a->second, b->second));
  if (it == impl_->merges.end()) return std::nullopt;
  return it->second.rank;
}

std::optional<int64_t> BpeTokenizer::post_processor_bos_id() const { return impl_->bos_id; }
bool BpeTokenizer::ignore_merges() const { return impl_->ignore_merges; }
const std::string& BpeTokenizer::source_name() const { return impl_->source; }

}  // namespace quantppl
