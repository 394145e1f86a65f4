// HQQ; the math, the package's iteration and the decisions are in
// include/quantppl/methods/hqq.h. HqqBlocks are independent except for the
// stopping rule, which looks at the mean error over the whole weight: each
// iteration is one parallel pass over the blocks, then one global decision.
#include "quantppl/methods/hqq.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <limits>
#include <vector>

#include <ATen/Parallel.h>
#include <fmt/format.h>
#include <torch/torch.h>

#include "../fake_quantize_kernel.h"
#include "hqq_kernel.h"
#include "quantppl/error.h"
#include "quantppl/quantize.h"

namespace quantppl {
namespace {

struct HqqBlocks {
  torch::Tensor w;  // float32 contiguous [out, in]
  int64_t size = 0;
  int64_t count = 0;
  float qmax = 0;
  std::vector<float> k;  // (1)
  std::vector<float> z;  // z_0 of (1)
};

HqqBlocks hqq_min_max_blocks(const torch::Tensor& weight, int bits, int64_t group_columns, const std::string& name) {
  if (bits < kMinBits || bits > kMaxBits) {
    throw UsageError(fmt::format("HQQ: bits must be in [{}, {}], got {}", kMinBits, kMaxBits, bits));
  }
  if (weight.dim() != 2) {
    throw DataError(fmt::format("HQQ: weight '{}' must be 2-D [out, in], got {} dimensions", name, weight.dim()));
  }
  const int64_t in = weight.size(1);
  if (group_columns < 0 || (group_columns > 0 && in % group_columns != 0)) {
    throw UsageError(fmt::format("HQQ: a block of {} inputs does not divide the {} inputs of '{}'", group_columns, in,
                                 name));
  }
  HqqBlocks b;
  b.w = weight.to(torch::kFloat32).contiguous();
  b.size = group_columns == 0 ? b.w.numel() : group_columns;
  b.count = b.size == 0 ? 0 : b.w.numel() / b.size;
  b.qmax = static_cast<float>((1 << bits) - 1);
  b.k.resize(b.count);
  b.z.resize(b.count);
  const float* w = b.w.data_ptr<float>();
  std::atomic<bool> finite{true};
  const int64_t grain = std::max<int64_t>(1, 16384 / std::max<int64_t>(1, b.size));
  at::parallel_for(0, b.count, grain, [&](int64_t b0, int64_t b1) {
    for (int64_t i = b0; i < b1; ++i) {
      float lo = 0, hi = 0;
      if (!kernel::min_max(w + i * b.size, b.size, &lo, &hi)) {
        finite = false;
        return;
      }
      // The package's float32 arithmetic (hqq/core/quantize.py): k = max_v / denom
      // with a Python int max_v, which torch evaluates as denom.reciprocal() * max_v
      // (Tensor.__rtruediv__), so k = fl(fl(1 / denom) * L), not always fl(L / denom);
      // 1 where |denom| <= 1e-4; at most 2e4; z = -min * k.
      const float denom = hi - lo;
      float k = std::fabs(denom) <= 1e-4f ? 1.0f : (1.0f / denom) * b.qmax;
      k = std::min(k, 2e4f);
      b.k[i] = k;
      b.z[i] = -lo * k;
    }
  });
  if (!finite) throw DataError(fmt::format("HQQ: weight '{}' contains NaN or Inf", name));
  return b;
}

torch::Tensor hqq_dequantize_blocks(const HqqBlocks& b) {
  torch::Tensor out = torch::empty_like(b.w);
  const float* src = b.w.data_ptr<float>();
  float* dst = out.data_ptr<float>();
  const int64_t grain = std::max<int64_t>(1, 16384 / std::max<int64_t>(1, b.size));
  at::parallel_for(0, b.count, grain, [&](int64_t b0, int64_t b1) {
    for (int64_t i = b0; i < b1; ++i) {
      const float k = b.k[i];
      kernel::hqq_dequantize(src + i * b.size, dst + i * b.size, b.size, k, b.z[i], b.qmax, 1.0f / k);
    }
  });
  return out;
}

}  // namespace

torch::Tensor hqq_min_max_fake_quantize(const torch::Tensor& weight, int bits, int64_t group_columns,
                                        const std::string& name) {
  torch::NoGradGuard no_grad;
  return hqq_dequantize_blocks(hqq_min_max_blocks(weight, bits, group_columns, name));
}

namespace {

HqqBlocks hqq_optimize_blocks(const torch::Tensor& weight, int bits, int64_t group_columns, const std::string& name,
                              const HqqOptions& options, int* iterations) {
  if (!(options.lp_norm > 0 && options.lp_norm <= 1)) {
    throw UsageError(fmt::format("HQQ: lp_norm must be in (0, 1], got {}", options.lp_norm));
  }
  if (!(options.beta > 0) || !std::isfinite(options.beta)) {
    throw UsageError(fmt::format("HQQ: beta must be a finite number > 0, got {}", options.beta));
  }
  if (options.iters < 1) throw UsageError(fmt::format("HQQ: iters must be >= 1, got {}", options.iters));
  torch::NoGradGuard no_grad;
  HqqBlocks b = hqq_min_max_blocks(weight, bits, group_columns, name);

  kernel::HqqStep step;
  step.qmax = b.qmax;
  step.inv_beta = static_cast<float>(1.0 / options.beta);
  step.pm1 = static_cast<float>(options.lp_norm - 1.0);
  // shrink_p(x) = 0 iff |x|^(2-p) <= 1/beta; 0.1% below the root, float
  // rounding cannot make |x| - (1/beta)|x|^(p-1) positive.
  step.threshold = static_cast<float>(std::pow(options.beta, -1.0 / (2.0 - options.lp_norm)) * (1.0 - 1e-3));

  // Iterations run kChunk at a time on each block while it is in cache (one
  // pass over the weights per chunk instead of per iteration), recording each
  // iteration's error per tile of kTile blocks and each block's zero point
  // after it; the global stopping rule then reads them in iteration order.
  // The wasted work is at most kChunk - 1 iterations. Tiles make the float64
  // error sums independent of the thread count. kChunk = 2: on the
  // flan-t5-small-shaped benchmark (1 thread, loaded machine) one iteration
  // per pass was ~10% faster than 4 (no wasted iterations; the stream from
  // memory overlaps the arithmetic), 2 halves the memory traffic for a
  // quieter machine or more threads at half an iteration wasted on average.
  constexpr int kChunk = 2;
  constexpr int64_t kTile = 64;
  struct {
    int iterations = 0;
  } result;
  const float* w = b.w.data_ptr<float>();
  const std::vector<float> z_start = b.z;
  std::vector<double> inv_k(b.k.size());
  for (size_t i = 0; i < b.k.size(); ++i) inv_k[i] = 1.0 / static_cast<double>(b.k[i]);
  const int64_t tiles = (b.count + kTile - 1) / kTile;
  std::vector<double> tile_err(static_cast<size_t>(tiles) * kChunk);
  // z_after[j * count + i]: block i's zero point after iteration j of the chunk.
  std::vector<float> z_after(static_cast<size_t>(b.count) * kChunk);
  float best = std::numeric_limits<float>::infinity();
  bool stopped = false;
  for (int it0 = 0; it0 < options.iters && b.count > 0 && !stopped; it0 += kChunk) {
    const int chunk = std::min(kChunk, options.iters - it0);
    at::parallel_for(0, tiles, 1, [&](int64_t t0, int64_t t1) {
      for (int64_t t = t0; t < t1; ++t) {
        double* err = &tile_err[static_cast<size_t>(t) * kChunk];
        // Iteration-major within the tile: consecutive blocks are independent,
        // so the CPU overlaps them (one block's iterations form a dependency
        // chain through z); the tile stays in cache across the chunk.
        const int64_t first = t * kTile, n = std::min(b.count, (t + 1) * kTile) - first;
        for (int j = 0; j < chunk; ++j) {
          const float* z_in = j == 0 ? &b.z[first] : &z_after[static_cast<size_t>((j - 1) * b.count + first)];
          err[j] = kernel::hqq_step_blocks(w + first * b.size, n, b.size, &b.k[first], &inv_k[first], z_in, &z_start[first],
                                           &z_after[static_cast<size_t>(j * b.count + first)], step);
        }
      }
    });
    int last = chunk - 1;  // the iteration whose zero point is kept
    for (int j = 0; j < chunk; ++j) {
      double total = 0;
      for (int64_t t = 0; t < tiles; ++t) total += tile_err[static_cast<size_t>(t) * kChunk + j];
      const float current = static_cast<float>(total / static_cast<double>(b.w.numel()));
      result.iterations = it0 + j + 1;
      // The package keeps the zero point of the step it just took, then stops
      // if the error of the iterate it evaluated did not improve.
      if (current < best) {
        best = current;
      } else {
        last = j;
        stopped = true;
        break;
      }
    }
    std::copy_n(&z_after[static_cast<size_t>(last * b.count)], b.count, b.z.begin());
  }

  *iterations = result.iterations;
  return b;
}

}  // namespace

HqqParams hqq_optimize(const torch::Tensor& weight, int bits, int64_t group_columns, const std::string& name,
                       const HqqOptions& options) {
  HqqParams p;
  HqqBlocks b = hqq_optimize_blocks(weight, bits, group_columns, name, options, &p.iterations);
  p.inverse_scale = std::move(b.k);
  p.zero_point = std::move(b.z);
  return p;
}

HqqResult hqq_quantize(const torch::Tensor& weight, int bits, int64_t group_columns, const std::string& name,
                       const HqqOptions& options) {
  HqqResult result;
  HqqBlocks b = hqq_optimize_blocks(weight, bits, group_columns, name, options, &result.iterations);
  result.weight = hqq_dequantize_blocks(b);
  result.inverse_scale = torch::from_blob(b.k.data(), {b.count}, torch::kFloat32).clone();
  result.scale = 1.0f / result.inverse_scale;
  result.zero_point = torch::from_blob(b.z.data(), {b.count}, torch::kFloat32).clone();
  return result;
}

}  // namespace quantppl
