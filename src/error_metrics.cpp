#include "quantppl/error_metrics.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include <fmt/format.h>
#include <torch/torch.h>

#include "quantppl/error.h"

namespace quantppl {

double ErrorMetrics::mse() const {
  return count == 0 ? 0.0 : sum_squared_error / static_cast<double>(count);
}

double ErrorMetrics::sqnr_db() const {
  if (sum_squared_error == 0.0) return std::numeric_limits<double>::infinity();
  return 10.0 * std::log10(sum_squared_signal / sum_squared_error);
}

void ErrorMetrics::merge(const ErrorMetrics& other) {
  count += other.count;
  sum_squared_error += other.sum_squared_error;
  sum_squared_signal += other.sum_squared_signal;
  max_abs_error = std::max(max_abs_error, other.max_abs_error);
}

ErrorMetrics error_metrics(const torch::Tensor& original, const torch::Tensor& reconstructed) {
  if (original.sizes() != reconstructed.sizes()) {
    throw UsageError(fmt::format("error_metrics: shapes differ ({} vs {})",
                                 fmt::join(original.sizes(), "x"), fmt::join(reconstructed.sizes(), "x")));
  }
  torch::NoGradGuard no_grad;
  ErrorMetrics m;
  m.count = original.numel();
  if (m.count == 0) return m;
  const torch::Tensor x = original.to(torch::kFloat64);
  const torch::Tensor diff = x - reconstructed.to(torch::kFloat64);
  m.sum_squared_error = diff.square().sum().item<double>();
  m.sum_squared_signal = x.square().sum().item<double>();
  m.max_abs_error = diff.abs().max().item<double>();
  return m;
}

}  // namespace quantppl
