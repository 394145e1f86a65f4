// apply_method (include/quantppl/methods/apply_method.h): each method's
// per-layer result is what the method's own function gives, AWQ shares one
// scale per shared_input group, and the RTN/method output errors are reported.
#include <string>
#include <vector>

#include <gtest/gtest.h>
#include <torch/torch.h>

#include "quantppl/error.h"
#include "quantppl/formats/uniform_format.h"
#include "quantppl/methods/apply_method.h"
#include "quantppl/quantize.h"
#include "uniform_test_format.h"

namespace quantppl {
namespace {

using testing::UniformTestFormat;

LayerActivationStats stats_of(int64_t in, uint64_t seed, int64_t shared_input) {
  torch::manual_seed(seed);
  const torch::Tensor scale = torch::rand({in}, torch::kFloat64) * 4 + 0.1;
  const torch::Tensor mix = torch::eye(in, torch::kFloat64) + 0.3 * torch::randn({in, in}, torch::kFloat64) / std::sqrt(in);
  const torch::Tensor x = torch::randn({1024, in}, torch::kFloat64).mm(mix) * scale;
  LayerActivationStats st;
  st.in_features = in;
  st.tokens = 1024;
  st.hessian = (x.t().mm(x) * (2.0 / 1024)).to(torch::kFloat32);
  st.mean_abs = x.abs().mean(0).to(torch::kFloat32);
  st.max_abs = std::get<0>(x.abs().max(0)).to(torch::kFloat32);
  st.shared_input = shared_input;
  return st;
}

QuantConfig group_config(Scheme scheme, int bits, int64_t group) {
  QuantConfig c = numpy_seed_config(scheme, bits);
  c.granularity = Granularity::kPerGroup;
  c.group_size = group;
  return c;
}

struct Model {
  std::vector<LayerActivationStats> stats;
  std::vector<LayerToQuantize> layers;
};

// q, k (sharing input 0), o (its own input 1), lm_head (no group id).
Model small_model() {
  Model m;
  m.stats.reserve(3);
  m.stats.push_back(stats_of(128, 1, 0));
  m.stats.push_back(stats_of(64, 2, 1));
  m.stats.push_back(stats_of(128, 3, -1));
  torch::manual_seed(4);
  m.layers = {{"q", torch::randn({64, 128}) * 0.05f, &m.stats[0]},
              {"k", torch::randn({64, 128}) * 0.05f, &m.stats[0]},
              {"o", torch::randn({128, 64}) * 0.05f, &m.stats[1]},
              {"lm_head", torch::randn({96, 128}) * 0.05f, &m.stats[2]}};
  return m;
}

TEST(ApplyMethodTest, EachMethodIsItsOwnFunction) {
  const Model m = small_model();
  const QuantConfig config = group_config(Scheme::kZeroPoint, 3, 32);
  const UniformTestFormat format(config);
  MethodChoice choice;
  const auto rtn = apply_method(m.layers, format, choice);
  choice.kind = MethodKind::kGptq;
  const auto gptq = apply_method(m.layers, format, choice);
  choice.kind = MethodKind::kHqq;  // on the real format: HQQ needs its zero-point grid (hqq_prepare)
  const auto hqq = apply_method(m.layers, UniformFormat(config), choice);
  for (size_t i = 0; i < m.layers.size(); ++i) {
    const LayerToQuantize& l = m.layers[i];
    EXPECT_TRUE(torch::equal(rtn[i].weight, fake_quantize(l.weight, config)));
    EXPECT_EQ(rtn[i].relative_error, rtn[i].rtn_relative_error);
    EXPECT_TRUE(torch::equal(gptq[i].weight, gptq_quantize(l.weight, l.stats->hessian, format, l.name).weight));
    EXPECT_LT(gptq[i].relative_error, gptq[i].rtn_relative_error) << l.name;
    EXPECT_EQ(gptq[i].rtn_relative_error, rtn[i].relative_error);
    EXPECT_TRUE(torch::equal(hqq[i].weight, hqq_quantize(l.weight, 3, 32, l.name).weight));
    EXPECT_GT(hqq[i].hqq_iterations, 0);
  }
  EXPECT_EQ(method_label(MethodKind::kAwqGptq), "awq+gptq");
}

TEST(ApplyMethodTest, AwqSharesOneScalePerInput) {
  const Model m = small_model();
  const UniformTestFormat format(group_config(Scheme::kAbsmax, 3, 32));
  MethodChoice choice;
  choice.kind = MethodKind::kAwq;
  const auto awq = apply_method(m.layers, format, choice);
  const AwqResult qk = awq_search({{"q", m.layers[0].weight, m.layers[0].stats}, {"k", m.layers[1].weight, m.layers[1].stats}},
                                  format);
  EXPECT_EQ(awq[0].awq_alpha, qk.alpha);
  EXPECT_EQ(awq[1].awq_alpha, qk.alpha);
  EXPECT_TRUE(torch::equal(awq[0].weight, qk.weights[0]));
  EXPECT_TRUE(torch::equal(awq[1].weight, qk.weights[1]));
  const AwqResult head = awq_search({{"lm_head", m.layers[3].weight, m.layers[3].stats}}, format);
  EXPECT_TRUE(torch::equal(awq[3].weight, head.weights[0]));
  for (const auto& r : awq) EXPECT_LE(r.relative_error, r.rtn_relative_error * (1 + 1e-6));

  choice.kind = MethodKind::kAwqGptq;
  const auto both = apply_method(m.layers, format, choice);
  for (size_t i = 0; i < both.size(); ++i) {
    EXPECT_EQ(both[i].awq_alpha, awq[i].awq_alpha);
    EXPECT_LT(both[i].relative_error, awq[i].relative_error) << m.layers[i].name;
  }
}

TEST(ApplyMethodTest, CalibratedMethodWithoutStatisticsNamesTheLayer) {
  Model m = small_model();
  m.layers[2].stats = nullptr;
  MethodChoice choice;
  choice.kind = MethodKind::kAwq;
  try {
    apply_method(m.layers, UniformTestFormat(group_config(Scheme::kAbsmax, 4, 32)), choice);
    ADD_FAILURE() << "no error";
  } catch (const UsageError& e) {
    EXPECT_NE(std::string(e.what()).find("'o'"), std::string::npos) << e.what();
  }
  choice.kind = MethodKind::kRtn;  // needs none
  EXPECT_EQ(apply_method(m.layers, UniformTestFormat(group_config(Scheme::kAbsmax, 4, 32)), choice).size(), 4u);
}

}  // namespace
}  // namespace quantppl
