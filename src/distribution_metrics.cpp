#include "quantppl/distribution_metrics.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include <ATen/Parallel.h>
#include <torch/torch.h>

#include "quantppl/error.h"
#include "quantppl/percentile.h"
#include "softmax_row_kernel.h"

namespace quantppl {
namespace {

constexpr double kZ95 = 1.959963984540054;  // two-sided 95% normal quantile
// Positions per parallel task: a position is ~20 us of work at V = 32k.
constexpr int64_t kRowsPerTask = 4;

double sample_sd_of_mean(double sum, double sq_sum, int64_t n) {
  if (n < 2) return std::numeric_limits<double>::quiet_NaN();
  const double count = static_cast<double>(n);
  const double mean = sum / count;
  const double variance = std::max(0.0, sq_sum / count - mean * mean) * count / (count - 1);
  return std::sqrt(variance / count);
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
    const double nll64 = nll[i];
    const double delta = nll64 - static_cast<double>(p_nll[k]);  // (3)
    nll_sum_ += nll64;
    nll_sq_sum_ += nll64 * nll64;
    kl_sum_ += kl[i];
    agree_ += (top1[i] >= 0 && top1[i] == p_top1[k]) ? 1 : 0;  // (2)
    delta_sum_ += delta;
    delta_sq_sum_ += delta * delta;
  }
  tokens_ += n;
  for (const double v : kl) kl_values_.push_back(static_cast<float>(v));
}

void DistributionComparison::add_reference(const ReferenceBatch& reference) {
  const auto n = static_cast<int64_t>(reference.rows.size());
  const float* p_nll = reference.nll.data_ptr<float>();
  const int64_t* p_top1 = reference.top1.data_ptr<int64_t>();
  for (int64_t k = 0; k < n; ++k) {
    const double nll64 = p_nll[k];
    nll_sum_ += nll64;
    nll_sq_sum_ += nll64 * nll64;
    const bool finite = std::isfinite(nll64);
    // A non-finite row compares as it would in add(): NaN KL and delta, no agreement.
    kl_sum_ += finite ? 0.0 : std::numeric_limits<double>::quiet_NaN();
    agree_ += (finite && p_top1[k] >= 0) ? 1 : 0;
    delta_sum_ += finite ? 0.0 : std::numeric_limits<double>::quiet_NaN();
    kl_values_.push_back(finite ? 0.0f : std::numeric_limits<float>::quiet_NaN());
  }
  tokens_ += n;
}

double DistributionComparison::kl_mean() const {
  return tokens_ == 0 ? std::numeric_limits<double>::quiet_NaN() : kl_sum_ / static_cast<double>(tokens_);
}

double DistributionComparison::kl_p99() const {
  if (kl_values_.empty()) return std::numeric_limits<double>::quiet_NaN();
  const torch::Tensor values =
      torch::from_blob(const_cast<float*>(kl_values_.data()), {1, static_cast<int64_t>(kl_values_.size())},
                       torch::kFloat32)
          .to(torch::kFloat64);
  return percentile_rows(values, 99.0).item<double>();
}

double DistributionComparison::kl_max() const {
  if (kl_values_.empty()) return std::numeric_limits<double>::quiet_NaN();
  return *std::max_element(kl_values_.begin(), kl_values_.end());
}

double DistributionComparison::top1_agreement() const {
  return tokens_ == 0 ? std::numeric_limits<double>::quiet_NaN()
                      : static_cast<double>(agree_) / static_cast<double>(tokens_);
}

double DistributionComparison::delta_nll_mean() const {
  return tokens_ == 0 ? std::numeric_limits<double>::quiet_NaN() : delta_sum_ / static_cast<double>(tokens_);
}

double DistributionComparison::delta_nll_ci95() const {
  return kZ95 * sample_sd_of_mean(delta_sum_, delta_sq_sum_, tokens_);
}

}  // namespace quantppl
