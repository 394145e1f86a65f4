#include "quantppl/percentile.h"

#include <cmath>

#include <torch/torch.h>

namespace quantppl {

torch::Tensor percentile_rows(const torch::Tensor& rows, double percent) {
  TORCH_CHECK(rows.dim() == 2 && rows.size(1) >= 1, "percentile_rows needs [R, n>=1]");
  const int64_t n = rows.size(1);
  const double q = percent / 100.0;
  // numpy's _compute_virtual_index for alpha = beta = 1, same operation order.
  const double vi = static_cast<double>(n) * q + (1.0 + q * (1.0 - 1.0 - 1.0)) - 1.0;
  int64_t lo_index = 0;
  int64_t hi_index = 0;
  double gamma = 0.0;
  if (vi >= static_cast<double>(n - 1)) {
    lo_index = hi_index = n - 1;
  } else if (vi < 0.0) {
    lo_index = hi_index = 0;
  } else {
    lo_index = static_cast<int64_t>(std::floor(vi));
    hi_index = lo_index + 1;
    gamma = vi - static_cast<double>(lo_index);
  }
  // kthvalue is 1-based.
  torch::Tensor below = std::get<0>(rows.kthvalue(lo_index + 1, /*dim=*/1, /*keepdim=*/true));
  torch::Tensor above = hi_index == lo_index
                            ? below
                            : std::get<0>(rows.kthvalue(hi_index + 1, /*dim=*/1, /*keepdim=*/true));
  below = below.to(torch::kFloat64);
  above = above.to(torch::kFloat64);
  const torch::Tensor diff = above - below;
  const torch::Tensor result =
      gamma >= 0.5 ? above - diff * (1.0 - gamma) : below + diff * gamma;
  return result.to(rows.scalar_type());
}

}  // namespace quantppl
