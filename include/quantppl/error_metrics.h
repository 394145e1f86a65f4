// How far a reconstruction x_hat is from the original x.
//
//   MSE      = sum((x - x_hat)^2) / n          (the numpy seed's quantization_error)
//   max_abs  = max |x - x_hat|
//   SQNR_dB  = 10 * log10(sum(x^2) / sum((x - x_hat)^2))
//
// Sums are accumulated in float64. SQNR is +inf when the reconstruction is
// exact (and also when x is all zero and exactly reconstructed); an empty pair
// has MSE 0, max_abs 0 and SQNR +inf.
// The raw sums are kept so that metrics over many tensors (a whole model's
// quantized layers) combine exactly: merge() adds them, it does not average
// per-tensor MSEs.
#pragma once

#include <cstdint>

#include <torch/types.h>

namespace quantppl {

struct ErrorMetrics {
  int64_t count = 0;               // n
  double sum_squared_error = 0.0;  // sum((x - x_hat)^2)
  double sum_squared_signal = 0.0; // sum(x^2)
  double max_abs_error = 0.0;

  double mse() const;
  double sqnr_db() const;
  // Accumulates another tensor's sums into this one.
  void merge(const ErrorMetrics& other);
};

// Throws UsageError if the shapes differ.
ErrorMetrics error_metrics(const torch::Tensor& original, const torch::Tensor& reconstructed);

}  // namespace quantppl
