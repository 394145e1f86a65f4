// How far a quantized model's predictive distributions move from the fp32
// model's, token by token, on the same windows: the statistics llama.cpp's
// `llama-perplexity --kl-divergence` reports, computed in one process from
// both models' logits batch by batch (no logits file).
//
// For each predicted position t (a real label position), with P = softmax of
// the fp32 logits and Q = softmax of the variant's logits over the vocabulary,
// and nll_t = -log prob of the label (float32, SoftmaxRowStats::label_nll):
//
//   (1) KL_t      = sum_v P_v (log P_v - log Q_v)           (nats, >= 0 up to rounding)
//   (2) agree_t   = [argmax P == argmax Q]
//   (3) d_t       = nll_t(variant) - nll_t(fp32)
//   (4) dp_t      = exp(-nll_t(variant)) - exp(-nll_t(fp32)) (Δp: change of the label's probability)
//
// Over the N positions (every sum in double, in position order):
//   mean(x) = (1/N) sum_t x_t;  sd(x) = the sample standard deviation (N - 1);
//   stderr(x) = sd(x) / sqrt(N)   (tokens treated as independent, as llama.cpp does)
//   kl_mean, kl_mean_stderr          = mean and stderr of (1)
//   kl_min, kl_p001 ... kl_p999, kl_max = min, numpy.percentile(KL, P) with numpy's
//                                      default 'linear' method (percentile.h) for
//                                      P = 0.1, 1, 5, 10, 25, 50, 75, 90, 95, 99, 99.9, max
//   top1_agreement = mean(2);  top1_agreement_stderr = sqrt(a (1 - a) / N)  (binomial)
//   delta_nll_mean = mean(3);  delta_nll_stderr = stderr(3);  delta_nll_ci95 = 1.96 * delta_nll_stderr
//   ppl_ratio = exp(delta_nll_mean) (= ppl_variant / ppl_fp32 on the same tokens),
//     its 95% interval [exp(delta_nll_mean - delta_nll_ci95), exp(delta_nll_mean + delta_nll_ci95)]
//   delta_p_mean, delta_p_mean_stderr, delta_p min/percentiles/max = the same for (4);
//   delta_p_rms = sqrt(mean(dp^2)), delta_p_rms_stderr = stderr(dp^2) / (2 delta_p_rms)
//     (llama.cpp's delta-method error; 0 when every dp_t is 0)
//   nll_correlation = Pearson correlation of nll_t(fp32) and nll_t(variant)
//     (llama.cpp's "Cor(ln(PPL(Q)), ln(PPL(base)))")
// Means, standard errors and the correlation come from running sums
// (sum x, sum x^2, sum x*y): O(1) memory. The percentiles need the values:
// the comparison keeps KL_t and dp_t as float32 (8 bytes a token, never
// logits) unless it is built with PerTokenValues::kSumsOnly, for callers that
// hold many comparisons at once; then the percentiles are absent (nullopt)
// and everything else is the same.
//
// Small N: with N = 0 every statistic is NaN. With N = 1 the sample standard
// deviation does not exist, so every *_stderr, delta_nll_ci95, the ppl_ratio
// interval and nll_correlation are NaN (JSON null); top1_agreement_stderr
// follows its binomial formula (0 at N = 1). The correlation is NaN too when
// either NLL series is constant. Non-finite values: a position whose logits
// hold NaN or Inf on either side has NaN KL, NLL, d and dp; the sums, the
// minimum, maximum and every percentile are then NaN (as numpy's).
//
// Why paired: both models score the same tokens, so token difficulty cancels
// in d_t and its spread is far smaller than that of either model's nll_t; the
// interval says whether a variant's damage is real, which is what a CI gate
// should test (perplexity's own standard error mostly measures the text).
//
// Computed without log_softmax tensors: per position, two read passes over
// the fp32 row and two over the variant's (src/softmax_row_kernel.h), with
//   (1) = C / S_p - lse_p + lse_q,  C = sum_v exp(p_v - max p) (p_v - q_v),
// terms in float and every sum in double. Logits are never stored beyond
// the batch being compared, and no temporary as large as the logits is made.
#pragma once

#include <cstdint>
#include <limits>
#include <optional>
#include <vector>

#include <torch/types.h>

namespace quantppl {

// The fp32 side of one batch, computed once and compared with every variant.
// N = the number of label positions (label_mask true), in row-major order.
struct ReferenceBatch {
  torch::Tensor logits;      // float32 [B, T, V] of the fp32 model, contiguous
  torch::Tensor labels;      // int64 [B, T]
  torch::Tensor label_mask;  // bool [B, T]
  torch::Tensor nll;         // float32 [N]: nll_t of the fp32 model (perplexity.h's token_nll)
  torch::Tensor top1;        // int64 [N]: argmax of the fp32 logits
  std::vector<int64_t> rows;     // [N]: b * T + t of each label position
  std::vector<float> row_max;    // [N]: max_v of the fp32 logits
  std::vector<double> row_sum_exp;  // [N]: sum_v exp(z_v - max)
};

// A position whose logits hold NaN or Inf gets nll NaN and top1 -1, so that
// the sums turn NaN and the caller's finiteness check reports the model.
// UsageError for shapes or dtypes that do not match.
ReferenceBatch make_reference_batch(const torch::Tensor& logits, const torch::Tensor& labels,
                                    const torch::Tensor& label_mask);

// The spread of one per-token quantity, (1) or (4). Percentiles are nullopt
// when the per-token values were not kept (PerTokenValues::kSumsOnly).
struct TokenValueStats {
  static constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();
  double mean = kNaN;
  double mean_stderr = kNaN;
  double min = kNaN;
  double max = kNaN;
  std::optional<double> p001, p01, p05, p10, p25, median, p75, p90, p95, p99, p999;
};

// Every statistic of one comparison (see the definitions above).
struct DistributionStats {
  static constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();
  int64_t tokens = 0;
  TokenValueStats kl;       // (1), nats
  TokenValueStats delta_p;  // (4), probability in [-1, 1]
  double delta_p_rms = kNaN;
  double delta_p_rms_stderr = kNaN;
  double top1_agreement = kNaN;
  double top1_agreement_stderr = kNaN;
  double delta_nll_mean = kNaN;
  double delta_nll_stderr = kNaN;
  double delta_nll_ci95 = kNaN;  // half-width of the 95% interval of delta_nll_mean
  double ppl_ratio = kNaN;
  double ppl_ratio_ci95_low = kNaN;
  double ppl_ratio_ci95_high = kNaN;
  double nll_correlation = kNaN;
  // Both models' mean NLL and its stderr (perplexity = exp(mean)), for
  // llama.cpp's "Mean PPL(Q)" / "Mean PPL(base)" lines.
  double nll_mean = kNaN;
  double nll_mean_stderr = kNaN;
  double reference_nll_mean = kNaN;
  double reference_nll_mean_stderr = kNaN;
};

// The percentiles a TokenValueStats reports, in its field order.
inline constexpr double kReportedPercentiles[] = {0.1, 1, 5, 10, 25, 50, 75, 90, 95, 99, 99.9};

// kKeep: keep KL_t and dp_t (8 bytes a token) for the percentiles, and the
// variant's nll_t (4 more) for paired comparisons between two variants.
// kSumsOnly: running sums, minimum and maximum only (O(1) memory).
enum class PerTokenValues { kKeep, kSumsOnly };

class DistributionComparison {
 public:
  DistributionComparison() = default;  // kKeep
  explicit DistributionComparison(PerTokenValues per_token) : keep_values_(per_token == PerTokenValues::kKeep) {}

  // Adds the variant's logits for the batch `reference` describes. A position
  // whose logits hold NaN or Inf adds NaN to the NLL and KL sums.
  void add(const ReferenceBatch& reference, const torch::Tensor& logits);
  // Adds the fp32 model against itself: the same sums as add(reference,
  // reference.logits) (KL 0, full agreement, no NLL change) without reading
  // the logits again.
  void add_reference(const ReferenceBatch& reference);

  // Every statistic; percentiles cost O(N) each (selection, not a sort).
  DistributionStats summarize() const;

  int64_t tokens() const { return tokens_; }
  double nll_sum() const { return nll_sum_; }
  double nll_sq_sum() const { return nll_sq_sum_; }
  double kl_mean() const;
  double kl_p99() const;  // NaN under kSumsOnly
  double kl_max() const;
  double top1_agreement() const;
  double delta_nll_mean() const;
  double delta_nll_ci95() const;
  // The variant's nll_t in token order (kKeep only; empty under kSumsOnly).
  const std::vector<float>& nll_values() const { return nll_values_; }

 private:
  // One position: its (1), its agreement (2), both NLLs, as add() computed them.
  void accumulate(double kl, bool agree, float nll, float reference_nll);

  bool keep_values_ = true;
  int64_t tokens_ = 0;
  double nll_sum_ = 0;      // variant's nll_t
  double nll_sq_sum_ = 0;
  double ref_nll_sum_ = 0;  // fp32's nll_t
  double ref_nll_sq_sum_ = 0;
  double nll_cross_sum_ = 0;  // sum_t nll_t(fp32) nll_t(variant)
  double kl_sum_ = 0;
  double kl_sq_sum_ = 0;
  int64_t agree_ = 0;
  double delta_sum_ = 0;
  double delta_sq_sum_ = 0;
  double dp_sum_ = 0;
  double dp_sq_sum_ = 0;
  double dp_4_sum_ = 0;  // sum_t dp_t^4, for delta_p_rms_stderr
  // Of the float32-rounded values, so that they bound the percentiles; NaN once any value is.
  float kl_min_ = std::numeric_limits<float>::infinity();
  float kl_max_ = -std::numeric_limits<float>::infinity();
  float dp_min_ = std::numeric_limits<float>::infinity();
  float dp_max_ = -std::numeric_limits<float>::infinity();
  std::vector<float> kl_values_;  // kKeep only
  std::vector<float> dp_values_;
  std::vector<float> nll_values_;
};

// The paired per-token NLL change of variant `a` against variant `b` on the
// same positions: d_t = nll_t(a) - nll_t(b), its mean and the half-width of
// its 95% interval (kZ95 times the sample standard error, as delta_nll_ci95).
// This is what says whether a method beats round to nearest beyond noise: the
// fp32 terms cancel, so its interval is usually much narrower than the
// difference of the two delta_nll intervals. nullopt unless both kept their
// values over the same number of positions (early stopping ends variants at
// different windows).
struct PairedNllDifference {
  double mean = 0;
  double ci95 = 0;
  int64_t tokens = 0;
};
std::optional<PairedNllDifference> paired_nll_difference(const DistributionComparison& a,
                                                         const DistributionComparison& b);

}  // namespace quantppl
