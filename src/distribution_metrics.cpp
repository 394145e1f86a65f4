#include "quantppl/distribution_metrics.h"

#include <algorithm>
#include <cmath>
#include <iterator>
#include <limits>

#include <ATen/Parallel.h>
#include <torch/torch.h>

#include "quantppl/error.h"
#include "quantppl/percentile.h"
#include "softmax_row_kernel.h"

namespace quantppl {
namespace {

constexpr double kZ95 = 1.959963984540054;  // two-sided 95% normal quantile
constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();
// Positions per parallel task: a position is ~20 us of work at V = 32k.
constexpr int64_t kRowsPerTask = 4;

// Population variance from running sums, E[x^2] - E[x]^2, clamped at 0
// against rounding. The cancellation costs a relative error of about
// 1e-16 * E[x^2] / var: 1e-11 even for a paired NLL change whose mean is 100
// times its spread, far below what a standard error can resolve.
double variance_from_sums(double sum, double sq_sum, double n) {
  const double mean = sum / n;
  return std::max(0.0, sq_sum / n - mean * mean);
}

// sd(x) / sqrt(N) with the sample (N - 1) standard deviation; NaN for N < 2.
// Written as sqrt(var * N / (N - 1) / N), the order of operations of the
// versions before the llama.cpp statistics, so that delta_nll_ci95 stays the
// same number to the last bit (tests/cli/test_early_stopping.py).
double sample_sd_of_mean(double sum, double sq_sum, int64_t n) {
  if (n < 2) return kNaN;
  const auto count = static_cast<double>(n);
  const double sample_variance = variance_from_sums(sum, sq_sum, count) * count / (count - 1);
  return std::sqrt(sample_variance / count);
}

// Pearson correlation of x and y from their sums; NaN for N < 2 or a constant
// series. cov / sqrt(var_x var_y), so that x == y gives exactly 1.
double pearson(double x_sum, double x_sq_sum, double y_sum, double y_sq_sum, double xy_sum, int64_t n) {
  if (n < 2) return kNaN;
  const auto count = static_cast<double>(n);
  const double var_x = variance_from_sums(x_sum, x_sq_sum, count);
  const double var_y = variance_from_sums(y_sum, y_sq_sum, count);
  if (!(var_x > 0.0 && var_y > 0.0)) return kNaN;
  const double cov = xy_sum / count - (x_sum / count) * (y_sum / count);
  return std::clamp(cov / std::sqrt(var_x * var_y), -1.0, 1.0);
}

// NaN-propagating min and max: once a value is NaN, so is the result (as numpy's).
float nan_min(float acc, float v) { return std::isnan(acc) || std::isnan(v) ? std::nanf("") : std::min(acc, v); }
float nan_max(float acc, float v) { return std::isnan(acc) || std::isnan(v) ? std::nanf("") : std::max(acc, v); }

// numpy.percentile(values, P) for each P in `percents`, linear method, on the
// float32 values widened to double. numpy returns NaN for every percentile of
// an array holding NaN; selection would not, so that case is checked first.
std::vector<double> percentiles_of(const std::vector<float>& values, const double* percents, size_t count) {
  std::vector<double> out(count, kNaN);
  if (values.empty() || std::any_of(values.begin(), values.end(), [](float v) { return std::isnan(v); })) return out;
  const torch::Tensor rows =
      torch::from_blob(const_cast<float*>(values.data()), {1, static_cast<int64_t>(values.size())}, torch::kFloat32)
          .to(torch::kFloat64);
  for (size_t k = 0; k < count; ++k) out[k] = percentile_rows(rows, percents[k]).item<double>();
  return out;
}

void fill_percentiles(const std::vector<float>& values, TokenValueStats& s) {
  std::optional<double>* const fields[] = {&s.p001, &s.p01, &s.p05, &s.p10, &s.p25, &s.median,
                                           &s.p75,  &s.p90, &s.p95, &s.p99, &s.p999};
  static_assert(std::size(fields) == std::size(kReportedPercentiles));
  const std::vector<double> p = percentiles_of(values, kReportedPercentiles, std::size(kReportedPercentiles));
  for (size_t k = 0; k < p.size(); ++k) *fields[k] = p[k];
}

void check_logits(const torch::Tensor& logits, const char* what) {
  if (logits.dim() != 3 || logits.scalar_type() != torch::kFloat32) {
    throw UsageError(std::string("DistributionComparison: ") + what + " logits must be float32 [B, T, V]");
  }
}

}  // namespace

ReferenceBatch make_reference_batch(const torch::Tensor& logits, const torch::Tensor& labels,
                                    const torch::Tensor& label_mask) {
  check_logits(logits, "fp32");
  if (labels.sizes() != logits.sizes().slice(0, 2) || labels.scalar_type() != torch::kInt64 ||
      label_mask.sizes() != labels.sizes() || label_mask.scalar_type() != torch::kBool) {
    throw UsageError("make_reference_batch: labels must be int64 [B, T] and label_mask bool [B, T], matching the logits");
  }
  ReferenceBatch r;
  r.logits = logits.contiguous();
  r.labels = labels.contiguous();
  r.label_mask = label_mask.contiguous();
  const int64_t positions = labels.numel();
  const bool* mask = r.label_mask.data_ptr<bool>();
  const int64_t vocab = logits.size(2);
  const int64_t* label = r.labels.data_ptr<int64_t>();
  for (int64_t i = 0; i < positions; ++i) {
    if (!mask[i]) continue;
    if (label[i] < 0 || label[i] >= vocab) {
      throw UsageError("make_reference_batch: label " + std::to_string(label[i]) + " outside [0, V = " +
                       std::to_string(vocab) + ")");
    }
    r.rows.push_back(i);
  }
  const auto n = static_cast<int64_t>(r.rows.size());
  r.row_max.resize(static_cast<size_t>(n));
  r.row_sum_exp.resize(static_cast<size_t>(n));
  r.nll = torch::empty({n}, torch::kFloat32);
  r.top1 = torch::empty({n}, torch::kInt64);
  const float* z = r.logits.data_ptr<float>();
  float* nll = r.nll.data_ptr<float>();
  int64_t* top1 = r.top1.data_ptr<int64_t>();
  at::parallel_for(0, n, kRowsPerTask, [&](int64_t begin, int64_t end) {
    for (int64_t k = begin; k < end; ++k) {
      const int64_t row = r.rows[static_cast<size_t>(k)];
      const float* zr = z + row * vocab;
      const kernel::SoftmaxRowStats s = kernel::softmax_row_stats(zr, vocab);
      r.row_max[static_cast<size_t>(k)] = s.max;
      r.row_sum_exp[static_cast<size_t>(k)] = s.sum_exp;
      nll[k] = s.label_nll(zr[label[row]]);
      top1[k] = s.finite ? s.argmax : -1;
    }
  });
  return r;
}

void DistributionComparison::add(const ReferenceBatch& reference, const torch::Tensor& logits) {
  check_logits(logits, "variant");
  if (logits.sizes() != reference.logits.sizes()) {
    throw UsageError("DistributionComparison: variant logits do not match the reference batch's shape");
  }
  const torch::Tensor q_logits = logits.contiguous();
  const auto n = static_cast<int64_t>(reference.rows.size());
  const int64_t vocab = logits.size(2);
  const float* p = reference.logits.data_ptr<float>();
  const float* q = q_logits.data_ptr<float>();
  const int64_t* label = reference.labels.data_ptr<int64_t>();
  const float* p_nll = reference.nll.data_ptr<float>();
  const int64_t* p_top1 = reference.top1.data_ptr<int64_t>();  // -1: the fp32 row is not finite
  std::vector<double> kl(static_cast<size_t>(n));
  std::vector<float> nll(static_cast<size_t>(n));
  std::vector<int64_t> top1(static_cast<size_t>(n));
  at::parallel_for(0, n, kRowsPerTask, [&](int64_t begin, int64_t end) {
    for (int64_t k = begin; k < end; ++k) {
      const auto i = static_cast<size_t>(k);
      const int64_t row = reference.rows[i];
      const float* pr = p + row * vocab;
      const float* qr = q + row * vocab;
      const float p_max = reference.row_max[i];
      if (p_top1[k] < 0) {  // row_max and row_sum_exp are unspecified for it
        kl[i] = std::numeric_limits<double>::quiet_NaN();
        nll[i] = std::numeric_limits<float>::quiet_NaN();
        top1[i] = -1;
        continue;
      }
      const kernel::SoftmaxPairStats s = kernel::softmax_pair_stats(pr, p_max, qr, vocab);
      const double lse_p = static_cast<double>(p_max) + std::log(reference.row_sum_exp[i]);
      // (1) = C / S_p - lse_p + lse_q
      kl[i] = s.q.finite ? s.cross / reference.row_sum_exp[i] + (s.q.log_sum_exp() - lse_p)
                         : std::numeric_limits<double>::quiet_NaN();
      nll[i] = s.q.label_nll(qr[label[row]]);
      top1[i] = s.q.finite ? s.q.argmax : -1;
    }
  });
  // Sums in position order, so the result does not depend on the thread count.
  for (int64_t k = 0; k < n; ++k) {
    const auto i = static_cast<size_t>(k);
    accumulate(kl[i], top1[i] >= 0 && top1[i] == p_top1[k], nll[i], p_nll[k]);  // (2)
  }
}

void DistributionComparison::add_reference(const ReferenceBatch& reference) {
  const auto n = static_cast<int64_t>(reference.rows.size());
  const float* p_nll = reference.nll.data_ptr<float>();
  const int64_t* p_top1 = reference.top1.data_ptr<int64_t>();
  for (int64_t k = 0; k < n; ++k) {
    // A non-finite row compares as it would in add(): NaN KL, NLL and deltas, no agreement.
    const bool finite = p_top1[k] >= 0;
    accumulate(finite ? 0.0 : kNaN, finite, p_nll[k], p_nll[k]);
  }
}

void DistributionComparison::accumulate(double kl, bool agree, float nll, float reference_nll) {
  const double y = nll;
  const double x = reference_nll;
  const double delta = y - x;                 // (3)
  const double dp = std::exp(-y) - std::exp(-x);  // (4); NaN if either NLL is
  nll_sum_ += y;
  nll_sq_sum_ += y * y;
  ref_nll_sum_ += x;
  ref_nll_sq_sum_ += x * x;
  nll_cross_sum_ += x * y;
  kl_sum_ += kl;
  kl_sq_sum_ += kl * kl;
  agree_ += agree ? 1 : 0;
  delta_sum_ += delta;
  delta_sq_sum_ += delta * delta;
  dp_sum_ += dp;
  dp_sq_sum_ += dp * dp;
  dp_4_sum_ += dp * dp * dp * dp;
  const auto kl32 = static_cast<float>(kl);
  const auto dp32 = static_cast<float>(dp);
  kl_min_ = nan_min(kl_min_, kl32);
  kl_max_ = nan_max(kl_max_, kl32);
  dp_min_ = nan_min(dp_min_, dp32);
  dp_max_ = nan_max(dp_max_, dp32);
  if (keep_values_) {
    kl_values_.push_back(kl32);
    dp_values_.push_back(dp32);
    nll_values_.push_back(nll);
  }
  ++tokens_;
}

DistributionStats DistributionComparison::summarize() const {
  DistributionStats s;
  s.tokens = tokens_;
  if (tokens_ == 0) return s;
  const auto n = static_cast<double>(tokens_);
  s.kl.mean = kl_sum_ / n;
  s.kl.mean_stderr = sample_sd_of_mean(kl_sum_, kl_sq_sum_, tokens_);
  s.kl.min = kl_min_;
  s.kl.max = kl_max_;
  s.delta_p.mean = dp_sum_ / n;
  s.delta_p.mean_stderr = sample_sd_of_mean(dp_sum_, dp_sq_sum_, tokens_);
  s.delta_p.min = dp_min_;
  s.delta_p.max = dp_max_;
  if (keep_values_) {
    fill_percentiles(kl_values_, s.kl);
    fill_percentiles(dp_values_, s.delta_p);
  }
  const double mse = dp_sq_sum_ / n;
  s.delta_p_rms = std::sqrt(mse);
  const double mse_stderr = sample_sd_of_mean(dp_sq_sum_, dp_4_sum_, tokens_);
  s.delta_p_rms_stderr = mse_stderr == 0.0 ? 0.0 : mse_stderr / (2.0 * s.delta_p_rms);
  const double a = static_cast<double>(agree_) / n;
  s.top1_agreement = a;
  s.top1_agreement_stderr = std::sqrt(a * (1.0 - a) / n);
  s.delta_nll_mean = delta_sum_ / n;
  s.delta_nll_stderr = sample_sd_of_mean(delta_sum_, delta_sq_sum_, tokens_);
  s.delta_nll_ci95 = kZ95 * s.delta_nll_stderr;
  s.ppl_ratio = std::exp(s.delta_nll_mean);
  s.ppl_ratio_ci95_low = std::exp(s.delta_nll_mean - s.delta_nll_ci95);
  s.ppl_ratio_ci95_high = std::exp(s.delta_nll_mean + s.delta_nll_ci95);
  s.nll_mean = nll_sum_ / n;
  s.nll_mean_stderr = sample_sd_of_mean(nll_sum_, nll_sq_sum_, tokens_);
  s.reference_nll_mean = ref_nll_sum_ / n;
  s.reference_nll_mean_stderr = sample_sd_of_mean(ref_nll_sum_, ref_nll_sq_sum_, tokens_);
  s.nll_correlation = pearson(ref_nll_sum_, ref_nll_sq_sum_, nll_sum_, nll_sq_sum_, nll_cross_sum_, tokens_);
  return s;
}

double DistributionComparison::kl_mean() const {
  return tokens_ == 0 ? kNaN : kl_sum_ / static_cast<double>(tokens_);
}

double DistributionComparison::kl_p99() const {
  const double p99 = 99.0;
  return keep_values_ ? percentiles_of(kl_values_, &p99, 1)[0] : kNaN;
}

double DistributionComparison::kl_max() const { return tokens_ == 0 ? kNaN : kl_max_; }

double DistributionComparison::top1_agreement() const {
  return tokens_ == 0 ? kNaN : static_cast<double>(agree_) / static_cast<double>(tokens_);
}

double DistributionComparison::delta_nll_mean() const {
  return tokens_ == 0 ? kNaN : delta_sum_ / static_cast<double>(tokens_);
}

double DistributionComparison::delta_nll_ci95() const {
  return kZ95 * sample_sd_of_mean(delta_sum_, delta_sq_sum_, tokens_);
}

std::optional<PairedNllDifference> paired_nll_difference(const DistributionComparison& a,
                                                         const DistributionComparison& b) {
  const std::vector<float>& x = a.nll_values();
  const std::vector<float>& y = b.nll_values();
  if (x.empty() || x.size() != y.size() || static_cast<int64_t>(x.size()) != a.tokens() || a.tokens() != b.tokens()) {
    return std::nullopt;
  }
  double sum = 0, sq_sum = 0;
  for (size_t t = 0; t < x.size(); ++t) {
    const double d = static_cast<double>(x[t]) - static_cast<double>(y[t]);
    sum += d;
    sq_sum += d * d;
  }
  PairedNllDifference p;
  p.tokens = a.tokens();
  p.mean = sum / static_cast<double>(p.tokens);
  p.ci95 = kZ95 * sample_sd_of_mean(sum, sq_sum, p.tokens);
  return p;
}

}  // namespace quantppl
