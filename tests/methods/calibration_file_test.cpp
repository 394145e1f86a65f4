#include "quantppl/methods/calibration_file.h"

#include <sys/stat.h>
#include <unistd.h>

#include <cmath>
#include <cstring>
#include <fstream>
#include <sstream>

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>
#include <torch/torch.h>

#include "quantppl/error.h"
#include "quantppl/sha256.h"

namespace quantppl {
namespace {

using ::testing::HasSubstr;

const std::string kHashA(64, 'a');
const std::string kHashB(64, 'b');

std::string temp_path(const std::string& name) {
  return ::testing::TempDir() + "/calfile_" + std::to_string(::getpid()) + "_" + name;
}

// A symmetric PSD H = (2/N) X^T X from a seeded X, and its mean/max |x|.
LayerActivationStats make_layer(const std::string& name, int64_t in, int64_t tokens, int64_t shared, uint64_t seed) {
  torch::manual_seed(seed);
  const torch::Tensor x = torch::randn({tokens, in});
  LayerActivationStats s;
  s.name = name;
  s.in_features = in;
  s.tokens = tokens;
  s.hessian = torch::mm(x.t(), x) * (2.0 / tokens);
  s.hessian = (s.hessian + s.hessian.t()) / 2;
  s.mean_abs = x.abs().mean(0);
  s.max_abs = std::get<0>(x.abs().max(0));
  s.shared_input = shared;
  return s;
}

CalibrationStats make_stats() {
  CalibrationStats stats;
  stats.model_sha256 = kHashA;
  stats.text_path = "data/calibration.txt";
  stats.text_sha256 = kHashB;
  stats.tokens = 50;
  LayerActivationStats q = make_layer("enc.q", 8, 50, 0, 1);
  LayerActivationStats k = q;
  k.name = "enc.k";
  stats.layers = {q, k, make_layer("enc.o", 6, 50, 1, 2), make_layer("lm_head", 8, 49, -1, 3)};
  return stats;
}

std::string read_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

void write_bytes(const std::string& path, const std::string& bytes) {
  std::ofstream(path, std::ios::binary | std::ios::trunc) << bytes;
}

// A file from a header and data, with a correct SHA-256 trailer (so that only the field under
// test is wrong).
std::string build_raw(const std::string& h, const std::string& data) {
  std::string bytes(kCalibrationMagic, 8);
  for (int i = 0; i < 8; ++i) bytes += static_cast<char>((static_cast<uint64_t>(h.size()) >> (8 * i)) & 0xff);
  bytes += h + data;
  const std::string hex = sha256(bytes);
  for (int i = 0; i < 32; ++i) bytes += static_cast<char>(std::stoi(hex.substr(2 * i, 2), nullptr, 16));
  return bytes;
}

std::string build_file(const nlohmann::json& header, const std::string& data) { return build_raw(header.dump(), data); }

nlohmann::json header_of(const std::string& file_bytes) {
  uint64_t n = 0;
  for (int i = 0; i < 8; ++i) n |= static_cast<uint64_t>(static_cast<unsigned char>(file_bytes[8 + i])) << (8 * i);
  return nlohmann::json::parse(file_bytes.substr(16, n));
}

std::string data_of(const std::string& file_bytes) {
  uint64_t n = 0;
  for (int i = 0; i < 8; ++i) n |= static_cast<uint64_t>(static_cast<unsigned char>(file_bytes[8 + i])) << (8 * i);
  return file_bytes.substr(16 + n, file_bytes.size() - 16 - n - 32);
}

std::string expect_data_error(const std::string& bytes, const std::string& needle) {
  const std::string path = temp_path("hostile.qcal");
  write_bytes(path, bytes);
  try {
    read_calibration_stats(path);
    ADD_FAILURE() << "no error; expected one with '" << needle << "'";
  } catch (const DataError& e) {
    EXPECT_THAT(e.what(), HasSubstr(needle));
    EXPECT_THAT(e.what(), HasSubstr(path));
    ::unlink(path.c_str());
    return e.what();
  }
  ::unlink(path.c_str());
  return "";
}

class CalibrationFileTest : public ::testing::Test {
 protected:
  void SetUp() override {
    path_ = temp_path("good.qcal");
    write_calibration_stats(path_, make_stats(), /*force=*/true);
    good_ = read_bytes(path_);
  }
  void TearDown() override { ::unlink(path_.c_str()); }
  std::string path_;
  std::string good_;
};

TEST_F(CalibrationFileTest, RoundTripKeepsEverything) {
  const CalibrationStats written = make_stats();
  const CalibrationStats read = read_calibration_stats(path_);
  EXPECT_EQ(read.model_sha256, written.model_sha256);
  EXPECT_EQ(read.text_path, written.text_path);
  EXPECT_EQ(read.text_sha256, written.text_sha256);
  EXPECT_EQ(read.tokens, written.tokens);
  ASSERT_EQ(read.layers.size(), written.layers.size());
  for (size_t i = 0; i < read.layers.size(); ++i) {
    EXPECT_EQ(read.layers[i].name, written.layers[i].name);
    EXPECT_EQ(read.layers[i].in_features, written.layers[i].in_features);
    EXPECT_EQ(read.layers[i].tokens, written.layers[i].tokens);
    EXPECT_TRUE(torch::equal(read.layers[i].hessian, written.layers[i].hessian)) << i;
    EXPECT_TRUE(torch::equal(read.layers[i].mean_abs, written.layers[i].mean_abs)) << i;
    EXPECT_TRUE(torch::equal(read.layers[i].max_abs, written.layers[i].max_abs)) << i;
  }
  // q and k share one stored group; o and lm_head have their own.
  EXPECT_EQ(read.layers[0].shared_input, read.layers[1].shared_input);
  EXPECT_NE(read.layers[0].shared_input, read.layers[2].shared_input);
  EXPECT_NE(read.layers[2].shared_input, read.layers[3].shared_input);
  const nlohmann::json header = header_of(good_);
  EXPECT_EQ(header["groups"].size(), 3u);
  // 16 + header + (8*8 + 2*8 + 6*6 + 2*6 + 8*8 + 2*8) floats + 32.
  EXPECT_EQ(data_of(good_).size(), 4u * (80 + 48 + 80));
}

TEST_F(CalibrationFileTest, WriterRefusesExistingFileWithoutForce) {
  EXPECT_THROW(write_calibration_stats(path_, make_stats(), /*force=*/false), IoError);
  CalibrationStats bad = make_stats();
  bad.layers[2].hessian = torch::zeros({6, 5});
  EXPECT_THROW(write_calibration_stats(temp_path("bad.qcal"), bad, true), UsageError);
  bad = make_stats();
  bad.layers[1].tokens = 7;  // shares q's input but claims other tokens
  EXPECT_THROW(write_calibration_stats(temp_path("bad.qcal"), bad, true), UsageError);
}

TEST_F(CalibrationFileTest, TruncatedFilesAreDataErrors) {
  for (size_t cut : {size_t{0}, size_t{7}, size_t{15}, size_t{16}, size_t{40}, good_.size() / 2, good_.size() - 33,
                     good_.size() - 1}) {
    const std::string path = temp_path("cut.qcal");
    write_bytes(path, good_.substr(0, cut));
    EXPECT_THROW(read_calibration_stats(path), DataError) << "cut at " << cut;
    ::unlink(path.c_str());
  }
  std::string longer = good_ + "x";
  expect_data_error(longer, "truncated or corrupt");
}

TEST_F(CalibrationFileTest, ChecksumMismatchIsDataError) {
  std::string bad = good_;
  bad[bad.size() - 100] ^= 0x01;  // a bit of the data
  expect_data_error(bad, "field 'sha256'");
  bad = good_;
  bad[bad.size() - 1] ^= 0x01;  // a bit of the digest itself
  expect_data_error(bad, "the file is corrupt");
}

TEST_F(CalibrationFileTest, BadMagicAndHeaderLength) {
  std::string bad = good_;
  bad[0] = 'X';
  expect_data_error(bad, "not a quantppl calibration file");
  bad = good_;
  for (int i = 8; i < 16; ++i) bad[static_cast<size_t>(i)] = '\xff';  // 2^64 - 1
  expect_data_error(bad, "'header length'");
  bad = good_;
  bad[8] = 1;  // header of 1 byte... + garbage
  for (int i = 9; i < 16; ++i) bad[static_cast<size_t>(i)] = 0;
  expect_data_error(bad, "'header length'");
}

TEST_F(CalibrationFileTest, WrongShapesAndHugeSizesAreDataErrors) {
  const nlohmann::json header = header_of(good_);
  const std::string data = data_of(good_);
  nlohmann::json h = header;
  h["groups"][1]["in_features"] = 7;  // data holds 6x6
  expect_data_error(build_file(h, data), "truncated or corrupt");
  h = header;
  h["groups"][0]["in_features"] = 70000;  // beyond the limit
  expect_data_error(build_file(h, data), "groups[0].in_features");
  h = header;
  h["groups"][0]["in_features"] = 60000;  // within the limit, but 14 GB of data in a tiny file
  expect_data_error(build_file(h, data), "more than the file's");
  h = header;
  h["groups"][0]["in_features"] = -8;
  expect_data_error(build_file(h, data), "groups[0].in_features");
  h = header;
  h["groups"][0]["tokens"] = 0;
  expect_data_error(build_file(h, data), "groups[0].tokens");
  h = header;
  h["layers"][1]["group"] = 3;
  expect_data_error(build_file(h, data), "layers[1].group");
  h = header;
  h["layers"][1]["name"] = "enc.q";
  expect_data_error(build_file(h, data), "listed twice");
  h = header;
  h["model_sha256"] = "abc";
  expect_data_error(build_file(h, data), "model_sha256");
  h = header;
  h["format_version"] = 2;
  expect_data_error(build_file(h, data), "format_version");
  h = header;
  h.erase("layers");
  expect_data_error(build_file(h, data), "missing field 'layers'");
  h = header;
  h["layers"] = nlohmann::json::array();
  expect_data_error(build_file(h, data), "at least one layer");
  expect_data_error(build_file(nlohmann::json::array(), data), "JSON object");
  expect_data_error(build_raw("{{not json", data), "not valid JSON");
}

TEST_F(CalibrationFileTest, ImplausibleValuesAreDataErrors) {
  const nlohmann::json header = header_of(good_);
  const std::string data = data_of(good_);
  auto with_float = [&](size_t index, float value) {
    std::string d = data;
    std::memcpy(d.data() + 4 * index, &value, 4);
    return build_file(header, d);
  };
  expect_data_error(with_float(1, std::nanf("")), "groups[0] hessian holds NaN or Inf");
  expect_data_error(with_float(1, 1e30f), "not symmetric");
  expect_data_error(with_float(0, -1.0f), "negative diagonal");
  expect_data_error(with_float(64, -1.0f), "mean_abs");
  expect_data_error(with_float(72, INFINITY), "max_abs");
}

TEST(CalibrationFileErrors, MissingAndNonRegularFilesAreIoErrors) {
  EXPECT_THROW(read_calibration_stats(temp_path("does-not-exist.qcal")), IoError);
  EXPECT_THROW(read_calibration_stats(::testing::TempDir()), IoError);
  EXPECT_THROW(read_calibration_stats("/dev/zero"), IoError);
}

}  // namespace
}  // namespace quantppl
