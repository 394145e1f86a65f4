// The element loops of ZeroPointGrid (include/quantppl/formats/weight_format.h),
// shared by the formats that have one (uniform_format.cpp, gguf_blocks.cpp).
// Plain C++ on raw arrays, built with -ffp-contract=off: fl(w * k) + z must
// round twice, as the hqq package's float32 tensor ops do, or the codes would
// differ from the ones its optimiser (methods/hqq.h) chose.
#pragma once

#include <algorithm>
#include <cstdint>

#include <ATen/Parallel.h>

namespace quantppl::formats {

// q = clamp(round_half_even(fl(w * k) + z), 0, qmax) of n weights.
void grid_codes(const float* w, int32_t* q, int64_t n, float k, float z, float qmax);

// x_hat of nblocks consecutive blocks of L weights (block b: k[b], z[b], and
// the stored s[b] or d[b], m[b]); src == dst allowed.
//   sub_mul: x_hat = fl(q - z) * s       (the uniform format's (q - z) * s)
//   mul_add: x_hat = fl(q * d) + m       (ggml's q4_1 / q5_1)
void grid_fake_sub_mul(const float* w, float* dst, int64_t nblocks, int64_t L, const float* k, const float* z,
                       const float* s, float qmax);
void grid_fake_mul_add(const float* w, float* dst, int64_t nblocks, int64_t L, const float* k, const float* z,
                       const float* d, const float* m, float qmax);

// Runs fn(b0, nb, lo, len) over a weight of n elements in blocks of L (n a
// multiple of L), in parallel: runs of nb whole blocks from block b0 (lo =
// b0 * L, len = nb * L) when blocks are short, else pieces [lo, lo + len) of
// the one block b0 (nb = 1). Pieces are cut by position only, so results do
// not depend on the thread count.
template <class Fn>
void for_each_grid_run(int64_t n, int64_t L, const Fn& fn) {
  constexpr int64_t kGrain = 32768;  // elements per task
  if (n == 0) return;
  if (L <= kGrain) {
    at::parallel_for(0, n / L, std::max<int64_t>(1, kGrain / L),
                     [&](int64_t b0, int64_t b1) { fn(b0, b1 - b0, b0 * L, (b1 - b0) * L); });
    return;
  }
  at::parallel_for(0, n, kGrain, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end;) {
      const int64_t b = i / L, hi = std::min(end, (b + 1) * L);
      fn(b, int64_t{1}, i, hi - i);
      i = hi;
    }
  });
}

}  // namespace quantppl::formats
