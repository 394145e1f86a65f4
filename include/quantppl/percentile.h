// Percentiles with numpy's default ('linear') method, row by row.
//
// numpy.percentile(a, P) for n values sorted as v[0] <= ... <= v[n-1]:
//   q  = P / 100
//   vi = n*q + (1 + q*(1 - 1 - 1)) - 1        (= (n-1)*q, in numpy's own
//                                               float64 evaluation order)
//   i  = floor(vi), clipped to [0, n-1]; j = min(i + 1, n - 1); g = vi - i
//   result = v[i] + (v[j] - v[i]) * g            if g <  0.5
//            v[j] - (v[j] - v[i]) * (1 - g)      if g >= 0.5   (numpy's _lerp)
// Every step is reproduced in float64 so results match numpy to the last bit
// on float64 input; float32 input is widened, interpolated, then rounded back.
// v[i] and v[j] are found by selection (kthvalue), not by a full sort.
#pragma once

#include <torch/types.h>

namespace quantppl {

// `rows` is 2-D [R, n] with n >= 1; returns [R, 1] in rows' dtype.
// `percent` is in [0, 100].
torch::Tensor percentile_rows(const torch::Tensor& rows, double percent);

}  // namespace quantppl
