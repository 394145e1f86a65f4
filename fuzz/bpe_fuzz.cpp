// libFuzzer target: the byte-level BPE tokenizer.json reader (BpeTokenizer::from_json) on arbitrary
// bytes, then encoding with what it accepted (scripts/fuzz.sh).
//
// Contract: from_json returns a tokenizer or throws quantppl::Error (DataError); encode() on any
// text returns ids or throws quantppl::Error (DataError: text not UTF-8, a PCRE2 limit hit). An
// accepted tokenizer gives only ids in [0, vocab_size) that name a token, and a post-processor BOS
// that is one of its tokens. Anything else (another exception type, a crash, a sanitizer report,
// a hang: a regex that backtracks without a limit, a merge loop that does not end) is a bug.
//
// The texts encoded are a few fixed ones (words, numbers, contractions, whitespace runs, accents
// that NFC/NFKC change, text around added-token-like markers) plus the input's own last bytes, so
// a hostile pre-tokenizer regex or merge table also meets text shaped by the fuzzer. The seed
// corpus holds small hand-written byte-level BPE files (the 256 byte symbols plus a few tokens).
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "quantppl/error.h"
#include "quantppl/model/bpe_tokenizer.h"

namespace {

// Bytes of the input used as a text: enough for the regexes and merges to meet hostile shapes,
// few enough that a legitimate PCRE2 limit hit at every position stays within the target's time.
constexpr size_t kTextTail = 256;

void check_ids(const quantppl::BpeTokenizer& t, const std::vector<int64_t>& ids) {
  const int64_t n = t.vocab_size();
  for (const int64_t id : ids) {
    if (id < 0 || id >= n) std::abort();
    // "Decoding": every id the encoder gives must be a token of the file.
    if (t.id_to_token(id).empty()) std::abort();
  }
}

void encode(const quantppl::BpeTokenizer& t, std::string_view text) {
  try {
    check_ids(t, t.encode(text));
  } catch (const quantppl::Error&) {
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view bytes(reinterpret_cast<const char*>(data), size);
  std::optional<quantppl::BpeTokenizer> t;
  try {
    t.emplace(quantppl::BpeTokenizer::from_json(bytes, "model 'fuzz.pt': tokenizer.json"));
  } catch (const quantppl::Error&) {
    return 0;
  }
  if (const auto bos = t->post_processor_bos_id(); bos && (*bos < 0 || *bos >= t->vocab_size() ||
                                                           t->id_to_token(*bos).empty())) {
    std::abort();
  }
  static const char* const kTexts[] = {
      "Hello world, it's 2024!  Don't stop.\n\n\tNew line   here",
      "na\xC3\xAFve caf\xC3\xA9 \xEF\xAC\x81x \xE2\x84\xAB 12345678 \xE4\xB8\xAD\xE6\x96\x87",  // naïve café ﬁx Å 中文
      "<|endoftext|>ab<|endoftext|> <s>abc</s>  <m>  aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
      "",
      " ",
      "\xF0\x9F\x98\x80\xC2\xA0\xE2\x80\x83x",  // an emoji, NBSP, EM SPACE
  };
  for (const char* text : kTexts) encode(*t, text);
  encode(*t, bytes.substr(bytes.size() - std::min(bytes.size(), kTextTail)));
  return 0;
}
