// How far a quantized model's predictive distributions move from the fp32
// model's, token by token, on the same windows (llama.cpp's KL-divergence and
// "same top token" statistics, plus a paired NLL difference).
//
// For each predicted position t (a real label position), with P = softmax of
// the fp32 logits and Q = softmax of the variant's logits over the vocabulary:
//
//   (1) KL_t      = sum_v P_v (log P_v - log Q_v)           (nats, >= 0 up to rounding)
//   (2) agree_t   = [argmax P == argmax Q]
//   (3) d_t       = nll_t(variant) - nll_t(fp32)             (nll_t = -log prob of the label)
//
//   kl_mean = mean_t KL_t; kl_p99, kl_max = the 99th percentile (numpy's linear
//   method) and maximum of KL_t; top1_agreement = mean_t agree_t in [0, 1];
//   delta_nll_mean = mean_t d_t; delta_nll_ci95 = 1.96 * sd(d) / sqrt(N), the
//   half-width of the normal 95% confidence interval of the mean.
//
// Why paired: both models score the same tokens, so token difficulty cancels
// in d_t and its spread is far smaller than that of either model's nll_t; the
// interval says whether a variant's damage is real, which is what a CI gate
// should test (perplexity's own standard error mostly measures the text).
//
// Computed without log_softmax tensors: per position, two read passes over
// the fp32 row and two over the variant's (src/softmax_row_kernel.h), with
//   (1) = C / S_p - lse_p + lse_q,  C = sum_v exp(p_v - max p) (p_v - q_v),
// terms in float and every sum in double. Only the per-token KL values are
// kept (4 bytes a token, for the percentile); logits are never stored beyond
// the batch being compared, and no temporary as large as the logits is made.
#pragma once

#include <cstdint>
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

class DistributionComparison {
 public:
  // Adds the variant's logits for the batch `reference` describes. A position
  // whose logits hold NaN or Inf adds NaN to the NLL and KL sums.
  void add(const ReferenceBatch& reference, const torch::Tensor& logits);
  // Adds the fp32 model against itself: the same sums as add(reference,
  // reference.logits) (KL 0, full agreement, no NLL change) without reading
  // the logits again.
  void add_reference(const ReferenceBatch& reference);

  int64_t tokens() const { return tokens_; }
  double nll_sum() const { return nll_sum_; }
  double nll_sq_sum() const { return nll_sq_sum_; }
  double kl_mean() const;
  double kl_p99() const;
  double kl_max() const;
  double top1_agreement() const;
  double delta_nll_mean() const;
  double delta_nll_ci95() const;

 private:
  int64_t tokens_ = 0;
  double nll_sum_ = 0;
  double nll_sq_sum_ = 0;
  double kl_sum_ = 0;
  int64_t agree_ = 0;
  double delta_sum_ = 0;
  double delta_sq_sum_ = 0;
  std::vector<float> kl_values_;
};

}  // namespace quantppl
