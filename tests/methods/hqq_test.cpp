// HQQ (include/quantppl/methods/hqq.h) against the `hqq` package's own default
// optimiser (tests/reference/hqq_reference.py runs it on the same weights), and
// against its l_p objective: never worse than the min-max start. hqq_prepare on
// every format with a zero-point grid: unpack(pack) bit-identical with its
// x_hat, and for q4_1 / q5_1 that x_hat against gguf-py's dequantization of
// the stored d, m and codes (tests/reference/hqq_gguf_reference.py).
#include <cctype>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <string>
#include <vector>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>
#include <torch/torch.h>
#include <unistd.h>

#include "../fixture_support.h"
#include "quantppl/error.h"
#include "quantppl/formats/format_table.h"
#include "quantppl/formats/uniform_format.h"
#include "quantppl/formats/packed_sections.h"
#include "quantppl/methods/hqq.h"

namespace quantppl {
namespace {

// Our block means are summed in float64, torch's in float32 (issue 16: 1e-4).
constexpr double kMaxZeroPointGap = 1e-4;

// A command prefix running a Python that can import the hqq package:
// PYTHONPATH=<dir> <python>, with the directory scripts/setup_python_env.sh
// installs it into (<venv>/hqq, or $QUANTPPL_HQQ_PATH) and the venv's or the
// test Python; "" if none can.
std::string python_with_hqq() {
  std::vector<std::string> dirs;
  if (const char* env = std::getenv("QUANTPPL_HQQ_PATH"); env != nullptr && *env != '\0') dirs.push_back(env);
  std::vector<std::string> pythons;
#ifdef QUANTPPL_VENV_DIR
  dirs.push_back(std::string(QUANTPPL_VENV_DIR) + "/hqq");
  pythons.push_back(std::string(QUANTPPL_VENV_DIR) + "/bin/python");
#endif
  dirs.push_back("");
  pythons.push_back(testing::python());
  for (const std::string& dir : dirs) {
    for (const std::string& py : pythons) {
      const std::string prefix = "PYTHONPATH=" + testing::shell_quote(dir) + " " + testing::shell_quote(py);
      if (std::system((prefix + " -c 'import hqq.core.optimize' >/dev/null 2>&1").c_str()) == 0) return prefix;
    }
  }
  return "";
}

void write_raw(const std::string& path, const torch::Tensor& t) {
  std::ofstream f(path, std::ios::binary);
  const torch::Tensor c = t.contiguous();
  f.write(static_cast<const char*>(c.data_ptr()), static_cast<std::streamsize>(c.nbytes()));
}

torch::Tensor read_f32(const std::string& path, int64_t n) {
  torch::Tensor t = torch::empty({n}, torch::kFloat32);
  std::ifstream f(path, std::ios::binary);
  f.read(static_cast<char*>(t.data_ptr()), static_cast<std::streamsize>(t.nbytes()));
  EXPECT_TRUE(f.good()) << path;
  return t;
}

// Weights like a trained layer's: Gaussian with heavier-tailed outliers and a
// few rows of a larger scale.
torch::Tensor layer_like_weight(int64_t out, int64_t in, uint64_t seed) {
  torch::manual_seed(seed);
  torch::Tensor w = torch::randn({out, in}) * 0.04f;
  const torch::Tensor outliers = torch::rand({out, in}) < 0.002;
  w = torch::where(outliers, w * 8.0f, w);
  w.slice(0, 0, out / 16).mul_(3.0f);
  return w;
}

double lp_objective(const torch::Tensor& w, const torch::Tensor& w_hat, double p) {
  return (w.to(torch::kFloat64) - w_hat.to(torch::kFloat64)).abs().pow(p).sum().item<double>();
}

struct HqqCase {
  int bits;
  int64_t group;
  int64_t out;
  int64_t in;
  float scale = 1.0f;  // > 5: residuals reach the shrink threshold (the powf path)
};

class HqqPackageTest : public ::testing::TestWithParam<HqqCase> {};

TEST_P(HqqPackageTest, ZeroPointsMatchThePackage) {
  const std::string py = python_with_hqq();
  if (py.empty()) GTEST_SKIP() << "the hqq package is not importable (scripts/setup_python_env.sh installs it)";
  const HqqCase c = GetParam();
  const torch::Tensor w = layer_like_weight(c.out, c.in, 40 + c.bits + c.group) * c.scale;
  const HqqResult ours = hqq_quantize(w, c.bits, c.group, "layer");

  char dir_template[] = "/tmp/quantppl_hqq_XXXXXX";
  const std::string dir = mkdtemp(dir_template);
  write_raw(dir + "/W.f32", w);
  std::ofstream(dir + "/meta.json") << nlohmann::json{{"out", c.out}, {"in", c.in}, {"bits", c.bits}, {"group", c.group}}.dump();
  const nlohmann::json info = nlohmann::json::parse(testing::run_command(
      py + " " +
      testing::shell_quote(std::string(QUANTPPL_SOURCE_DIR) + "/tests/reference/hqq_reference.py") + " " +
      testing::shell_quote(dir)));
  const int64_t blocks = info.at("blocks").get<int64_t>();
  ASSERT_EQ(blocks, ours.zero_point.numel());
  const torch::Tensor zero = read_f32(dir + "/zero.f32", blocks);
  const torch::Tensor k = read_f32(dir + "/k.f32", blocks);
  const torch::Tensor xhat = read_f32(dir + "/xhat.f32", w.numel()).reshape(w.sizes());
  std::system(("rm -rf " + testing::shell_quote(dir)).c_str());

  // The min-max inverse scale is the same float32 arithmetic: bit-identical.
  EXPECT_TRUE(torch::equal(ours.inverse_scale, k));
  // What hqq_prepare stores for the same grid is exactly these parameters.
  {
    const std::string spec =
        "zeropoint:" + std::to_string(c.bits) + ":" + (c.group == 0 ? "tensor" : "group" + std::to_string(c.group));
    const PackedWeight packed = hqq_prepare(w, *parse_format(spec), "layer")->pack(w);
    ASSERT_EQ(packed.sections.size(), 3u);
    const PackedSection& z = packed.sections[2];
    ASSERT_EQ(z.dtype, "f32");
    ASSERT_EQ(z.bytes.size(), 4 * static_cast<size_t>(blocks));
    torch::Tensor stored = torch::empty({blocks}, torch::kFloat32);
    std::memcpy(stored.data_ptr(), z.bytes.data(), z.bytes.size());
    EXPECT_TRUE(torch::equal(stored, ours.zero_point)) << spec;
  }
  const torch::Tensor gap = (ours.zero_point.to(torch::kFloat64) - zero.to(torch::kFloat64)).abs();
  const torch::Tensor bound = kMaxZeroPointGap * zero.to(torch::kFloat64).abs().clamp_min(1.0);
  EXPECT_TRUE((gap <= bound).all().item<bool>())
      << "largest zero-point gap " << gap.max().item<double>() << " after " << ours.iterations << " iterations";
  // Zero points equal to ~1e-7: the same codes (x_hat within half a step 1/k
  // of each other), except where w * k + z lies that close to a rounding tie.
  const torch::Tensor k_per_weight = k.repeat_interleave(w.numel() / blocks).view(w.sizes());
  const double same = ((ours.weight - xhat).abs() * k_per_weight).lt(0.5f).to(torch::kFloat64).mean().item<double>();
  EXPECT_GE(same, 0.999);
  std::cout << "[ hqq ] bits " << c.bits << " group " << c.group << ": " << ours.iterations
            << " iterations, largest zero gap " << gap.max().item<double>() << ", same weights " << same << "\n";
}

INSTANTIATE_TEST_SUITE_P(Shapes, HqqPackageTest,
                         ::testing::Values(HqqCase{4, 64, 256, 512}, HqqCase{3, 64, 384, 256},
                                           HqqCase{2, 128, 256, 384}, HqqCase{4, 128, 512, 1024},
                                           HqqCase{8, 32, 64, 256}, HqqCase{3, 256, 128, 256},
                                           HqqCase{4, 0, 64, 128}, HqqCase{2, 64, 128, 256, 20.0f},
                                           HqqCase{3, 32, 64, 512, 8.0f}));

TEST(HqqTest, LpObjectiveNeverWorseThanMinMax) {
  for (const int bits : {2, 3, 4, 5, 8}) {
    for (const int64_t group : {32, 64, 128, 256}) {
      for (const uint64_t seed : {1, 2, 3}) {
        const torch::Tensor w = layer_like_weight(128, 256, seed * 100 + bits);
        const HqqResult r = hqq_quantize(w, bits, group, "layer");
        const double hqq = lp_objective(w, r.weight, 0.7);
        const double min_max = lp_objective(w, hqq_min_max_fake_quantize(w, bits, group, "layer"), 0.7);
        EXPECT_LE(hqq, min_max) << "bits " << bits << " group " << group << " seed " << seed;
      }
    }
  }
}

TEST(HqqTest, ZeroBlockStaysZeroAndResultIsOnTheGrid) {
  torch::Tensor w = layer_like_weight(8, 128, 5);
  w.slice(1, 0, 64).zero_();
  const HqqResult r = hqq_quantize(w, 4, 64, "layer");
  EXPECT_TRUE((r.weight.slice(1, 0, 64) == 0).all().item<bool>());
  // Every weight is (q - z) / k for an integer code q in [0, 15].
  const torch::Tensor k = r.inverse_scale.view({8, 2, 1});
  const torch::Tensor z = r.zero_point.view({8, 2, 1});
  const torch::Tensor q = r.weight.view({8, 2, 64}) * k + z;
  EXPECT_LT((q - q.round()).abs().max().item<float>(), 1e-3f);
  EXPECT_GE(q.round().min().item<float>(), 0.0f);
  EXPECT_LE(q.round().max().item<float>(), 15.0f);
}

TEST(HqqTest, BadInputsAreErrors) {
  torch::Tensor w = layer_like_weight(8, 128, 5);
  EXPECT_THROW(hqq_quantize(w, 9, 64, "layer"), UsageError);
  EXPECT_THROW(hqq_quantize(w, 4, 48, "layer"), UsageError);
  w[1][2] = NAN;
  try {
    hqq_quantize(w, 4, 64, "dec.0.wo");
    ADD_FAILURE() << "no error";
  } catch (const DataError& e) {
    EXPECT_NE(std::string(e.what()).find("dec.0.wo"), std::string::npos) << e.what();
  }
}

// ---------------------------------------------------------------------------
// hqq_prepare on formats
// ---------------------------------------------------------------------------

bool bits_equal(const torch::Tensor& a, const torch::Tensor& b) {
  // Bit patterns, so that -0.0 and +0.0 differ.
  return a.sizes() == b.sizes() && torch::equal(a.contiguous().view(torch::kInt32), b.contiguous().view(torch::kInt32));
}

torch::Tensor fake_quantized(const PreparedWeight& p, const torch::Tensor& w) {
  torch::Tensor dst = torch::empty_like(w);
  p.fake_quantize_into(w, dst);
  return dst;
}

int64_t section_bytes_total(const PackedWeight& p) {
  int64_t n = 0;
  for (const PackedSection& s : p.sections) n += static_cast<int64_t>(s.bytes.size());
  return n;
}

class HqqFormatTest : public ::testing::TestWithParam<std::string> {};

TEST_P(HqqFormatTest, UnpackOfPackIsBitIdenticalWithXHat) {
  const std::string spec = GetParam();
  const std::shared_ptr<const WeightFormat> format = parse_format(spec);
  for (const float scale : {1.0f, 30.0f}) {  // 30: residuals beyond the shrink threshold (the exact path)
    torch::Tensor w = layer_like_weight(96, 256, 7) * scale;
    w.slice(1, 0, 128).select(0, 3).zero_();  // all-zero blocks (all but per tensor)
    w.slice(1, 128, 256).select(0, 4).fill_(0.25f);  // constant blocks
    int iterations = 0;
    const auto prepared = hqq_prepare(w, *format, "enc.0.q", {}, &iterations);
    EXPECT_GE(iterations, 1);
    const torch::Tensor x_hat = fake_quantized(*prepared, w);
    const PackedWeight packed = prepared->pack(w);
    EXPECT_TRUE(bits_equal(format->unpack(packed, "enc.0.q"), x_hat)) << spec << " scale " << scale;
    ASSERT_TRUE(prepared->packed_bytes().has_value());
    EXPECT_EQ(section_bytes_total(packed), *prepared->packed_bytes()) << spec;
    // In place (src == dst) gives the same.
    torch::Tensor inplace = w.clone();
    prepared->fake_quantize_into(inplace, inplace);
    EXPECT_TRUE(bits_equal(inplace, x_hat)) << spec;
    if (spec.rfind("zeropoint", 0) != 0) {
      // q*_1 stores d, m as float16 (4 bytes a block of 32): bits per weight as the format's.
      EXPECT_EQ(*prepared->packed_bytes(), format->packed_bytes(96, 256)) << spec;
      continue;
    }
    // The uniform grid stores 1/k and z as float32: x_hat is hqq_quantize's weight, bit for bit,
    // and the zero points' 4 bytes replace the int16's 2.
    const auto* uniform = dynamic_cast<const UniformFormat*>(format.get());
    ASSERT_NE(uniform, nullptr) << spec;
    const int64_t g = format->group_columns(256, "enc.0.q");
    const HqqResult r = hqq_quantize(w, uniform->config().bits, g, "enc.0.q");
    EXPECT_TRUE(bits_equal(x_hat, r.weight)) << spec;
    EXPECT_EQ(r.iterations, iterations);
    const int64_t blocks = r.zero_point.numel();
    EXPECT_EQ(*prepared->packed_bytes(), format->packed_bytes(96, 256) + 2 * blocks) << spec;
  }
}

TEST_P(HqqFormatTest, AllZeroWeightStaysZero) {
  const std::shared_ptr<const WeightFormat> format = parse_format(GetParam());
  const torch::Tensor w = torch::zeros({8, 128});
  const auto prepared = hqq_prepare(w, *format, "layer");
  const torch::Tensor x_hat = fake_quantized(*prepared, w);
  EXPECT_TRUE((x_hat == 0).all().item<bool>());
  EXPECT_TRUE(bits_equal(format->unpack(prepared->pack(w), "layer"), x_hat));
}

INSTANTIATE_TEST_SUITE_P(Formats, HqqFormatTest,
                         ::testing::Values("zeropoint:2:group64", "zeropoint:3:group128", "zeropoint:4:group32",
                                           "zeropoint:4:group64", "zeropoint:4:channel", "zeropoint:8:channel",
                                           "zeropoint:4:tensor", "zeropoint:5:group64:minmax", "q4_1", "q5_1"),
                         [](const ::testing::TestParamInfo<std::string>& info) {
                           std::string n = info.param;
                           for (char& ch : n) ch = std::isalnum(static_cast<unsigned char>(ch)) ? ch : '_';
                           return n;
                         });

// The l_p objective HQQ minimises, of what the stored file computes, against
// the format's own min-max rounding of the same weight.
TEST(HqqFormatObjectiveTest, NeverWorseThanTheFormatsMinMax) {
  for (const std::string spec : {"zeropoint:3:group64", "zeropoint:4:group128", "zeropoint:4:channel", "q4_1", "q5_1"}) {
    const std::shared_ptr<const WeightFormat> format = parse_format(spec);
    for (const uint64_t seed : {1, 2, 3}) {
      const torch::Tensor w = layer_like_weight(128, 512, seed);
      const torch::Tensor hqq = fake_quantized(*hqq_prepare(w, *format, "layer"), w);
      torch::Tensor rtn = torch::empty_like(w);
      format->fake_quantize_into(w, rtn, "layer");
      EXPECT_LE(lp_objective(w, hqq, 0.7), lp_objective(w, rtn, 0.7)) << spec << " seed " << seed;
    }
  }
}

void expect_usage_error(const std::string& spec, const std::string& want) {
  const torch::Tensor w = layer_like_weight(8, 128, 3);
  try {
    hqq_prepare(w, *parse_format(spec), "layer");
    ADD_FAILURE() << spec << ": no error";
  } catch (const UsageError& e) {
    EXPECT_NE(std::string(e.what()).find(want), std::string::npos) << spec << ": " << e.what();
  }
}

TEST(HqqFormatErrorsTest, FormatsWithoutAZeroPointGridAreUsageErrors) {
  for (const std::string spec : {"absmax:4:group64", "q4_0", "q8_0", "q5_0", "nf4:group64", "mxfp4"}) {
    const std::string canonical = parse_format(spec)->spec();
    expect_usage_error(spec, "hqq applies to zero-point grids (zeropoint:B:..., q4_1, q5_1), not '" + canonical + "'");
  }
}

TEST(HqqFormatErrorsTest, RangeSearchesAndTheTutorialArithmeticAreRefused) {
  expect_usage_error("zeropoint:4:channel:mse", "use zeropoint:4:channel");
  expect_usage_error("zeropoint:4:group64:p99.9", "use zeropoint:4:group64");
  expect_usage_error("zeropoint:4:group64:minmax:tutorial", "use zeropoint:4:group64");
}

TEST(HqqFormatErrorsTest, BadWeightsAreErrorsNamingTheLayer) {
  const std::shared_ptr<const WeightFormat> q41 = parse_format("q4_1");
  EXPECT_THROW(hqq_prepare(layer_like_weight(8, 48, 3), *q41, "layer"), UsageError);  // 32 does not divide 48
  EXPECT_THROW(hqq_prepare(layer_like_weight(8, 128, 3), *parse_format("zeropoint:4:group48"), "layer"), UsageError);
  torch::Tensor w = layer_like_weight(8, 128, 3);
  w[2][5] = INFINITY;
  try {
    hqq_prepare(w, *q41, "dec.1.wo");
    ADD_FAILURE() << "no error";
  } catch (const DataError& e) {
    EXPECT_NE(std::string(e.what()).find("dec.1.wo"), std::string::npos) << e.what();
  }
  // Beyond float16: the block's minimum cannot be stored as m.
  torch::Tensor big = layer_like_weight(8, 128, 3);
  big[0][0] = -1e6f;
  EXPECT_THROW(hqq_prepare(big, *q41, "layer"), DataError);
  EXPECT_NO_THROW(hqq_prepare(big, *parse_format("zeropoint:4:group64"), "layer"));
}

// q4_1 / q5_1 with HQQ: the stored file's x_hat equals gguf-py's dequantization
// of the same d, m and codes; the codes, d and m are HQQ's k and z through the
// header's rules, recomputed in numpy.
TEST(HqqGgufTest, StoredFileEqualsGgufPyDequantize) {
#ifdef QUANTPPL_VENV_DIR
  const std::string py = std::string(QUANTPPL_VENV_DIR) + "/bin/python";
#else
  const std::string py = testing::python();
#endif
  if (std::system((testing::shell_quote(py) + " -c 'import gguf' >/dev/null 2>&1").c_str()) != 0) {
    GTEST_SKIP() << "the gguf package is not importable by " << py << " (scripts/setup_python_env.sh installs it)";
  }
  for (const auto& [spec, bits] : {std::pair<std::string, int>{"q4_1", 4}, {"q5_1", 5}}) {
    for (const float scale : {1.0f, 30.0f}) {
      torch::Tensor w = layer_like_weight(64, 512, 11) * scale;
      w.slice(1, 0, 32).select(0, 1).zero_();
      const std::shared_ptr<const WeightFormat> format = parse_format(spec);
      const HqqParams params = hqq_optimize(w, bits, 32, "layer");
      const auto prepared = hqq_prepare(w, *format, "layer");
      const torch::Tensor x_hat = fake_quantized(*prepared, w);
      const PackedWeight packed = prepared->pack(w);
      ASSERT_EQ(packed.sections.size(), 3u);
      const int64_t blocks = w.numel() / 32;
      const std::vector<int32_t> codes = unpack_codes(packed.sections[0].bytes, w.numel(), bits);

      char dir_template[] = "/tmp/quantppl_hqq_gguf_XXXXXX";
      const std::string dir = mkdtemp(dir_template);
      write_raw(dir + "/W.f32", w);
      write_raw(dir + "/k.f32", torch::from_blob(const_cast<float*>(params.inverse_scale.data()), {blocks}));
      write_raw(dir + "/z.f32", torch::from_blob(const_cast<float*>(params.zero_point.data()), {blocks}));
      write_raw(dir + "/codes.i32", torch::from_blob(const_cast<int32_t*>(codes.data()), {w.numel()}, torch::kInt32));
      std::ofstream(dir + "/d.u16", std::ios::binary) << packed.sections[1].bytes;
      std::ofstream(dir + "/m.u16", std::ios::binary) << packed.sections[2].bytes;
      std::ofstream(dir + "/meta.json") << nlohmann::json{{"out", 64}, {"in", 512}, {"bits", bits}}.dump();
      const nlohmann::json info = nlohmann::json::parse(testing::run_command(
          testing::shell_quote(py) + " " +
          testing::shell_quote(std::string(QUANTPPL_SOURCE_DIR) + "/tests/reference/hqq_gguf_reference.py") + " " +
          testing::shell_quote(dir)));
      const torch::Tensor want = read_f32(dir + "/xhat.f32", w.numel()).view(w.sizes());
      std::system(("rm -rf " + testing::shell_quote(dir)).c_str());
      EXPECT_EQ(info.at("blocks").get<int64_t>(), blocks);
      EXPECT_EQ(info.at("codes_differ").get<int64_t>(), 0) << spec << " scale " << scale;
      EXPECT_EQ(info.at("d_differ").get<int64_t>(), 0) << spec << " scale " << scale;
      EXPECT_EQ(info.at("m_differ").get<int64_t>(), 0) << spec << " scale " << scale;
      EXPECT_TRUE(bits_equal(x_hat, want)) << spec << " scale " << scale;
    }
  }
}

}  // namespace
}  // namespace quantppl
