// HQQ (include/quantppl/methods/hqq.h) against the `hqq` package's own default
// optimiser (tests/reference/hqq_reference.py runs it on the same weights), and
// against its l_p objective: never worse than the min-max start.
#include <cstdlib>
#include <fstream>
#include <string>
#include <vector>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>
#include <torch/torch.h>
#include <unistd.h>

#include "../fixture_support.h"
#include "quantppl/error.h"
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

}  // namespace
}  // namespace quantppl
