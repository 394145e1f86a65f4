// hqq_prepare: HQQ's parameters on a format's zero-point grid; what is stored
// and rounded is in include/quantppl/methods/hqq.h and the formats' headers.
#include <fmt/format.h>
#include <torch/torch.h>

#include "quantppl/error.h"
#include "quantppl/methods/hqq.h"

namespace quantppl {

std::unique_ptr<PreparedWeight> hqq_prepare(const torch::Tensor& weight, const WeightFormat& format,
                                            const std::string& name, const HqqOptions& options, int* iterations) {
  const ZeroPointGrid* grid = nullptr;
  try {
    grid = format.zero_point_grid();
  } catch (const UsageError& e) {
    throw UsageError(fmt::format("hqq: {}", e.what()));
  }
  if (grid == nullptr) {
    throw UsageError(
        fmt::format("hqq applies to zero-point grids (zeropoint:B:..., q4_1, q5_1), not '{}'", format.spec()));
  }
  if (weight.scalar_type() != torch::kFloat32 || !weight.is_contiguous() || weight.dim() != 2) {
    throw UsageError(fmt::format("hqq: weight '{}' must be a contiguous float32 [out, in] tensor, got {} of {} dims",
                                 name, c10::toString(weight.scalar_type()), weight.dim()));
  }
  const int64_t group_columns = format.group_columns(weight.size(1), name);
  HqqParams p = hqq_optimize(weight, grid->bits(), group_columns, name, options);
  if (iterations != nullptr) *iterations = p.iterations;
  return grid->prepare_with(weight, std::move(p.inverse_scale), std::move(p.zero_point), name);
}

}  // namespace quantppl
