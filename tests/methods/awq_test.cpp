// AWQ (include/quantppl/methods/awq.h) against: RTN (alpha = 0 is round to
// nearest bit for bit), the independent Python search
// tests/reference/awq_reference.py on the same weights and statistics, and
// AWQ+GPTQ's reduction to AWQ when H is diagonal.
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
#include "quantppl/methods/awq.h"
#include "quantppl/quantize.h"
#include "uniform_test_format.h"

namespace quantppl {
namespace {

using testing::UniformTestFormat;

constexpr double kMinSameAlphaShare = 0.95;  // issue 16
constexpr double kMaxErrorGap = 1e-4;        // relative, where alpha agrees

QuantConfig config_of(Scheme scheme, int bits, Granularity granularity, int64_t group = 0) {
  QuantConfig c = numpy_seed_config(scheme, bits);
  c.granularity = granularity;
  c.group_size = group;
  return c;
}

// Statistics of activations with a few large channels (and optionally dead
// ones), as calibration would capture them.
LayerActivationStats stats_of(int64_t in, uint64_t seed, int64_t dead = 0) {
  torch::manual_seed(seed);
  torch::Tensor channel_scale = torch::rand({in}, torch::kFloat64) + 0.2;
  channel_scale.slice(0, 0, in / 16).mul_(10.0);
  channel_scale = channel_scale.index_select(0, torch::randperm(in, torch::kLong));
  if (dead > 0) channel_scale.slice(0, in - dead).zero_();
  const int64_t tokens = 1024;
  const torch::Tensor mix = torch::eye(in, torch::kFloat64) + 0.2 * torch::randn({in, in}, torch::kFloat64) / std::sqrt(in);
  const torch::Tensor x = torch::randn({tokens, in}, torch::kFloat64).mm(mix) * channel_scale;
  LayerActivationStats st;
  st.in_features = in;
  st.tokens = tokens;
  st.hessian = x.t().mm(x) * (2.0 / tokens);
  st.mean_abs = x.abs().mean(0);
  st.max_abs = std::get<0>(x.abs().max(0));
  return st;
}

TEST(AwqTest, AlphaZeroIsRoundToNearestExactly) {
  const LayerActivationStats st = stats_of(128, 1, /*dead=*/3);
  EXPECT_TRUE(torch::equal(awq_scales(st.mean_abs, 0.0, "l"), torch::ones({128})));
  torch::manual_seed(2);
  const torch::Tensor w = torch::randn({64, 128}) * 0.05f;
  for (const auto& config : {config_of(Scheme::kAbsmax, 4, Granularity::kPerGroup, 32),
                             config_of(Scheme::kZeroPoint, 3, Granularity::kPerChannel)}) {
    AwqOptions options;
    options.grid = 1;  // alpha = 0 only
    const AwqResult r = awq_search({{"l", w, &st}}, UniformTestFormat(config), options);
    EXPECT_EQ(r.alpha, 0.0);
    EXPECT_TRUE(torch::equal(r.weights[0], fake_quantize(w, config)));
    EXPECT_EQ(r.output_errors[0], r.rtn_output_errors[0]);
  }
}

TEST(AwqTest, ScalesFollowTheDefinition) {
  // m = [1, 4, 0, 16], alpha = 0.5: m^a = [1, 2, -, 4], norm sqrt(4 * 1) = 2.
  const torch::Tensor s = awq_scales(torch::tensor({1.0, 4.0, 0.0, 16.0}), 0.5, "l");
  EXPECT_TRUE(torch::equal(s, torch::tensor({0.5f, 1.0f, 1.0f, 2.0f})));
  EXPECT_THROW(awq_scales(torch::tensor({1.0, -1.0}), 0.5, "l"), DataError);
}

TEST(AwqTest, NeverWorseThanRtnAndGptqOnDiagonalHessianIsAwq) {
  const LayerActivationStats st = stats_of(256, 7);
  torch::manual_seed(8);
  const torch::Tensor w = torch::randn({96, 256}) * 0.05f;
  const UniformTestFormat format(config_of(Scheme::kAbsmax, 3, Granularity::kPerGroup, 64));
  const AwqResult r = awq_search({{"l", w, &st}}, format);
  EXPECT_LE(r.output_errors[0], r.rtn_output_errors[0]);
  EXPECT_EQ(r.search_errors.size(), 20u);
  // With a diagonal H, GPTQ on the scaled weight is RTN of it: W_hat = Q(W s) / s.
  const torch::Tensor diag_h = torch::diag(st.hessian.diagonal());
  const GptqResult g = awq_gptq_quantize(w, diag_h, r.scales, format, "l");
  EXPECT_TRUE(torch::equal(g.weight, r.weights[0]));
  // AWQ+GPTQ on the full H beats AWQ alone.
  const GptqResult full = awq_gptq_quantize(w, st.hessian, r.scales, format, "l");
  EXPECT_LT(output_error(w, full.weight, st.hessian), r.output_errors[0]);
}

// The search's errors (float32 products over blocks of 128 inputs using H's
// symmetry, awq.cpp) against the plain float64 trace of gptq.h's output_error,
// with in_features not a multiple of the block.
TEST(AwqTest, SearchErrorsAreTheFloat64OutputErrors) {
  const LayerActivationStats st = stats_of(320, 11, /*dead=*/2);
  torch::manual_seed(12);
  const torch::Tensor w1 = torch::randn({48, 320}) * 0.05f;
  const torch::Tensor w2 = torch::randn({80, 320}) * 0.05f;
  const UniformTestFormat format(config_of(Scheme::kAbsmax, 4, Granularity::kPerGroup, 64));
  const AwqResult r = awq_search({{"a", w1, &st}, {"b", w2, &st}}, format);
  const std::vector<torch::Tensor> ws = {w1, w2};
  for (size_t l = 0; l < ws.size(); ++l) {
    const double exact = output_error(ws[l], r.weights[l], st.hessian);
    EXPECT_NEAR(r.output_errors[l], exact, 1e-5 * exact) << l;
    const double rtn = output_error(ws[l], fake_quantize(ws[l], config_of(Scheme::kAbsmax, 4, Granularity::kPerGroup, 64)),
                                    st.hessian);
    EXPECT_NEAR(r.rtn_output_errors[l], rtn, 1e-5 * rtn) << l;
  }
  EXPECT_NEAR(r.search_errors[0], r.rtn_output_errors[0] + r.rtn_output_errors[1], 1e-12 * r.search_errors[0]);
}

void write_raw(const std::string& path, const torch::Tensor& t) {
  std::ofstream f(path, std::ios::binary);
  const torch::Tensor c = t.contiguous();
  f.write(static_cast<const char*>(c.data_ptr()), static_cast<std::streamsize>(c.nbytes()));
}

TEST(AwqTest, MatchesPythonReferenceSearch) {
  struct Group {
    int64_t in;
    std::vector<int64_t> outs;
    int64_t dead;
  };
  const std::vector<Group> shapes = {{256, {128, 128, 128}, 0}, {256, {384, 384}, 0}, {384, {256}, 5},
                                     {256, {64}, 0},            {128, {256, 256}, 2}, {384, {128}, 0}};
  for (const auto& config : {config_of(Scheme::kAbsmax, 4, Granularity::kPerGroup, 64),
                             config_of(Scheme::kZeroPoint, 3, Granularity::kPerChannel),
                             config_of(Scheme::kZeroPoint, 4, Granularity::kPerGroup, 128)}) {
    const UniformTestFormat format(config);
    char dir_template[] = "/tmp/quantppl_awq_XXXXXX";
    const std::string dir = mkdtemp(dir_template);
    nlohmann::json meta = {{"scheme", to_string(config.scheme)},
                           {"bits", config.bits},
                           {"granularity", std::string(kGranularityNames.name(config.granularity))},
                           {"group_size", config.group_size},
                           {"grid", 20},
                           {"groups", nlohmann::json::array()}};
    std::vector<AwqResult> ours;
    std::vector<LayerActivationStats> stats;
    stats.reserve(shapes.size());
    for (size_t g = 0; g < shapes.size(); ++g) {
      stats.push_back(stats_of(shapes[g].in, 100 + g, shapes[g].dead));
      const LayerActivationStats& st = stats.back();
      nlohmann::json group = {{"in", shapes[g].in}, {"m", "m" + std::to_string(g)}, {"layers", nlohmann::json::array()}};
      write_raw(dir + "/m" + std::to_string(g), st.mean_abs.to(torch::kFloat64));
      std::vector<AwqLayer> layers;
      for (size_t l = 0; l < shapes[g].outs.size(); ++l) {
        torch::manual_seed(200 + 10 * g + l);
        const torch::Tensor w = torch::randn({shapes[g].outs[l], shapes[g].in}) * 0.05f;
        const std::string tag = std::to_string(g) + "_" + std::to_string(l);
        write_raw(dir + "/w" + tag, w);
        write_raw(dir + "/h" + tag, st.hessian);
        group["layers"].push_back({{"out", shapes[g].outs[l]}, {"w", "w" + tag}, {"h", "h" + tag}});
        layers.push_back({"layer" + tag, w, &st});
      }
      meta["groups"].push_back(group);
      ours.push_back(awq_search(layers, format));
    }
    std::ofstream(dir + "/meta.json") << meta.dump();
    const nlohmann::json ref = nlohmann::json::parse(testing::run_command(
        testing::python() + " " +
        testing::shell_quote(std::string(QUANTPPL_SOURCE_DIR) + "/tests/reference/awq_reference.py") + " " +
        testing::shell_quote(dir)));
    std::system(("rm -rf " + testing::shell_quote(dir)).c_str());
    int same = 0;
    for (size_t g = 0; g < shapes.size(); ++g) {
      const nlohmann::json& rg = ref["groups"][g];
      if (rg["alpha"].get<double>() != ours[g].alpha) continue;
      ++same;
      for (size_t l = 0; l < ours[g].output_errors.size(); ++l) {
        const double expected = rg["errors"][l].get<double>();
        EXPECT_NEAR(ours[g].output_errors[l], expected, kMaxErrorGap * expected) << "group " << g << " layer " << l;
      }
    }
    EXPECT_GE(same, kMinSameAlphaShare * static_cast<double>(shapes.size()));
    // AWQ finds something better than RTN on activations with large channels.
    int improved = 0;
    for (const AwqResult& r : ours) improved += r.alpha > 0;
    EXPECT_GT(improved, 0);
  }
}

TEST(AwqTest, MismatchedStatisticsAreErrors) {
  const LayerActivationStats st = stats_of(64, 1);
  const UniformTestFormat format(config_of(Scheme::kAbsmax, 4, Granularity::kPerGroup, 32));
  EXPECT_THROW(awq_search({{"l", torch::zeros({8, 128}), &st}}, format), DataError);
  EXPECT_THROW(awq_search({{"l", torch::zeros({8, 64}), nullptr}}, format), DataError);
  EXPECT_THROW(awq_search({}, format), UsageError);
}

}  // namespace
}  // namespace quantppl
