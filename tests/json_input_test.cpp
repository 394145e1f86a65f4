#include "quantppl/json_input.h"

#include <sys/stat.h>
#include <unistd.h>

#include <fstream>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "quantppl/error.h"
#include "quantppl/regular_file.h"

namespace quantppl {
namespace {

using ::testing::HasSubstr;
using nlohmann::json;

std::string nested(int depth, const std::string& open = "[", const std::string& close = "]") {
  std::string s;
  for (int i = 0; i < depth; ++i) s += open;
  for (int i = 0; i < depth; ++i) s += close;
  return s;
}

TEST(JsonInputTest, NestingUpToTheLimitParsesBeyondIsADataError) {
  EXPECT_NO_THROW(parse_json(nested(kMaxJsonDepth), "s"));
  try {
    parse_json(nested(100000), "--check file 'c.json'");
    FAIL() << "no DataError";
  } catch (const DataError& e) {
    EXPECT_THAT(e.what(), HasSubstr("--check file 'c.json': not valid JSON: arrays/objects nested deeper than 64"));
  }
  EXPECT_THROW(parse_json(nested(kMaxJsonDepth + 1), "s"), DataError);
  // Objects count as much as arrays; unbalanced input is still caught before the parser.
  std::string objects;
  for (int i = 0; i < 1000; ++i) objects += "{\"a\":";
  EXPECT_THROW(parse_json(objects, "s"), DataError);
  EXPECT_THROW(parse_json(std::string(1 << 20, '['), "s"), DataError);
}

TEST(JsonInputTest, BracketsInsideStringsDoNotCount) {
  const std::string text = "{\"k\": \"" + std::string(1000, '[') + "\\\"" + std::string(1000, '{') + "\"}";
  EXPECT_EQ(parse_json(text, "s")["k"].get<std::string>().size(), 2001u);
}

TEST(JsonInputTest, SyntaxErrorsAreOneLineDataErrors) {
  for (const char* bad : {"", "{", "[1,]", "1e999", "{\"a\" 1}", "\xff"}) {
    try {
      parse_json(bad, "model 'm.pt': quantppl.json");
      ADD_FAILURE() << bad;
    } catch (const DataError& e) {
      EXPECT_THAT(e.what(), HasSubstr("model 'm.pt': quantppl.json: not valid JSON"));
      EXPECT_EQ(std::string(e.what()).find('\n'), std::string::npos);
    }
  }
}

TEST(JsonInputTest, TypedAccessorsNameTheFieldAndTheValue) {
  const json j = json::parse(R"({"n": 5, "f": 1.5, "s": "x", "b": true, "o": {"deep": [1]}, "big": 18446744073709551615})");
  const JsonReader r("packed model 'p': header");
  EXPECT_EQ(r.integer(j, "n", "", 0, 10), 5);
  EXPECT_EQ(r.number(j, "f"), 1.5);
  EXPECT_EQ(r.string(j, "s"), "x");
  EXPECT_TRUE(r.boolean(j, "b"));
  const auto message = [&](auto f) {
    try {
      f();
    } catch (const DataError& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  EXPECT_EQ(message([&] { r.integer(j, "f"); }), "packed model 'p': header: field 'f' must be an integer, got 1.5");
  EXPECT_EQ(message([&] { r.integer(j, "n", "", 6, 10); }), "packed model 'p': header: field 'n' must be in [6, 10], got 5");
  EXPECT_EQ(message([&] { r.string(r.object(j, "o"), "deep", "o"); }),
            "packed model 'p': header: field 'o.deep' must be a string, got [1]");
  EXPECT_EQ(message([&] { r.member(j, "missing", "layers[2]"); }),
            "packed model 'p': header: missing field 'layers[2].missing'");
  EXPECT_THAT(message([&] { r.integer(j, "big"); }), HasSubstr("field 'big' is out of range"));
  EXPECT_THAT(message([&] { r.boolean(j, "n"); }), HasSubstr("field 'n' must be true or false, got 5"));
  EXPECT_THAT(message([&] { r.require_object(json::array(), ""); }), HasSubstr("expected a JSON object, got a JSON array"));
}

TEST(RegularFileTest, OnlyRegularFilesWithinTheLimit) {
  const std::string dir = ::testing::TempDir();
  const std::string path = dir + "json_input_test.json";
  std::ofstream(path) << R"({"a": 1})";
  EXPECT_EQ(read_json_file(path, "--check file", 100)["a"], 1);
  try {
    read_json_file(path, "--check file", 4);
    FAIL();
  } catch (const DataError& e) {
    EXPECT_THAT(e.what(), HasSubstr("--check file '" + path + "' is 8 bytes, more than the 4 bytes limit for a --check file"));
  }
  EXPECT_THROW(read_json_file(dir, "--check file", 100), IoError);
  EXPECT_THROW(read_json_file(dir + "/no/such/file", "--check file", 100), IoError);
  EXPECT_THROW(RegularFile("/dev/zero", "model", 100), IoError);
  // A FIFO with no writer: open() would block forever without O_NONBLOCK.
  const std::string fifo = dir + "json_input_test.fifo";
  ::unlink(fifo.c_str());
  ASSERT_EQ(::mkfifo(fifo.c_str(), 0600), 0);
  try {
    RegularFile f(fifo, "model", 100);
    FAIL();
  } catch (const IoError& e) {
    EXPECT_THAT(e.what(), HasSubstr("model '" + fifo + "' is a FIFO (named pipe), expected a regular file"));
  }
  ::unlink(fifo.c_str());
  std::remove(path.c_str());
}

}  // namespace
}  // namespace quantppl
