// AWQ, activation-aware weight quantization (Lin et al. 2023): scale up the
// input channels that see large activations before rounding, so that their
// weights land on a relatively finer grid, and scale the result back.
//
// ---------------------------------------------------------------------------
// The math
// ---------------------------------------------------------------------------
// For a Linear layer y = W x (W [out, in]) and any s > 0 [in],
// W x = (W diag(s)) (diag(s)^-1 x): a deployed model folds diag(s)^-1 into the
// layer or norm that produces x. Quantizing W diag(s) instead of W and
// evaluating the scaled model is the same as evaluating
//
//   (1) W_hat(s) = Q(W diag(s)) diag(s)^-1
//
// with the original input x (what quantppl evaluates). With m_j = mean over
// the calibration tokens of |x_j| (calibration_stats.h, mean_abs) the search
// of the AWQ paper, over alpha in {0, 0.05, ..., 0.95} (alpha_k = k / 20), is
//
//   (2) s(alpha)_j = m_j^alpha / sqrt(max_i m_i^alpha * min_i m_i^alpha)
//       (max and min over the channels with m_i > 0; s_j = 1 where m_j = 0,
//        a channel that never fires)
//   (3) alpha* = argmin_alpha  sum over the layers L of the group of
//                              tr(dW_L H_L dW_L^T),   dW_L = W_hat_L(s(alpha)) - W_L
//
// i.e. the output error of each layer on the calibration inputs (H of
// calibration_stats.h; gptq.h's output_error). The normalisation in (2) puts
// the geometric mean of the extreme scales at 1, so that the scaled weight's
// range stays comparable with W's. At alpha = 0, s = 1 exactly, and W_hat is
// round-to-nearest bit for bit.
//
// Decisions
// * Layers that read the same tensor (shared_input of calibration_stats.h:
//   q/k/v, wi_0/wi_1, cross-attention k/v) must share s, because a deployed
//   model folds s^-1 into what produces that tensor: they are searched
//   together on their summed error (3); m is the first layer's (it is the same
//   tensor for all of them).
// * Ties: the smallest alpha with the smallest error wins (strict <).
// * Arithmetic: s in float64 from m, rounded to float32; W diag(s), the
//   format's fake quantization and the division by s in float32; the error (3)
//   as float32 matrix products over blocks of 128 inputs, using H's symmetry
//   (awq.cpp), summed in float64: each product term is a float32 dot product
//   of at most 128 terms, so |error| <= 129 u sum_rij |dW_ri| |H_ij| |dW_rj|
//   (u = 2^-24, first order), ~8e-6 relative where H's off-diagonal terms do
//   not cancel (the search compares candidates whose errors differ by far
//   more).
// * AWQ then GPTQ (`+awq+gptq`): with s from the search, GPTQ runs on
//   W' = W diag(s) with H' = diag(s)^-1 H diag(s)^-1, the Hessian of the
//   scaled input diag(s)^-1 x, and the result is scaled back:
//   W_hat = GPTQ(W', H') diag(s)^-1. Its output error on (W, H) equals GPTQ's
//   objective on (W', H').
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <torch/types.h>

#include "quantppl/formats/weight_format.h"
#include "quantppl/methods/calibration_stats.h"
#include "quantppl/methods/gptq.h"

namespace quantppl {

struct AwqOptions {
  int64_t grid = 20;  // alpha_k = k / grid, k = 0 .. grid - 1
};

// One layer of a group that shares its input.
struct AwqLayer {
  std::string name;
  torch::Tensor weight;                        // float32 [out, in]
  const LayerActivationStats* stats = nullptr;  // its H and mean |x|
};

struct AwqResult {
  double alpha = 0.0;                  // alpha*
  torch::Tensor scales;                // s(alpha*), float32 [in]
  std::vector<torch::Tensor> weights;  // W_hat of each layer at alpha*, float32
  std::vector<double> output_errors;   // tr(dW H dW^T) of each layer at alpha*
  std::vector<double> rtn_output_errors;  // the same at alpha = 0 (round to nearest)
  std::vector<double> search_errors;   // the summed error (3) for every alpha_k
};

// s(alpha) of (2) from m = mean |x| [in] (any float dtype), float32.
// DataError naming `name` if m has negative, NaN or Inf entries.
torch::Tensor awq_scales(const torch::Tensor& mean_abs, double alpha, const std::string& name);

// The search (3) for one group of layers with the same input (one layer
// alone is a group of one). DataError when the layers' in_features, statistics
// or H do not match, or a weight has NaN/Inf.
AwqResult awq_search(const std::vector<AwqLayer>& layers, const WeightFormat& format, const AwqOptions& options = {});

// diag(s)^-1 H diag(s)^-1, float64.
torch::Tensor scale_hessian(const torch::Tensor& hessian, const torch::Tensor& scales);

// GPTQ on the AWQ-scaled weight and Hessian, scaled back (see above);
// relative_error is e of gptq.h (2) on the original W and H.
GptqResult awq_gptq_quantize(const torch::Tensor& weight, const torch::Tensor& hessian, const torch::Tensor& scales,
                             const WeightFormat& format, const std::string& name, const GptqOptions& options = {});

}  // namespace quantppl
