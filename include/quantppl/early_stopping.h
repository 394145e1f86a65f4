// Early stopping with a 95% guarantee (compare/sensitivity --ci-target).
//
// ---------------------------------------------------------------------------
// What is estimated
// ---------------------------------------------------------------------------
// A variant's perplexity ratio against fp32 over the whole text,
//
//   (1) R = exp( (1/N) sum_t d_t ),   d_t = nll_t(variant) - nll_t(fp32)
//
// (N = every label token of the text; distribution_metrics.h (3)). With
// --ci-target the windows are evaluated in a seeded pseudo-random order
// (engine.h), so after n tokens the paired mean m = (1/n) sum d_t over the
// windows seen so far estimates the log of (1), with R_hat = exp(m).
//
// ---------------------------------------------------------------------------
// Looks (planned before the first batch, from the batches' token counts)
// ---------------------------------------------------------------------------
// Look k (k = 0, 1, ...) happens after the first batch at which the tokens
// evaluated so far reach
//
//   (2) t_k = kFirstLookTokens * 2^(k/2)      (geometric: a look per sqrt(2) more tokens)
//
// counting only thresholds below N (the last batch is not a look: at N the
// answer is exact); thresholds reached by the same batch make one look.
// K = the number of looks, about 2 log2(N / 2048) + 1: 9 for 40k tokens.
// t_0 = 2048 rather than less because the per-look intervals are normal
// approximations: with heavy-tailed differences (rare tokens whose NLL jumps)
// a smaller first look undercovers whatever the correction (simulated: with
// 0.5% of tokens jumping by Exp(mean 10) nats even 2048 gives ~92%).
//
// ---------------------------------------------------------------------------
// The interval used to stop, and why repeated looks do not spoil it
// ---------------------------------------------------------------------------
// Bonferroni split of the 5% over the K planned looks: at every look the
// half-width of the interval of m is
//
//   (3) h = z * s / sqrt(n),   z = Phi^-1(1 - 0.05 / (2K)),  s = sample sd of d_t
//
// (z = 2.77 for K = 9, against 1.96 for one look). If each look's interval
// misses with probability <= 0.05 / K, the probability that ANY look's
// interval misses is <= K * 0.05 / K = 0.05 (union bound), so the interval
// in place when a variant stops — at whatever look, however the stop was
// decided — covers the true value with >= 95%. The per-look intervals are
// normal (CLT) intervals over tokens treated as independent, like
// distribution_metrics.h's delta_nll_ci95: tokens of one window correlate,
// which the random window order does not remove, so s / sqrt(n) is a lower
// bound of the standard error on real text. tests/early_stopping_test.cpp
// simulates the exact rule on skewed, heavy-tailed independent differences.
//
// Rule 1 (--ci-target PCT): a variant stops at a look when its ratio
// interval [R_hat e^-h, R_hat e^h] is within +-PCT% of R_hat, i.e.
//
//   (4) e^h - 1 <= PCT / 100    <=>   h <= log(1 + PCT / 100)
//
// (the upper side binds: 1 - e^-h < e^h - 1).
//
// Rule 2 (with --check): the gate passes a variant when its perplexity is in
// [lo, hi] (regression_check.h). With the variant's own mean NLL m_nll and
// its sd s_nll (unpaired: the gate checks the perplexity itself) and
// h' = z s_nll / sqrt(n), the decision can no longer change at 95% when
//
//   (5) [exp(m_nll - h'), exp(m_nll + h')] lies inside [lo, hi] (it passes)
//       or entirely outside it (it fails),
//
// and the variant stops. Rules 1 and 2 are each valid at 95% by (3). A
// variant with a gate is stopped by rule 2 only (engine.h): rule 1 would end
// it with an unsettled decision, and the check would then judge a perplexity
// measured on part of the text against a whole-text expectation.
#pragma once

#include <cstdint>
#include <optional>
#include <vector>

namespace quantppl {

constexpr double kStopAlpha = 0.05;            // 1 - the guaranteed coverage
constexpr int64_t kFirstLookTokens = 2048;     // t_0 in (2)
constexpr uint64_t kDefaultSeed = 20240613;    // --seed default

// Phi^-1(p) for p in (0, 1), to ~1e-12 (bisection on erfc).
double normal_quantile(double p);

struct LookSchedule {
  std::vector<size_t> after_batches;  // look after this many batches (increasing, each < the batch count)
  double z = 0;                       // (3), for K = after_batches.size() (0 looks: no z needed)
  bool is_look(size_t batches_done) const;
};

// (2)-(3) for batches holding `batch_tokens[i]` label tokens, in evaluation order.
LookSchedule plan_looks(const std::vector<int64_t>& batch_tokens, double alpha = kStopAlpha);

// A running paired or unpaired mean at a look: n values, their mean, and the
// sample sd of the mean (s / sqrt(n)).
struct MeanEstimate {
  int64_t n = 0;
  double mean = 0;
  double sd_of_mean = 0;
};

// (3) and (4): true when the ratio interval is within +-ci_target_pct of the estimate.
bool ratio_precise_enough(const MeanEstimate& delta_nll, double z, double ci_target_pct);

// (5): the gate's decision once settled at 95%: true = passes, false = fails; nullopt while undecided.
std::optional<bool> gate_settled(const MeanEstimate& nll, double z, double ppl_lo, double ppl_hi);

}  // namespace quantppl
