// The early-stopping rule (early_stopping.h) by simulation: many sequences of
// skewed, heavy-tailed per-token differences, the library's own look schedule
// and stopping test, and the coverage of the interval in place at the stop.
// The true value is what the rule estimates: the mean over the whole
// sequence (the whole text). The same simulation with the naive, unadjusted
// z = 1.96 at every look must undercover, or the test could not fail.
#include <cmath>
#include <cstdio>
#include <random>
#include <vector>

#include <gtest/gtest.h>

#include "quantppl/early_stopping.h"

namespace quantppl {
namespace {

constexpr size_t kBatches = 40;
constexpr int64_t kBatchTokens = 512;
constexpr double kTargetPct = 2.0;

// Per-token d_t: mostly N(0.01, 0.02^2), 2% of tokens jump by Exp(mean 3):
// the shape of a quantized model's NLL change (small noise, rare large damage).
std::vector<double> draw_sequence(std::mt19937_64& rng, size_t n) {
  std::normal_distribution<double> noise(0.0, 0.02);
  std::exponential_distribution<double> jump(1.0 / 3.0);
  std::uniform_real_distribution<double> u(0.0, 1.0);
  std::vector<double> d(n);
  for (double& x : d) x = 0.01 + (u(rng) < 0.02 ? jump(rng) : noise(rng));
  return d;
}

struct Coverage {
  double covered = 0;  // share of sequences whose interval at the stop holds the true mean (or that never stopped)
  double stopped = 0;  // share of sequences stopped before the end
};

// The library's rule, applied as the engine applies it: a look after each
// scheduled batch, ratio_precise_enough on (n, mean, sd of the mean).
Coverage simulate(double z, int reps, uint64_t seed) {
  const std::vector<int64_t> tokens(kBatches, kBatchTokens);
  const LookSchedule looks = plan_looks(tokens);
  std::mt19937_64 rng(seed);
  int covered = 0, stopped = 0;
  for (int r = 0; r < reps; ++r) {
    const std::vector<double> d = draw_sequence(rng, kBatches * kBatchTokens);
    double total = 0;
    for (const double x : d) total += x;
    const double truth = total / static_cast<double>(d.size());
    double sum = 0, sq = 0;
    int64_t n = 0;
    bool ok = true;  // never stopped: the whole sequence is the exact answer
    for (size_t b = 1; b <= kBatches; ++b) {
      for (int64_t t = 0; t < kBatchTokens; ++t, ++n) {
        const double x = d[static_cast<size_t>(n)];
        sum += x;
        sq += x * x;
      }
      if (!looks.is_look(b)) continue;
      const double count = static_cast<double>(n);
      const double mean = sum / count;
      const double variance = std::max(0.0, sq / count - mean * mean) * count / (count - 1);
      const MeanEstimate e{n, mean, std::sqrt(variance / count)};
      if (ratio_precise_enough(e, z, kTargetPct)) {
        ++stopped;
        ok = std::abs(mean - truth) <= z * e.sd_of_mean;
        break;
      }
    }
    covered += ok ? 1 : 0;
  }
  return {static_cast<double>(covered) / reps, static_cast<double>(stopped) / reps};
}

TEST(EarlyStoppingTest, NormalQuantileMatchesKnownValues) {
  EXPECT_NEAR(normal_quantile(0.975), 1.959963984540054, 1e-9);
  EXPECT_NEAR(normal_quantile(0.995), 2.5758293035489004, 1e-9);
  EXPECT_NEAR(normal_quantile(0.5), 0.0, 1e-12);
  EXPECT_NEAR(normal_quantile(0.025), -1.959963984540054, 1e-9);
}

TEST(EarlyStoppingTest, LooksAreGeometricFromTheFirstThresholdAndBonferroniCorrected) {
  // 40 batches of 512 (N = 20480): t_k = 2048, 2896, 4096, 5793, 8192, 11585, 16384 (23170 > N)
  // are first reached after batches 4, 6, 8, 12, 16, 23, 32.
  const LookSchedule s = plan_looks(std::vector<int64_t>(40, 512));
  const std::vector<size_t> expected{4, 6, 8, 12, 16, 23, 32};
  EXPECT_EQ(s.after_batches, expected);
  // z = Phi^-1(1 - 0.05 / (2 * 7)) = 2.6901 (scipy.stats.norm.ppf(1 - 0.05 / 14)).
  EXPECT_NEAR(s.z, 2.690109527158866, 1e-8);
  // Too short for a single look: nothing can stop.
  EXPECT_TRUE(plan_looks(std::vector<int64_t>(3, 512)).after_batches.empty());
  // One big batch is never a look (it is the whole text).
  EXPECT_TRUE(plan_looks({100000}).after_batches.empty());
}

TEST(EarlyStoppingTest, StoppedIntervalCoversTheWholeTextValueAtLeast95Percent) {
  const LookSchedule looks = plan_looks(std::vector<int64_t>(kBatches, kBatchTokens));
  const Coverage bonferroni = simulate(looks.z, 2000, 7);
  // Most sequences must stop early, or the coverage would say nothing about stopping.
  EXPECT_GT(bonferroni.stopped, 0.9);
  EXPECT_GE(bonferroni.covered, 0.95);
  std::printf("Bonferroni (z = %.3f): covered %.4f, stopped early %.4f\n", looks.z, bonferroni.covered,
              bonferroni.stopped);
}

TEST(EarlyStoppingTest, NaiveIntervalUnderTheSameRuleUndercovers) {
  const Coverage naive = simulate(1.959963984540054, 2000, 7);
  EXPECT_GT(naive.stopped, 0.9);
  EXPECT_LT(naive.covered, 0.94);  // numpy simulation of the same rule: ~0.92
  std::printf("naive (z = 1.96): covered %.4f, stopped early %.4f\n", naive.covered, naive.stopped);
}

TEST(EarlyStoppingTest, RatioTargetIsTheUpperSideOfTheInterval) {
  // h = z * sd = 2 * 0.004975 = 0.00995 = log(1.01) - 1e-6: within 1%; slightly more is not.
  const double h = std::log1p(0.01);
  EXPECT_TRUE(ratio_precise_enough({1000, 0.1, (h - 1e-9) / 2}, 2.0, 1.0));
  EXPECT_FALSE(ratio_precise_enough({1000, 0.1, (h + 1e-9) / 2}, 2.0, 1.0));
  EXPECT_FALSE(ratio_precise_enough({1, 0.1, 0.0}, 2.0, 1.0));  // one token: no sd
}

TEST(EarlyStoppingTest, GateIsSettledOnlyWhenTheWholeIntervalIsOnOneSide) {
  // nll mean log(100) -> ppl 100; h = 2 * 0.001 = 0.002 -> [99.80, 100.20].
  const MeanEstimate e{5000, std::log(100.0), 0.001};
  EXPECT_EQ(gate_settled(e, 2.0, 99.5, 100.5), std::optional<bool>(true));
  EXPECT_EQ(gate_settled(e, 2.0, 100.5, 101.5), std::optional<bool>(false));
  EXPECT_EQ(gate_settled(e, 2.0, 98.0, 99.0), std::optional<bool>(false));
  EXPECT_EQ(gate_settled(e, 2.0, 100.1, 101.0), std::nullopt);  // straddles the lower bound
}

}  // namespace
}  // namespace quantppl
