// KL divergence, top-1 agreement and the paired NLL difference against an
// independent numpy computation in float64 on the same logits.
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <limits>
#include <fstream>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>
#include <torch/torch.h>

#include "fixture_support.h"
#include "quantppl/distribution_metrics.h"

namespace quantppl {
namespace {

void write_raw(const std::string& path, const torch::Tensor& t) {
  const torch::Tensor c = t.contiguous();
  std::ofstream out(path, std::ios::binary);
  out.write(static_cast<const char*>(c.data_ptr()), static_cast<std::streamsize>(c.numel() * c.element_size()));
}

struct Batch {
  torch::Tensor p, q, labels, mask;
};

Batch random_batch(int64_t b, int64_t t, int64_t v, double noise, uint64_t seed) {
  torch::manual_seed(seed);
  Batch x;
  x.p = torch::randn({b, t, v}) * 3;
  x.q = x.p + torch::randn({b, t, v}) * noise;
  x.labels = torch::randint(v, {b, t}, torch::kInt64);
  x.mask = torch::rand({b, t}) < 0.8;
  x.mask.index_put_({0, 0}, true);
  return x;
}

TEST(DistributionMetricsTest, Fp32AgainstItselfIsZeroKlAndFullAgreement) {
  const Batch x = random_batch(3, 17, 50, 0.0, 1);
  DistributionComparison c;
  c.add(make_reference_batch(x.p, x.labels, x.mask), x.p);
  EXPECT_EQ(c.kl_mean(), 0.0);
  EXPECT_EQ(c.kl_max(), 0.0);
  EXPECT_EQ(c.top1_agreement(), 1.0);
  EXPECT_EQ(c.delta_nll_mean(), 0.0);
  EXPECT_EQ(c.delta_nll_ci95(), 0.0);
  EXPECT_EQ(c.tokens(), x.mask.sum().item<int64_t>());
}

TEST(DistributionMetricsTest, MatchesNumpyInFloat64AcrossBatches) {
  const std::string dir = (std::filesystem::temp_directory_path() / ("quantppl_kl_" + std::to_string(::getpid()))).string();
  std::filesystem::create_directories(dir);
  // Two batches accumulate like one concatenated batch.
  const Batch a = random_batch(2, 13, 300, 0.3, 2);
  const Batch b = random_batch(2, 13, 300, 0.3, 3);
  DistributionComparison c;
  c.add(make_reference_batch(a.p, a.labels, a.mask), a.q);
  c.add(make_reference_batch(b.p, b.labels, b.mask), b.q);
  write_raw(dir + "/p.f32", torch::cat({a.p, b.p}));
  write_raw(dir + "/q.f32", torch::cat({a.q, b.q}));
  write_raw(dir + "/labels.i64", torch::cat({a.labels, b.labels}));
  write_raw(dir + "/mask.u8", torch::cat({a.mask, b.mask}).to(torch::kUInt8));
  std::ofstream(dir + "/shape.json") << R"({"B": 4, "T": 13, "V": 300})";
  const auto j = nlohmann::json::parse(testing::run_command(
      testing::python() + " " + testing::shell_quote(std::string(QUANTPPL_SOURCE_DIR) + "/tests/reference/distribution_metrics.py") +
      " " + testing::shell_quote(dir)));
  EXPECT_EQ(c.tokens(), j["tokens"].get<int64_t>());
  EXPECT_GT(j["kl_mean"].get<double>(), 1e-3);  // the comparison is not trivially zero
  EXPECT_LT(j["top1_agreement"].get<double>(), 1.0);
  const auto near = [](double ours, double theirs) { return std::abs(ours - theirs) <= 1e-4 * std::abs(theirs) + 1e-6; };
  EXPECT_TRUE(near(c.kl_mean(), j["kl_mean"].get<double>())) << c.kl_mean() << " vs " << j["kl_mean"];
  EXPECT_TRUE(near(c.kl_p99(), j["kl_p99"].get<double>())) << c.kl_p99() << " vs " << j["kl_p99"];
  EXPECT_TRUE(near(c.kl_max(), j["kl_max"].get<double>()));
  EXPECT_DOUBLE_EQ(c.top1_agreement(), j["top1_agreement"].get<double>());
  EXPECT_TRUE(near(c.delta_nll_mean(), j["delta_nll_mean"].get<double>()));
  EXPECT_TRUE(near(c.delta_nll_ci95(), j["delta_nll_ci95"].get<double>()));
  EXPECT_TRUE(near(c.nll_sum(), j["nll_sum"].get<double>()));
  std::filesystem::remove_all(dir);
}

TEST(DistributionMetricsTest, NonFiniteLogitsOnEitherSideMakeTheSumsNaN) {
  for (const bool in_reference : {true, false}) {
    Batch x = random_batch(2, 9, 40, 0.1, 6);
    x.mask.index_put_({1, 4}, true);
    (in_reference ? x.p : x.q).index_put_({1, 4, 7}, std::numeric_limits<float>::quiet_NaN());
    DistributionComparison c;
    c.add(make_reference_batch(x.p, x.labels, x.mask), x.q);
    EXPECT_TRUE(std::isnan(c.kl_mean())) << in_reference;
    EXPECT_TRUE(std::isnan(c.nll_sum())) << in_reference;
    EXPECT_TRUE(std::isnan(c.delta_nll_mean())) << in_reference;
    EXPECT_LT(c.top1_agreement(), 1.0) << in_reference;
  }
}

TEST(DistributionMetricsTest, LargerPerturbationMeansLargerKlAndLowerAgreement) {
  const Batch small = random_batch(2, 32, 100, 0.05, 4);
  const Batch large = random_batch(2, 32, 100, 1.0, 4);
  DistributionComparison cs;
  DistributionComparison cl;
  cs.add(make_reference_batch(small.p, small.labels, small.mask), small.q);
  cl.add(make_reference_batch(large.p, large.labels, large.mask), large.q);
  EXPECT_LT(cs.kl_mean(), cl.kl_mean());
  EXPECT_GT(cs.top1_agreement(), cl.top1_agreement());
  EXPECT_LE(cs.kl_p99(), cs.kl_max());
}

}  // namespace
}  // namespace quantppl
