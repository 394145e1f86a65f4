// GPTQ (Frantar, Ashkboos, Hoefler, Alistarh 2022, "GPTQ: Accurate Post-Training
// Quantization for Generative Pre-trained Transformers"): round the columns of a
// Linear weight one at a time, spreading each column's rounding error onto the
// columns not yet rounded so that the layer's *output* moves as little as possible
// on the calibration inputs.
//
// ---------------------------------------------------------------------------
// The math (our notation; equation numbers are cited in gptq.cpp)
// ---------------------------------------------------------------------------
// W [out, in] is the weight, x [in] one input of the layer, and over N calibration
// token positions
//
//   (1) H = (2/N) sum_n x_n x_n^T                    [in, in]   (calibration_stats.h)
//
// The objective, per output row w (rows are independent), is the squared output
// error on the calibration inputs, ||w X - w_hat X||^2 = (1/2) N (w - w_hat) H (w - w_hat)^T.
// The relative output error of the whole layer, reported for every method, is
//
//   (2) e = tr(dW H dW^T) / tr(W H W^T),    dW = W_hat - W
//
// (0 when both are 0; +inf when only the denominator is 0).
//
// Optimal Brain Surgeon, one column q at a time: rounding column q to
// w_hat_q costs err_q = (w_q - w_hat_q) / [H^-1]_qq, and the best update of the
// columns F not yet rounded is  w_F -= err_q * [H^-1]_{q,F}, after which column q
// is removed from H^-1. GPTQ's observations:
//   * the order of the columns can be the same for every row (natural order);
//   * the rows of H^-1 restricted to the remaining columns, for every q in turn,
//     are exactly the rows of the upper Cholesky factor U of H^-1
//     (H^-1 = U^T U, U upper triangular), scaled by 1/U_qq. So
//
//   (3) err_q = (w_q - Q(w_q)) / U_qq,    w_j -= err_q * U_qj   for all j > q
//
//   * the updates of (3) for a block of B columns can be collected and applied
//     to the columns after the block in one matrix product ("lazy batch"):
//
//   (4) W[:, i2:] -= Err[:, i1:i2] U[i1:i2, i2:]      Err = the block's err columns
//
//     which is the same arithmetic as (3) column by column, reordered.
//
// Decisions (each states what the paper or the common implementations do):
// * Damping: lambda = damp * mean(diag H) (damp = 0.01) is added to the
//   diagonal before inverting, as in the paper's reference code.
// * Dead inputs: a column whose diag(H) is 0 saw only zeros; its weights cannot
//   change the output, so they are set to 0 in W and its diagonal to 1 (so H
//   stays invertible), before damping.
// * Precision: H, its damping, Cholesky factorisation, inverse and U are
//   computed in float64 (a 1024-wide Cholesky of a nearly singular H loses
//   accuracy in float32); U is then rounded to float32 and the column loop and
//   the updates (3)-(4) run in float32 like the paper's code.
// * Groups: a format with G inputs per block (group G, or per channel G = in,
//   or per tensor) fixes a group's parameters (scale, zero point) when the
//   column loop reaches the group's first column c0, from the weights
//   W[:, c0 : c0 + G) *as updated by every column before c0*
//   (WeightFormat::begin_group). With lazy batches the columns after the
//   current block have not yet received the current block's updates; they are
//   brought up to date for this choice (the paper's unbatched algorithm, where
//   every update is applied immediately, sees exactly these values). The
//   paper's reference code instead reads W[:, c0 : c0 + G) without the
//   current block's updates when a group starts inside a block.
// * act_order ("+gptq:actorder"): columns are processed in descending diag(H)
//   (stable sort: ties keep the natural order), so the inputs with the largest
//   activations are rounded first while the most columns remain to absorb
//   their error. Groups stay runs of G consecutive *original* inputs (that is
//   what a format stores), so their parameters are fixed in advance from the
//   original W ("static groups"); the result is returned in the original
//   column order. Per channel and per tensor have one group per row or tensor,
//   whose parameters come from the original W in either order.
// * Block size B = 128 (the paper's); it changes only the order of float32
//   operations, not the algorithm.
#pragma once

#include <cstdint>
#include <string>

#include <torch/types.h>

#include "quantppl/formats/weight_format.h"

namespace quantppl {

struct GptqOptions {
  int64_t block_size = 128;  // columns per lazy batch, > 0
  double damp = 0.01;        // lambda = damp * mean(diag H), >= 0
  bool act_order = false;    // descending diag(H) column order
  // With act_order: group parameters fixed in advance from the original W.
  // Must be true when a format has more than one group per row (groups are
  // consecutive original inputs); GPTQ with act_order and groups chosen
  // along the permuted order cannot be stored in any format here.
  bool static_groups = true;
};

struct GptqResult {
  torch::Tensor weight;           // W_hat, float32 [out, in], on the format's grid
  double relative_error = 0.0;    // e of (2) with the undamped H
  // What fixed each group's parameters, [out, in] float32: column block g of
  // it holds W[:, c0 : c0 + G) as the group saw them when GPTQ reached c0 (the
  // error-updated weights; the original W with act_order's static groups and
  // per tensor). WeightFormat::prepare_from_groups(W, parameter_source) gives
  // back exactly those parameters, which is how a GPTQ result is packed at the
  // format's real width (methods/method_weight.h).
  torch::Tensor parameter_source;
  // The whole weight begin_group was given (W with dead inputs zeroed), the
  // `whole_weight` of prepare_from_groups.
  torch::Tensor group_whole;
};

// GPTQ of one Linear weight. `weight`: float32 [out, in] (any layout);
// `hessian`: [in, in] float32 or float64, symmetric positive semi-definite (1);
// `name` names the layer in errors. Throws DataError for NaN/Inf in either,
// shapes that do not match, or an H that is not positive definite after
// damping (a corrupt statistics file); UsageError for bad options and the
// format's own group errors.
GptqResult gptq_quantize(const torch::Tensor& weight, const torch::Tensor& hessian, const WeightFormat& format,
                         const std::string& name, const GptqOptions& options = {});

// e of (2) for any W_hat (RTN, AWQ, HQQ, GPTQ), in float64.
double relative_output_error(const torch::Tensor& weight, const torch::Tensor& weight_hat,
                             const torch::Tensor& hessian);

// tr(dW H dW^T) in float64: the unnormalised output error that AWQ minimises.
double output_error(const torch::Tensor& weight, const torch::Tensor& weight_hat, const torch::Tensor& hessian);

}  // namespace quantppl
