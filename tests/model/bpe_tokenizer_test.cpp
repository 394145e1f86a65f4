// Unit tests of the byte-level BPE tokenizer on hand-written tokenizer.json files, with expected
// ids worked out by hand from the algorithm's definition (tests/tokenizer/test_bpe_parity.py
// compares with Hugging Face tokenizers on trained files).
#include "quantppl/model/bpe_tokenizer.h"

#include <fstream>
#include <set>

#include <fmt/format.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "../fixture_support.h"
#include "quantppl/error.h"
#include "quantppl/input_file.h"
#include "quantppl/tokenizer.h"

namespace quantppl {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;
using nlohmann::json;

const std::string kSource = "tokenizer 't.json'";

// A GPT-2-style document: the 256 byte symbols get ids 0-255 in byte order, then `extra` tokens
// get 256, 257, ...; `merges` in the [a, b] form.
json make_doc(const std::vector<std::string>& extra, const std::vector<std::pair<std::string, std::string>>& merges) {
  json vocab = json::object();
  for (int b = 0; b < 256; ++b) vocab[byte_level_char(static_cast<unsigned char>(b))] = b;
  int next = 256;
  for (const auto& t : extra) vocab[t] = next++;
  json m = json::array();
  for (const auto& [a, b] : merges) m.push_back({a, b});
  return json{{"version", "1.0"},
              {"truncation", nullptr},
              {"padding", nullptr},
              {"added_tokens", json::array()},
              {"normalizer", nullptr},
              {"pre_tokenizer", {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"trim_offsets", true}, {"use_regex", true}}},
              {"post_processor", {{"type", "ByteLevel"}, {"add_prefix_space", true}, {"trim_offsets", false}, {"use_regex", true}}},
              {"decoder", {{"type", "ByteLevel"}, {"add_prefix_space", true}, {"trim_offsets", true}, {"use_regex", true}}},
              {"model",
               {{"type", "BPE"}, {"dropout", nullptr}, {"unk_token", nullptr}, {"continuing_subword_prefix", nullptr},
                {"end_of_word_suffix", nullptr}, {"fuse_unk", false}, {"byte_fallback", false}, {"ignore_merges", false},
                {"vocab", vocab}, {"merges", m}}}};
}

BpeTokenizer load(const json& doc) { return BpeTokenizer::from_json(doc.dump(), kSource); }

int64_t byte_id(char c) { return static_cast<unsigned char>(c); }

std::string error_of(const std::string& text) {
  try {
    BpeTokenizer::from_json(text, kSource);
  } catch (const DataError& e) {
    return e.what();
  }
  return "no DataError";
}
std::string error_of(const json& doc) { return error_of(doc.dump()); }
std::string error_of(const char* text) { return error_of(std::string(text)); }

// ---- the byte map (openai/gpt-2 encoder.py bytes_to_unicode, worked out by hand) ----

TEST(BpeByteLevelTest, PrintableBytesMapToThemselves) {
  EXPECT_EQ(byte_level_char('!'), "!");
  EXPECT_EQ(byte_level_char('A'), "A");
  EXPECT_EQ(byte_level_char('~'), "~");
  EXPECT_EQ(byte_level_char(0xA1), "\u00A1");
  EXPECT_EQ(byte_level_char(0xAC), "\u00AC");
  EXPECT_EQ(byte_level_char(0xAE), "\u00AE");
  EXPECT_EQ(byte_level_char(0xFF), "\u00FF");
}

TEST(BpeByteLevelTest, OtherBytesMapFromU0100InOrder) {
  // 0x00-0x20 are the first 33 unprintable bytes: U+0100..U+0120 ("Ġ" is the space).
  EXPECT_EQ(byte_level_char(0x00), "\u0100");
  EXPECT_EQ(byte_level_char('\n'), "\u010A");  // "Ċ"
  EXPECT_EQ(byte_level_char(' '), "\u0120");   // "Ġ"
  EXPECT_EQ(byte_level_char(0x7F), "\u0121");
  EXPECT_EQ(byte_level_char(0x80), "\u0122");
  EXPECT_EQ(byte_level_char(0xA0), "\u0142");
  EXPECT_EQ(byte_level_char(0xAD), "\u0143");  // the 68th and last
  EXPECT_EQ(byte_level_encode(" hi\n"), "\u0120hi\u010A");
  EXPECT_EQ(byte_level_encode("\xC3\xA9"), "\u00C3\u00A9");  // é's two bytes
}

TEST(BpeByteLevelTest, MapIsABijectionOntoNonSpaceCharacters) {
  std::set<std::string> seen;
  for (int b = 0; b < 256; ++b) {
    const std::string c = byte_level_char(static_cast<unsigned char>(b));
    EXPECT_TRUE(seen.insert(c).second) << b;
    EXPECT_EQ(c.find_first_of(" \t\n\r"), std::string::npos) << b;
  }
}

// ---- merges ----

TEST(BpeMergeTest, RanksFollowTheOrderOfMerges) {
  const auto tok = load(make_doc({"ab", "bc", "abc"}, {{"a", "b"}, {"b", "c"}, {"ab", "c"}}));
  EXPECT_EQ(tok.merge_rank("a", "b"), 0);
  EXPECT_EQ(tok.merge_rank("b", "c"), 1);
  EXPECT_EQ(tok.merge_rank("ab", "c"), 2);
  EXPECT_EQ(tok.merge_rank("a", "bc"), std::nullopt);
  EXPECT_EQ(tok.merge_rank("zz", "c"), std::nullopt);
  EXPECT_EQ(tok.vocab_size(), 259);
  EXPECT_EQ(tok.id_to_token(258), "abc");
  EXPECT_EQ(tok.token_to_id("bc"), 257);
}

TEST(BpeMergeTest, LowestRankMergesFirst) {
  // ab=256 bc=257 abc=258. Ranks a+b < b+c: "abc" -> ab c -> abc (ab+c exists).
  EXPECT_THAT(load(make_doc({"ab", "bc", "abc"}, {{"a", "b"}, {"b", "c"}, {"ab", "c"}})).encode("abc"),
              ElementsAre(258));
  // Ranks b+c < a+b: "abc" -> a bc, and a+bc is no merge.
  EXPECT_THAT(load(make_doc({"ab", "bc", "abc"}, {{"b", "c"}, {"a", "b"}, {"ab", "c"}})).encode("abc"),
              ElementsAre(byte_id('a'), 257));
}

TEST(BpeMergeTest, EqualRanksMergeLeftmostFirst) {
  const auto tok = load(make_doc({"aa", "aaaa"}, {{"a", "a"}, {"aa", "aa"}}));
  EXPECT_THAT(tok.encode("aaa"), ElementsAre(256, byte_id('a')));
  EXPECT_THAT(tok.encode("aaaa"), ElementsAre(257));
  EXPECT_THAT(tok.encode("aaaaa"), ElementsAre(257, byte_id('a')));
}

TEST(BpeMergeTest, StringFormOfMergesIsTheSame) {
  json doc = make_doc({"ab", "bc", "abc"}, {});
  doc["model"]["merges"] = {"b c", "a b", "ab c"};
  const auto tok = load(doc);
  EXPECT_EQ(tok.merge_rank("b", "c"), 0);
  EXPECT_THAT(tok.encode("abc"), ElementsAre(byte_id('a'), 257));
}

TEST(BpeMergeTest, IgnoreMergesTakesAWholeWordFromTheVocabulary) {
  json doc = make_doc({"bc", "abc"}, {{"b", "c"}});
  EXPECT_THAT(load(doc).encode("abc"), ElementsAre(byte_id('a'), 256));
  doc["model"]["ignore_merges"] = true;
  const auto tok = load(doc);
  EXPECT_TRUE(tok.ignore_merges());
  EXPECT_THAT(tok.encode("abc"), ElementsAre(257));
  EXPECT_THAT(tok.encode("abcd"), ElementsAre(byte_id('a'), 256, byte_id('d')));  // not in vocab: merges
}

TEST(BpeMergeTest, Gpt2RegexSplitsWordsBeforeMerging) {
  // "Ġa" is space+a; the regex keeps " a" together and cuts "'s", digits and punctuation apart.
  const std::string sp = byte_level_char(' ');
  const auto tok = load(make_doc({sp + "a", "'s"}, {{sp, "a"}, {"'", "s"}}));
  EXPECT_THAT(tok.encode("a a's 1!"), ElementsAre(byte_id('a'), 256, 257, byte_id(' '), byte_id('1'), byte_id('!')));
  // "\s+(?!\S)": of three spaces before a word, two stand alone and the third starts the word.
  EXPECT_THAT(tok.encode("x   a"), ElementsAre(byte_id('x'), byte_id(' '), byte_id(' '), 256));
}

// ---- added tokens ----

json with_added(json doc, const std::vector<json>& added) {
  for (const auto& a : added) doc["added_tokens"].push_back(a);
  return doc;
}

json added(int64_t id, const std::string& content, bool special = true, bool lstrip = false, bool rstrip = false) {
  return {{"id", id}, {"content", content}, {"single_word", false}, {"lstrip", lstrip},
          {"rstrip", rstrip}, {"normalized", false}, {"special", special}};
}

TEST(BpeAddedTokenTest, SpecialTokensCutTheTextBeforePreTokenization) {
  const auto tok = load(with_added(make_doc({}, {}), {added(256, "<|eot|>"), added(257, "<|eot|>x")}));
  // Leftmost-longest: "<|eot|>x" wins over "<|eot|>" at the same start.
  EXPECT_THAT(tok.encode("a<|eot|>b<|eot|>x"), ElementsAre(byte_id('a'), 256, byte_id('b'), 257));
  EXPECT_THAT(tok.encode("<|eot|"), ElementsAre(byte_id('<'), byte_id('|'), byte_id('e'), byte_id('o'),
                                                byte_id('t'), byte_id('|')));
  EXPECT_EQ(tok.token_to_id("<|eot|>"), 256);
  EXPECT_EQ(tok.id_to_token(257), "<|eot|>x");
}

TEST(BpeAddedTokenTest, LstripAndRstripTakeTheWhitespace) {
  const auto tok = load(with_added(make_doc({}, {}), {added(256, "<m>", false, true, true)}));
  EXPECT_THAT(tok.encode("a  <m>  b"), ElementsAre(byte_id('a'), 256, byte_id('b')));
  const auto plain = load(with_added(make_doc({}, {}), {added(256, "<m>", false)}));
  EXPECT_THAT(plain.encode("a <m> b"), ElementsAre(byte_id('a'), byte_id(' '), 256, byte_id(' '), byte_id('b')));
}

TEST(BpeAddedTokenTest, PostProcessorBosIsReported) {
  json doc = with_added(make_doc({}, {}), {added(256, "<|bos|>")});
  EXPECT_EQ(load(doc).post_processor_bos_id(), std::nullopt);
  doc["post_processor"] = json::parse(R"({"type": "Sequence", "processors": [
      {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": false, "use_regex": true},
      {"type": "TemplateProcessing",
       "single": [{"SpecialToken": {"id": "<|bos|>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
       "pair": [],
       "special_tokens": {"<|bos|>": {"id": "<|bos|>", "ids": [256], "tokens": ["<|bos|>"]}}}]})");
  const auto tok = load(doc);
  EXPECT_EQ(tok.post_processor_bos_id(), 256);
  EXPECT_THAT(tok.encode("a"), ElementsAre(byte_id('a')));  // encode never adds it
}

TEST(BpeAddedTokenTest, NfcNormalizerComposes) {
  json doc = make_doc({}, {});
  doc["normalizer"] = {{"type", "NFC"}};
  // e + U+0301 COMBINING ACUTE becomes U+00E9 (bytes C3 A9); the Angstrom sign U+212B becomes U+00C5.
  EXPECT_THAT(load(doc).encode("e\u0301\u212B"), ElementsAre(0xC3, 0xA9, 0xC3, 0x85));
}

// ---- errors: each names the file and the feature ----

TEST(BpeErrorTest, UnsupportedModelTypeIsNamed) {
  json doc = make_doc({}, {});
  doc["model"]["type"] = "WordPiece";
  const std::string e = error_of(doc);
  EXPECT_THAT(e, HasSubstr(kSource));
  EXPECT_THAT(e, HasSubstr("unsupported model type \"WordPiece\""));
  EXPECT_THAT(e, HasSubstr("model.type"));
  doc["model"]["type"] = "Unigram";
  EXPECT_THAT(error_of(doc), HasSubstr("model type \"Unigram\""));
}

TEST(BpeErrorTest, UnsupportedPipelinePartsAreNamed) {
  json doc = make_doc({}, {});
  doc["normalizer"] = {{"type", "Sequence"}, {"normalizers", {{{"type", "NFC"}}, {{"type", "Lowercase"}}}}};
  EXPECT_THAT(error_of(doc), HasSubstr("normalizer type \"Lowercase\" in field 'normalizer.normalizers[1].type'"));
  doc = make_doc({}, {});
  doc["pre_tokenizer"] = {{"type", "Sequence"}, {"pretokenizers", {{{"type", "Digits"}, {"individual_digits", true}}}}};
  EXPECT_THAT(error_of(doc), HasSubstr("pre-tokenizer type \"Digits\""));
  doc["pre_tokenizer"] = {{"type", "Split"}, {"pattern", {{"Regex", "\\s"}}}, {"behavior", "Isolated"}, {"invert", false}};
  EXPECT_THAT(error_of(doc), HasSubstr("0 ByteLevel steps"));
  doc = make_doc({}, {});
  doc["decoder"] = {{"type", "Metaspace"}};
  EXPECT_THAT(error_of(doc), HasSubstr("decoder type \"Metaspace\""));
  doc = make_doc({}, {});
  doc["truncation"] = {{"max_length", 8}};
  EXPECT_THAT(error_of(doc), HasSubstr("truncation"));
  doc = make_doc({}, {});
  doc["model"]["continuing_subword_prefix"] = "##";
  EXPECT_THAT(error_of(doc), HasSubstr("continuing_subword_prefix"));
  doc = make_doc({}, {});
  doc["model"]["vocab"].erase(byte_level_char(0x0A));
  EXPECT_THAT(error_of(doc), HasSubstr("byte 0x0A"));
}

TEST(BpeErrorTest, MalformedFilesAreDataErrors) {
  EXPECT_THAT(error_of("{\"model\": "), HasSubstr("not valid JSON"));
  EXPECT_THAT(error_of("[1, 2]"), HasSubstr("expected a JSON object"));
  EXPECT_THAT(error_of(std::string(100, '[') + std::string(100, ']')), HasSubstr("nested deeper"));
  EXPECT_THAT(error_of(R"({"model": {"vocab": {"a": 0, "a": 1}, "merges": []}})"), HasSubstr("duplicate key \"a\""));
  EXPECT_THAT(error_of(std::string(static_cast<size_t>(kMaxTokenizerBytes) + 1, ' ')), HasSubstr("MiB maximum"));

  json doc = make_doc({"ab"}, {});
  doc["model"]["vocab"]["ab"] = -1;
  EXPECT_THAT(error_of(doc), HasSubstr("field 'model.vocab[\"ab\"]' must be in [0, 2097151], got -1"));
  doc["model"]["vocab"]["ab"] = kMaxBpeVocab;
  EXPECT_THAT(error_of(doc), HasSubstr("must be in [0, 2097151], got 2097152"));
  doc["model"]["vocab"]["ab"] = 5;
  EXPECT_THAT(error_of(doc), HasSubstr("gives id 5 to both"));

  doc = make_doc({}, {{"a", "q"}});
  EXPECT_THAT(error_of(doc), HasSubstr("merges into \"aq\", which is not in model.vocab"));
  doc = make_doc({"ab"}, {});
  doc["model"]["merges"] = {"a b c"};
  EXPECT_THAT(error_of(doc), HasSubstr("field 'model.merges[0]' must be two tokens"));
  doc["model"]["merges"] = {{"a"}};
  EXPECT_THAT(error_of(doc), HasSubstr("field 'model.merges[0]' must be"));
}

TEST(BpeErrorTest, AddedTokenIdsMustBeWhatTokenizersAssigns) {
  // The vocabulary has 256 tokens: the first new added token is 256, the next 257.
  EXPECT_THAT(error_of(with_added(make_doc({}, {}), {added(300, "<x>")})),
              HasSubstr("field 'added_tokens[0].id' is 300 but tokenizers would give \"<x>\" id 256"));
  EXPECT_THAT(error_of(with_added(make_doc({}, {}), {added(256, "<x>"), added(256, "<y>")})),
              HasSubstr("would give \"<y>\" id 257"));
  // A token already in the vocabulary keeps its id.
  EXPECT_THAT(error_of(with_added(make_doc({}, {}), {added(7, "a")})), HasSubstr("id 97"));
  EXPECT_THAT(error_of(with_added(make_doc({}, {}), {added(256, "")})), HasSubstr("must not be empty"));
}

TEST(BpeErrorTest, BadRegexesAreDataErrorsNotCrashes) {
  json doc = make_doc({}, {});
  doc["pre_tokenizer"] = {{"type", "Sequence"},
                          {"pretokenizers",
                           {{{"type", "Split"}, {"pattern", {{"Regex", "(unclosed"}}}, {"behavior", "Isolated"}, {"invert", false}},
                            doc["pre_tokenizer"]}}};
  EXPECT_THAT(error_of(doc), HasSubstr("PCRE2 rejects the regex \"(unclosed\""));
  doc["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"] = "(a+)+$";  // catastrophic backtracking
  const auto tok = load(doc);
  try {
    tok.encode(std::string(5000, 'a') + "!");
    ADD_FAILURE() << "no DataError";
  } catch (const DataError& e) {
    EXPECT_THAT(std::string(e.what()), HasSubstr("fails on the text"));
  }
  doc["pre_tokenizer"]["pretokenizers"][0]["behavior"] = "Sideways";
  EXPECT_THAT(error_of(doc), HasSubstr("must be Removed, Isolated"));
}

TEST(BpeErrorTest, InvalidUtf8TextIsADataError) {
  const auto tok = load(make_doc({}, {}));
  EXPECT_THROW(tok.encode("ok \xC3("), DataError);
  EXPECT_THROW(tok.encode("\xED\xA0\x80"), DataError);  // a surrogate
}

// ---- hostile files (fuzz/bpe_fuzz.cpp; docs/reliability.md) ----

// A Split step with `regex` in front of a ByteLevel without its own regex, so that the words are
// exactly the pieces of `regex`.
json with_split(json doc, const std::string& regex) {
  doc["pre_tokenizer"] = {{"type", "Sequence"},
                          {"pretokenizers",
                           {{{"type", "Split"}, {"pattern", {{"Regex", regex}}}, {"behavior", "Isolated"}, {"invert", false}},
                            {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"use_regex", false}}}}};
  return doc;
}

std::string encode_error(const BpeTokenizer& tok, const std::string& text) {
  try {
    tok.encode(text);
  } catch (const DataError& e) {
    return e.what();
  }
  return "no DataError";
}

TEST(BpeHostileTest, PostProcessorBosMustBeAToken) {
  // Found by bpe_fuzz (fuzz/corpus/bpe_fuzz/regress_bos_not_a_token.json): a BOS id that no token
  // has was reported by post_processor_bos_id() as if it were one.
  json doc = with_added(make_doc({}, {}), {added(256, "<|bos|>")});
  doc["post_processor"] = json::parse(R"({"type": "TemplateProcessing",
      "single": [{"SpecialToken": {"id": "<|bos|>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
      "pair": [], "special_tokens": {"<|bos|>": {"id": "<|bos|>", "ids": [9999], "tokens": ["<|bos|>"]}}})");
  EXPECT_THAT(error_of(doc), HasSubstr("field 'post_processor.special_tokens.<|bos|>.ids[0]' is 9999, which is no "
                                       "token of model.vocab or added_tokens (ids below 257)"));
  doc["post_processor"]["special_tokens"]["<|bos|>"]["ids"] = json::array({256});
  EXPECT_EQ(load(doc).post_processor_bos_id(), 256);
}

TEST(BpeHostileTest, ChainsBeyond64StepsFailWhileParsing) {
  // Each Split step compiles a regex: the 65th must fail before it is compiled, not after a
  // million of them.
  json doc = make_doc({}, {});
  json steps = json::array();
  for (int i = 0; i < 100; ++i) {
    steps.push_back({{"type", "Split"}, {"pattern", {{"String", "x"}}}, {"behavior", "Isolated"}, {"invert", false}});
  }
  steps.push_back(doc["pre_tokenizer"]);
  doc["pre_tokenizer"] = {{"type", "Sequence"}, {"pretokenizers", steps}};
  EXPECT_THAT(error_of(doc), HasSubstr("field 'pre_tokenizer.pretokenizers[64]' is a step beyond the 64"));
  steps.erase(steps.begin() + 63, steps.end() - 1);  // 63 Splits + ByteLevel: 64 steps
  doc["pre_tokenizer"]["pretokenizers"] = steps;
  EXPECT_THAT(load(doc).encode("axb"), ElementsAre(byte_id('a'), byte_id('x'), byte_id('b')));

  doc = make_doc({}, {});
  doc["normalizer"] = {{"type", "Sequence"}, {"normalizers", json::array()}};
  for (int i = 0; i < 65; ++i) doc["normalizer"]["normalizers"].push_back({{"type", "NFC"}});
  EXPECT_THAT(error_of(doc), HasSubstr("field 'normalizer.normalizers[64]' is a step beyond the 64"));
  doc["normalizer"]["normalizers"].erase(doc["normalizer"]["normalizers"].begin());
  EXPECT_THAT(load(doc).encode("e\xCC\x81"), ElementsAre(0xC3, 0xA9));  // NFC: e + U+0301 is U+00E9
}

TEST(BpeHostileTest, AddedTokensTotalAtMostOneMebibyte) {
  // Each content byte is a trie node: 65 536 tokens of 256 bytes would be ~1 GB. 4096 tokens of
  // 256 bytes are exactly 1 MiB; one byte more is refused, naming the token that crossed it.
  json doc = make_doc({}, {});
  for (int i = 0; i < 4096; ++i) {
    std::string content = fmt::format("<{:04d}>", i);
    content += std::string(256 - content.size(), 'x');
    doc["added_tokens"].push_back(added(256 + i, content));
  }
  EXPECT_EQ(load(doc).vocab_size(), 256 + 4096);
  doc["added_tokens"].push_back(added(byte_id('y'), "y"));  // in the vocabulary: keeps its id
  EXPECT_THAT(error_of(doc), HasSubstr("field 'added_tokens[4096].content' brings the added tokens' contents to "
                                       "more than the 1048576 bytes allowed in all"));
}

TEST(BpeHostileTest, RegexBacktrackingAtEveryPositionRunsOutOfItsBudget) {
  // (a|a) n times then b: 2^(n+1) backtracking steps at a position followed by n a's, then "."
  // matches. Each call stays under the per-call limit (2^13 and 2^23 < 10 M), so only the budget
  // per byte of text (256) stops it: without it, 64 MiB of a's would take days at n = 22.
  const auto groups = [](int n) {
    std::string r;
    for (int i = 0; i < n; ++i) r += "(a|a)";
    return r + "b|.";
  };
  const auto small = load(with_split(make_doc({}, {}), groups(12)));
  // A few positions of 2^13 steps fit in the first 10 M; 2000 of them (16 M steps) do not.
  EXPECT_THAT(small.encode(std::string(20, 'a')), ::testing::Each(byte_id('a')));
  const std::string e = encode_error(small, std::string(2000, 'a'));
  EXPECT_THAT(e, HasSubstr("tokenizer 't.json': the pre-tokenizer regex \"(a|a)(a|a)"));
  EXPECT_THAT(e, HasSubstr("needs more than 256 matching steps per byte of text (it backtracks too much)"));
  const auto big = load(with_split(make_doc({}, {}), groups(22)));
  EXPECT_THAT(encode_error(big, std::string(100, 'a')), HasSubstr("fails on the text at byte 0: it needs more"));
}

TEST(BpeHostileTest, LongWhitespaceRunsAreNotMistakenForBacktracking) {
  // Llama-3-style alternatives: at a run of n spaces, \s*[\r\n]+ backtracks n times before
  // \s+(?!\S) matches n - 1 of them. That position needs ~2n steps, beyond the first limit (32):
  // it is retried with a larger one, and the words are what the regex defines (worked out by
  // hand: "ab", " " repeated, then the run less one space, " ", "x"; no merges, so byte ids).
  const auto tok = load(with_split(make_doc({}, {}), R"(\s*[\r\n]+|\s+(?!\S)|\s+|\S+)"));
  std::string text;
  std::vector<int64_t> expected;
  for (int i = 0; i < 20000; ++i) {
    text += "ab ";
    expected.insert(expected.end(), {byte_id('a'), byte_id('b'), byte_id(' ')});
  }
  text += std::string(5000, ' ') + "x";
  expected.insert(expected.end(), 5000, byte_id(' '));
  expected.push_back(byte_id('x'));
  EXPECT_EQ(tok.encode(text), expected);
}

// ---- the facade ----

TEST(BpeFacadeTest, TokenizerDispatchesOnKind) {
  const json doc = make_doc({"ab"}, {{"a", "b"}});
  const Tokenizer tok = Tokenizer::from_bytes(TokenizerKind::kBpe, doc.dump(), kSource);
  EXPECT_EQ(tok.kind(), TokenizerKind::kBpe);
  ASSERT_NE(tok.bpe(), nullptr);
  EXPECT_EQ(tok.piece_count(), 257);
  EXPECT_THAT(tok.encode("ab a"), ElementsAre(256, byte_id(' '), byte_id('a')));
  EXPECT_EQ(tok.id_to_piece(256), "ab");
  EXPECT_EQ(tok.serialized_model(), doc.dump());

  const std::string path = ::testing::TempDir() + "bpe_facade_tokenizer.json";
  std::ofstream(path) << "\n  " << doc.dump();
  const Tokenizer from_file = Tokenizer::from_file(path);
  EXPECT_EQ(from_file.kind(), TokenizerKind::kBpe);
  EXPECT_THAT(from_file.encode("ab"), ElementsAre(256));
  EXPECT_NO_THROW(check_same_vocabulary(from_file, tok));

  const Tokenizer spm = Tokenizer::from_file(testing::fixture("tiny.model"));
  EXPECT_EQ(spm.kind(), TokenizerKind::kSentencePiece);
  EXPECT_EQ(spm.bpe(), nullptr);
  try {
    check_same_vocabulary(spm, tok);
    ADD_FAILURE() << "no DataError";
  } catch (const DataError& e) {
    EXPECT_THAT(std::string(e.what()), HasSubstr("it is a sentencepiece tokenizer"));
  }
}

TEST(BpeFacadeTest, KindNamesAndFiles) {
  EXPECT_STREQ(tokenizer_kind_name(TokenizerKind::kBpe), "bpe");
  EXPECT_STREQ(tokenizer_kind_name(TokenizerKind::kSentencePiece), "sentencepiece");
  EXPECT_EQ(parse_tokenizer_kind("bpe"), TokenizerKind::kBpe);
  EXPECT_EQ(parse_tokenizer_kind("sentencepiece"), TokenizerKind::kSentencePiece);
  EXPECT_EQ(parse_tokenizer_kind("wordpiece"), std::nullopt);
  EXPECT_STREQ(default_tokenizer_file(TokenizerKind::kBpe), "tokenizer.json");
  EXPECT_STREQ(default_tokenizer_file(TokenizerKind::kSentencePiece), "tokenizer.model");
}

}  // namespace
}  // namespace quantppl
