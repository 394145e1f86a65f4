#include "quantppl/model_metadata.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "quantppl/error.h"

namespace quantppl {
namespace {

using ::testing::HasSubstr;
using nlohmann::json;

json valid() {
  return json::parse(R"({
    "format_version": 1, "architecture": "t5", "vocab_size": 384,
    "pad_token_id": 0, "eos_token_id": 1, "decoder_start_token_id": 0, "max_length": 64,
    "source": {"checkpoint": "ckpt", "exported_by": "scripts/export_t5.py"},
    "config": {"d_model": 128}})");
}

// The DataError message for `j` (fails the test if parsing succeeds).
std::string error_for(const std::string& text) {
  try {
    parse_model_metadata(text, "model 'm.pt': quantppl.json");
  } catch (const DataError& e) {
    EXPECT_THAT(e.what(), HasSubstr("model 'm.pt': quantppl.json: "));
    EXPECT_EQ(std::string(e.what()).find('\n'), std::string::npos) << e.what();
    return e.what();
  }
  ADD_FAILURE() << "no DataError for " << text;
  return {};
}

std::string error_with(const char* key, const json& value) {
  json j = valid();
  j[key] = value;
  return error_for(j.dump());
}

std::string error_without(const char* key) {
  json j = valid();
  j.erase(key);
  return error_for(j.dump());
}

TEST(ModelMetadataTest, ParsesTheContractFields) {
  const std::string text = valid().dump();
  const ModelMetadata m = parse_model_metadata(text, "m");
  EXPECT_EQ(m.format_version, 1);
  EXPECT_EQ(m.architecture, "t5");
  EXPECT_EQ(m.vocab_size, 384);
  EXPECT_EQ(m.pad_token_id, 0);
  EXPECT_EQ(m.eos_token_id, 1);
  EXPECT_EQ(m.decoder_start_token_id, 0);
  EXPECT_EQ(m.max_length, 64);
  EXPECT_EQ(json::parse(m.source), valid()["source"]);
  EXPECT_EQ(m.variant, "");
  EXPECT_EQ(m.json_text, text);
}

TEST(ModelMetadataTest, InvalidJson) {
  EXPECT_THAT(error_for("{\"format_version\": 1,"), HasSubstr("not valid JSON"));
  EXPECT_THAT(error_for(""), HasSubstr("not valid JSON"));
  EXPECT_THAT(error_for("[1, 2]"), HasSubstr("expected a JSON object, got a JSON array"));
}

TEST(ModelMetadataTest, MissingFields) {
  for (const char* key : {"format_version", "architecture", "vocab_size", "pad_token_id", "eos_token_id",
                          "decoder_start_token_id", "max_length", "source"}) {
    EXPECT_THAT(error_without(key), HasSubstr(std::string("missing field '") + key + "'"));
  }
}

TEST(ModelMetadataTest, WrongTypes) {
  EXPECT_THAT(error_with("vocab_size", "384"), HasSubstr("field 'vocab_size' must be an integer, got \"384\""));
  EXPECT_THAT(error_with("vocab_size", 384.0), HasSubstr("must be an integer, got 384.0"));
  EXPECT_THAT(error_with("max_length", true), HasSubstr("field 'max_length' must be an integer, got true"));
  EXPECT_THAT(error_with("pad_token_id", nullptr), HasSubstr("field 'pad_token_id' must be an integer"));
  EXPECT_THAT(error_with("architecture", 5), HasSubstr("field 'architecture' must be a string"));
  EXPECT_THAT(error_with("source", "hub"), HasSubstr("field 'source' must be an object"));
  EXPECT_THAT(error_with("variant", 8), HasSubstr("field 'variant' must be a string"));
}

TEST(ModelMetadataTest, OutOfRangeValues) {
  EXPECT_THAT(error_with("vocab_size", -3), HasSubstr("field 'vocab_size' must be a positive integer, got -3"));
  EXPECT_THAT(error_with("vocab_size", 0), HasSubstr("got 0"));
  EXPECT_THAT(error_with("eos_token_id", 384), HasSubstr("field 'eos_token_id' must be in [0, vocab_size = 384), got 384"));
  EXPECT_THAT(error_with("pad_token_id", -1), HasSubstr("got -1"));
  EXPECT_THAT(error_with("decoder_start_token_id", 1000), HasSubstr("decoder_start_token_id"));
  EXPECT_THAT(error_with("max_length", 0), HasSubstr("field 'max_length' must be a positive integer, got 0"));
  EXPECT_THAT(error_with("max_length", json::parse("18446744073709551615")), HasSubstr("out of range"));
}

// Issue 20: metadata that would size gigabyte allocations is implausible, hence corrupt.
TEST(ModelMetadataTest, ImplausibleSizesAreDataErrors) {
  EXPECT_THAT(error_with("max_length", int64_t{1000000000000}),
              HasSubstr("field 'max_length' is 1000000000000, more than the plausible maximum 65536"));
  EXPECT_THAT(error_with("vocab_size", kMaxVocabSize + 1), HasSubstr("field 'vocab_size' is 4194305, more than the plausible maximum"));
  json j = valid();
  j["max_length"] = kMaxSequenceLength;
  j["vocab_size"] = kMaxVocabSize;
  EXPECT_EQ(parse_model_metadata(j.dump(), "m").max_length, kMaxSequenceLength);
  // Nesting beyond kMaxJsonDepth anywhere, even in a field nobody reads, and an oversized text.
  std::string deep = "{\"config\": ";
  for (int i = 0; i < 1000; ++i) deep += "[";
  EXPECT_THAT(error_for(deep), HasSubstr("nested deeper than 64 levels"));
  EXPECT_THAT(error_for(std::string(kMaxMetadataBytes + 1, ' ')), HasSubstr("limit for quantppl.json"));
}

TEST(ModelMetadataTest, UnsupportedVersionAndArchitecture) {
  EXPECT_THAT(error_with("format_version", 3),
              HasSubstr("format_version 3 is not supported (this quantppl reads version 1, 2)"));
  EXPECT_THAT(error_with("architecture", "bart"), HasSubstr("architecture 'bart' is not supported (expected \"t5\")"));
}

TEST(ModelMetadataTest, MetadataWithVariantAddsOrReplacesOnlyTheVariant) {
  const std::string with = metadata_with_variant(valid().dump(), "absmax:8");
  json expected = valid();
  expected["variant"] = "absmax:8";
  EXPECT_EQ(json::parse(with), expected);
  EXPECT_EQ(parse_model_metadata(with, "m").variant, "absmax:8");
  const std::string replaced = metadata_with_variant(with, "zeropoint:4");
  EXPECT_EQ(parse_model_metadata(replaced, "m").variant, "zeropoint:4");
  EXPECT_THROW(metadata_with_variant("not json", "v"), DataError);
}

}  // namespace
}  // namespace quantppl
