#include "quantppl/tokenizer.h"

#include <fstream>
#include <iterator>

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "fixture_support.h"
#include "quantppl/error.h"

namespace quantppl {
namespace {

using ::testing::HasSubstr;
using testing::fixture;

std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

// The ids Python's sentencepiece gives for each text (the independent reference).
std::vector<std::vector<int64_t>> python_ids(const std::string& model, const std::vector<std::string>& texts) {
  const std::string texts_path = ::testing::TempDir() + "tokenizer_texts.json";
  std::ofstream(texts_path) << nlohmann::json(texts).dump();
  const std::string script =
      "import json, sys, sentencepiece as spm\n"
      "sp = spm.SentencePieceProcessor(model_file=sys.argv[1])\n"
      "print(json.dumps([sp.encode(t) for t in json.load(open(sys.argv[2], encoding='utf-8'))]))\n";
  const std::string out = testing::run_command(testing::python() + " -c " + testing::shell_quote(script) + " " +
                                               testing::shell_quote(model) + " " + testing::shell_quote(texts_path));
  return nlohmann::json::parse(out).get<std::vector<std::vector<int64_t>>>();
}

TEST(TokenizerTest, IdsEqualPythonSentencepiece) {
  const std::string model = fixture("tiny.model");
  const Tokenizer tok = Tokenizer::from_file(model);
  const std::vector<std::string> texts = {
      "A list is an ordered, mutable sequence of objects.",
      "  leading and trailing   whitespace  ",
      "line one\nline two\n\nline four",
      "Unicode: naïve café, ﬁ ligature (NFKC), Ω, 日本語, emoji 🙂",
      "x",
      "",
      read_file(QUANTPPL_SOURCE_DIR "/data/default_eval.txt"),
  };
  const auto expected = python_ids(model, texts);
  ASSERT_EQ(expected.size(), texts.size());
  for (size_t i = 0; i < texts.size(); ++i) {
    EXPECT_EQ(tok.encode(texts[i]), expected[i]) << "text #" << i;
  }
  EXPECT_GT(expected.back().size(), 1000u);  // the long text really was long
}

TEST(TokenizerTest, PieceCountAndSpecialPieces) {
  const Tokenizer tok = Tokenizer::from_file(fixture("tiny.model"));
  EXPECT_EQ(tok.piece_count(), 300);  // make_tiny_model.py trains vocab_size=300
  EXPECT_EQ(tok.id_to_piece(0), "<pad>");
  EXPECT_EQ(tok.id_to_piece(1), "</s>");
  EXPECT_EQ(tok.id_to_piece(2), "<unk>");
  EXPECT_THROW(tok.id_to_piece(300), UsageError);
}

TEST(TokenizerTest, FromBytesEqualsFromFile) {
  const std::string bytes = read_file(fixture("tiny.model"));
  const Tokenizer a = Tokenizer::from_bytes(bytes, "bytes");
  const Tokenizer b = Tokenizer::from_file(fixture("tiny.model"));
  EXPECT_EQ(a.encode("ordered sequence"), b.encode("ordered sequence"));
  EXPECT_EQ(a.serialized_model(), bytes);
}

TEST(TokenizerTest, MoveKeepsTheModelUsable) {
  Tokenizer a = Tokenizer::from_file(fixture("tiny.model"));
  const auto ids = a.encode("mutable list");
  Tokenizer b = std::move(a);
  EXPECT_EQ(b.encode("mutable list"), ids);
  Tokenizer c = Tokenizer::from_file(fixture("tiny.model"));
  c = std::move(b);
  EXPECT_EQ(c.encode("mutable list"), ids);
}

TEST(TokenizerTest, CorruptBytesAreADataErrorNamingTheSource) {
  try {
    Tokenizer::from_bytes("this is not a protobuf", "model 'x.pt': tokenizer.model");
    FAIL() << "expected DataError";
  } catch (const DataError& e) {
    EXPECT_THAT(e.what(), HasSubstr("model 'x.pt': tokenizer.model"));
    EXPECT_THAT(e.what(), HasSubstr("not a sentencepiece model"));
    EXPECT_EQ(std::string(e.what()).find('\n'), std::string::npos);
  }
  EXPECT_THROW(Tokenizer::from_bytes("", "empty"), DataError);
  const std::string bytes = read_file(fixture("tiny.model"));
  EXPECT_THROW(Tokenizer::from_bytes(bytes.substr(0, bytes.size() / 2), "truncated"), DataError);
}

TEST(TokenizerTest, MissingFileIsAnIoError) {
  try {
    Tokenizer::from_file("/nonexistent/spiece.model");
    FAIL() << "expected IoError";
  } catch (const IoError& e) {
    EXPECT_THAT(e.what(), HasSubstr("cannot open tokenizer '/nonexistent/spiece.model': No such file or directory"));
  }
  try {
    Tokenizer::from_file(testing::fixtures_dir());
    FAIL() << "expected IoError";
  } catch (const IoError& e) {
    EXPECT_THAT(e.what(), HasSubstr("is a directory"));
  }
}

TEST(TokenizerTest, ShimIsFound) {
  EXPECT_THAT(sentencepiece_shim_path(), HasSubstr("libquantppl_sentencepiece.so"));
}

}  // namespace
}  // namespace quantppl
