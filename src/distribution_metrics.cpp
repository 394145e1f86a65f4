#include "quantppl/distribution_metrics.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include <torch/torch.h>

#include "quantppl/error.h"
#include "quantppl/percentile.h"
#include "quantppl/perplexity.h"

namespace quantppl {
namespace {

// Rows of [N, V] handled at once: bounds the log_softmax temporaries.
constexpr int64_t kRowsPerChunk = 256;
constexpr double kZ95 = 1.959963984540054;  // two-sided 95% normal quantile

double sample_sd_of_mean(double sum, double sq_sum, int64_t n) {
  if (n < 2) return std::numeric_limits<double>::quiet_NaN();
  const double count = static_cast<double>(n);
  const double mean = sum / count;
  const double variance = std::max(0.0, sq_sum / count - mean * mean) * count / (count - 1);
  return std::sqrt(variance / count);
}

}  // namespace

ReferenceBatch make_reference_batch(const torch::Tensor& logits, const torch::Tensor& labels,
                                    const torch::Tensor& label_mask) {
  ReferenceBatch r;
  r.logits = logits;
  r.labels = labels;
  r.label_mask = label_mask;
  r.nll = token_nll(logits, labels).masked_select(label_mask);
  // argmax over V first ([B, T]), then the mask: no [N, V] copy.
  r.top1 = logits.argmax(/*dim=*/2).masked_select(label_mask);
  return r;
}

void DistributionComparison::add(const ReferenceBatch& reference, const torch::Tensor& logits) {
  if (logits.sizes() != reference.logits.sizes()) {
    throw UsageError("DistributionComparison: variant logits do not match the reference batch's shape");
  }
  const int64_t vocab = logits.size(2);
  const torch::Tensor p_flat = reference.logits.reshape({-1, vocab});
  const torch::Tensor q_flat = logits.reshape({-1, vocab});
  const torch::Tensor mask_flat = reference.label_mask.reshape({-1});
  std::vector<torch::Tensor> kl_chunks;
  std::vector<torch::Tensor> top1_chunks;
  // Chunks of positions; only the masked rows of a chunk are copied.
  for (int64_t begin = 0; begin < p_flat.size(0); begin += kRowsPerChunk) {
    const int64_t end = std::min(p_flat.size(0), begin + kRowsPerChunk);
    const torch::Tensor mask = mask_flat.slice(0, begin, end);
    const torch::Tensor q_rows = q_flat.slice(0, begin, end).index({mask});
    const torch::Tensor log_p = torch::log_softmax(p_flat.slice(0, begin, end).index({mask}), /*dim=*/1);
    const torch::Tensor log_q = torch::log_softmax(q_rows, /*dim=*/1);
    kl_chunks.push_back((log_p.exp() * (log_p - log_q)).sum(/*dim=*/1));  // (1)
    top1_chunks.push_back(q_rows.argmax(/*dim=*/1));
  }
  const torch::Tensor kl = torch::cat(kl_chunks).contiguous();
  const torch::Tensor top1 = torch::cat(top1_chunks);
  const torch::Tensor nll64 = token_nll(logits, reference.labels).masked_select(reference.label_mask).to(torch::kFloat64);
  const torch::Tensor delta = nll64 - reference.nll.to(torch::kFloat64);  // (3)
  const int64_t n = kl.size(0);
  tokens_ += n;
  nll_sum_ += nll64.sum().item<double>();
  nll_sq_sum_ += nll64.square().sum().item<double>();
  kl_sum_ += kl.to(torch::kFloat64).sum().item<double>();
  agree_ += (top1 == reference.top1).sum().item<int64_t>();  // (2)
  delta_sum_ += delta.sum().item<double>();
  delta_sq_sum_ += delta.square().sum().item<double>();
  const float* values = kl.data_ptr<float>();
  kl_values_.insert(kl_values_.end(), values, values + n);
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
