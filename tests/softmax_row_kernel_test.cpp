// The fused softmax-statistics loops (src/softmax_row_kernel.h) against
// independent double-precision computations: std::exp over the same values,
// and torch's float64 log_softmax for the KL divergence.
#include <cmath>
#include <limits>
#include <vector>

#include <gtest/gtest.h>
#include <torch/torch.h>

#include "../src/softmax_row_kernel.h"

namespace quantppl {
namespace {

// Row lengths around the 8-wide vector (tails 0..7) and T5's vocabulary.
const int64_t kLengths[] = {1, 2, 7, 8, 9, 15, 16, 17, 300, 32128};

std::vector<float> random_row(int64_t n, float spread, uint64_t seed) {
  torch::manual_seed(seed);
  const torch::Tensor t = torch::randn({n}) * spread;
  return std::vector<float>(t.data_ptr<float>(), t.data_ptr<float>() + n);
}

TEST(SoftmaxRowKernelTest, ExpIsWithinTwoUlpOfStdExpOnTheRangeItIsUsedOn) {
  // exp of (z - max) <= 0, down to the clamp at -87, plus a few positive values.
  std::vector<float> x;
  for (float v = -87.0f; v <= 10.0f; v += 0.0137f) x.push_back(v);
  x.push_back(0.0f);
  x.push_back(-0.0f);
  std::vector<float> out(x.size());
  kernel::exp_approx(x.data(), out.data(), static_cast<int64_t>(x.size()));
  double worst_ulps = 0;
  for (size_t i = 0; i < x.size(); ++i) {
    const double exact = std::exp(static_cast<double>(x[i]));
    const double ulp = std::nextafter(static_cast<float>(exact), std::numeric_limits<float>::infinity()) -
                       static_cast<float>(exact);
    worst_ulps = std::max(worst_ulps, std::abs(out[i] - exact) / ulp);
  }
  EXPECT_LE(worst_ulps, 2.0) << "on " << kernel::softmax_kernel_path();
  // Below the clamp: exp(-87), never 0, NaN or a denormal.
  const float below[3] = {-88.0f, -1000.0f, -std::numeric_limits<float>::infinity()};
  float got[3];
  kernel::exp_approx(below, got, 3);
  for (const float g : got) EXPECT_NEAR(g, std::exp(-87.0), 1e-6 * std::exp(-87.0));
}

TEST(SoftmaxRowKernelTest, RowStatsMatchDoublePrecisionOnEveryTailLength) {
  for (const int64_t n : kLengths) {
    const std::vector<float> z = random_row(n, 4.0f, static_cast<uint64_t>(n));
    const kernel::SoftmaxRowStats s = kernel::softmax_row_stats(z.data(), n);
    ASSERT_TRUE(s.finite) << n;
    int64_t argmax = 0;
    for (int64_t i = 1; i < n; ++i) {
      if (z[i] > z[argmax]) argmax = i;
    }
    EXPECT_EQ(s.argmax, argmax) << n;
    EXPECT_EQ(s.max, z[argmax]) << n;
    double sum = 0;
    for (const float v : z) sum += std::exp(static_cast<double>(v) - z[argmax]);
    EXPECT_NEAR(s.sum_exp, sum, 1e-6 * sum) << n;
    EXPECT_NEAR(s.log_sum_exp(), std::log(sum) + z[argmax], 1e-6) << n;
  }
}

TEST(SoftmaxRowKernelTest, ArgmaxTakesTheFirstOfTiedMaxima) {
  for (const int64_t n : kLengths) {
    if (n < 3) continue;
    std::vector<float> z(static_cast<size_t>(n), -1.0f);
    z[static_cast<size_t>(n - 1)] = 5.0f;  // in the tail for most lengths
    z[static_cast<size_t>(n / 2)] = 5.0f;
    EXPECT_EQ(kernel::softmax_row_stats(z.data(), n).argmax, n / 2) << n;
    // Same as torch.argmax.
    const torch::Tensor t = torch::from_blob(z.data(), {n}, torch::kFloat32);
    EXPECT_EQ(t.argmax().item<int64_t>(), n / 2) << n;
  }
}

TEST(SoftmaxRowKernelTest, NonFiniteValuesAnywhereAreReported) {
  const float bad[3] = {std::numeric_limits<float>::quiet_NaN(), std::numeric_limits<float>::infinity(),
                        -std::numeric_limits<float>::infinity()};
  for (const int64_t n : kLengths) {
    for (const int64_t at : {int64_t{0}, n / 2, n - 1}) {
      for (const float b : bad) {
        std::vector<float> z = random_row(n, 1.0f, 7);
        z[static_cast<size_t>(at)] = b;
        EXPECT_FALSE(kernel::softmax_row_stats(z.data(), n).finite) << n << " " << at << " " << b;
        const std::vector<float> p = random_row(n, 1.0f, 8);
        const kernel::SoftmaxRowStats ps = kernel::softmax_row_stats(p.data(), n);
        EXPECT_FALSE(kernel::softmax_pair_stats(p.data(), ps.max, z.data(), n).q.finite) << n << " " << at;
      }
    }
  }
}

TEST(SoftmaxRowKernelTest, KlFromPairStatsMatchesFloat64LogSoftmax) {
  for (const int64_t n : kLengths) {
    for (const double noise : {1e-3, 0.1, 2.0}) {
      const std::vector<float> p = random_row(n, 3.0f, static_cast<uint64_t>(n) + 100);
      std::vector<float> q = random_row(n, static_cast<float>(noise), static_cast<uint64_t>(n) + 200);
      for (int64_t i = 0; i < n; ++i) q[static_cast<size_t>(i)] += p[static_cast<size_t>(i)];
      const kernel::SoftmaxRowStats ps = kernel::softmax_row_stats(p.data(), n);
      const kernel::SoftmaxPairStats s = kernel::softmax_pair_stats(p.data(), ps.max, q.data(), n);
      ASSERT_TRUE(s.q.finite);
      const double kl = s.cross / ps.sum_exp - ps.log_sum_exp() + s.q.log_sum_exp();

      const torch::Tensor tp = torch::from_blob(const_cast<float*>(p.data()), {n}, torch::kFloat32).to(torch::kFloat64);
      const torch::Tensor tq = torch::from_blob(q.data(), {n}, torch::kFloat32).to(torch::kFloat64);
      const torch::Tensor log_p = torch::log_softmax(tp, 0);
      const torch::Tensor log_q = torch::log_softmax(tq, 0);
      const double expected = (log_p.exp() * (log_p - log_q)).sum().item<double>();
      // Float terms: an absolute error of a few 1e-7 (relative to the logits' scale), far
      // below the KL of any quantization worth reporting.
      EXPECT_NEAR(kl, expected, 1e-6 + 1e-5 * expected) << "n " << n << " noise " << noise;
      EXPECT_EQ(s.q.argmax, tq.argmax().item<int64_t>());
      double sum_q = 0;
      for (const float v : q) sum_q += std::exp(static_cast<double>(v) - s.q.max);
      EXPECT_NEAR(s.q.sum_exp, sum_q, 1e-6 * sum_q);
    }
  }
}

TEST(SoftmaxRowKernelTest, IdenticalRowsGiveExactlyZeroKl) {
  for (const int64_t n : kLengths) {
    const std::vector<float> p = random_row(n, 5.0f, static_cast<uint64_t>(n) + 300);
    const kernel::SoftmaxRowStats ps = kernel::softmax_row_stats(p.data(), n);
    const kernel::SoftmaxPairStats s = kernel::softmax_pair_stats(p.data(), ps.max, p.data(), n);
    EXPECT_EQ(s.cross, 0.0);
    EXPECT_EQ(s.q.sum_exp, ps.sum_exp);
    EXPECT_EQ(s.q.max, ps.max);
    EXPECT_EQ(s.q.argmax, ps.argmax);
  }
}

}  // namespace
}  // namespace quantppl
