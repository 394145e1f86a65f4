#include "quantppl/quantize.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <limits>
#include <vector>

#include <fmt/format.h>
#include <fmt/ranges.h>  // fmt::join (there since fmt 11; fmt 9 has it in format.h too)
#include <torch/torch.h>

#include "fake_quantize_kernel.h"
#include "quantppl/error.h"
#include "quantppl/percentile.h"

namespace quantppl {
namespace {

// How x is cut into blocks: a [blocks, block_len] row-major view.
struct Blocking {
  int64_t blocks;
  int64_t block_len;
};

// The actual minimum and maximum of every block, each [blocks, 1].
struct BlockExtremes {
  torch::Tensor lo;
  torch::Tensor hi;
};

// The clipping range of every block, each [blocks, 1]. For absmax only `hi`
// is used and holds the clipping magnitude a.
struct ClipRange {
  torch::Tensor lo;
  torch::Tensor hi;
};

// Candidate shrink factors of the MSE search, p = 1 - i/100 for i < 80 (the
// grid GPTQ's quantizer searches). p = 1 is the min-max range itself and is
// tried first, so the search can never end worse than min-max.
constexpr int kMseGridSteps = 100;
constexpr int kMseMaxShrinkSteps = 80;

int64_t row_count(const torch::Tensor& x) { return x.dim() >= 2 ? x.size(0) : 1; }

Blocking blocking(const torch::Tensor& x, const QuantConfig& config, const std::string& name) {
  const int64_t numel = x.numel();
  switch (config.granularity) {
    case Granularity::kPerTensor:
      return {1, numel};
    case Granularity::kPerChannel: {
      const int64_t rows = row_count(x);
      return {rows, rows == 0 ? 0 : numel / rows};
    }
    case Granularity::kPerGroup: {
      const int64_t row_len = x.dim() == 0 ? 1 : x.size(-1);
      if (row_len % config.group_size != 0) {
        throw UsageError(fmt::format(
            "group size {} does not divide the row length {} of '{}' (shape {}); "
            "choose a group size that divides every selected layer's input dimension",
            config.group_size, row_len, name, fmt::join(x.sizes(), "x")));
      }
      return {numel / config.group_size, config.group_size};
    }
  }
  throw UsageError("unknown granularity");
}

// Elements per parallel work item of the fused loops: big enough that a
// thread's share outweighs OpenMP's fork cost, small enough (256 KiB of
// float) that a piece stays in L2 while the MSE search re-reads it.
constexpr int64_t kGrain = int64_t{1} << 16;
// Out-of-place fake-quantization of at least this many bytes uses streaming
// stores (kernel::fake_quantize): below it the weight may well stay cached.
constexpr int64_t kStreamMinBytes = int64_t{256} << 10;

void check_dtype(const torch::Tensor& x, const std::string& name) {
  if (!x.defined()) throw UsageError(fmt::format("'{}' is an undefined tensor", name));
  if (x.scalar_type() != torch::kFloat32 && x.scalar_type() != torch::kFloat64) {
    throw DataError(fmt::format("'{}' has dtype {}, expected float32 or float64", name,
                                std::string(c10::toString(x.scalar_type()))));
  }
}

// Called once a pass has found a NaN or Inf: finds the first one for the message.
[[noreturn]] void throw_not_finite(const torch::Tensor& x, const std::string& name) {
  const torch::Tensor flat = x.reshape({-1});
  const torch::Tensor bad = torch::nonzero(~torch::isfinite(flat));
  const int64_t first = bad.numel() > 0 ? bad[0][0].item<int64_t>() : 0;
  throw DataError(fmt::format("'{}' contains NaN or Inf (first at flat index {}: {})", name, first,
                              flat[first].item<double>()));
}

// The reference's check: whole-tensor isfinite (allocates a bool per element).
void check_finite_reference(const torch::Tensor& x, const std::string& name) {
  if (x.numel() > 0 && !torch::isfinite(x).all().item<bool>()) throw_not_finite(x, name);
}

template <typename T>
kernel::Grid<T> grid_form(const QuantConfig& config) {
  const CodeRange codes = code_range(config);
  return {T(1), T(0), static_cast<T>(codes.qmin), static_cast<T>(codes.qmax),
          config.scale_form == ScaleForm::kInverseStep, config.scheme == Scheme::kZeroPoint};
}

// Each block's min and max in one fused read pass (kernel::min_max), which
// also finds NaN and Inf. Many blocks: parallel over blocks; few (per
// tensor): parallel over kGrain pieces of each block, then combined. min and
// max are exact, so this equals aminmax bit for bit whatever the split.
template <typename T>
BlockExtremes fused_extremes(const torch::Tensor& blocks, const std::string& name) {
  const int64_t nb = blocks.size(0), len = blocks.size(1);
  torch::Tensor lo = torch::empty({nb, 1}, blocks.options());
  torch::Tensor hi = torch::empty({nb, 1}, blocks.options());
  const T* x = blocks.data_ptr<T>();
  T* lo_p = lo.data_ptr<T>();
  T* hi_p = hi.data_ptr<T>();
  std::atomic<bool> finite{true};
  if (nb >= 4 * at::get_num_threads() || len <= kGrain) {
    at::parallel_for(0, nb, std::max<int64_t>(1, kGrain / std::max<int64_t>(len, 1)), [&](int64_t b0, int64_t b1) {
      for (int64_t b = b0; b < b1; ++b) {
        if (!kernel::min_max(x + b * len, len, lo_p + b, hi_p + b)) finite = false;
      }
    });
  } else {
    const int64_t pieces = (len + kGrain - 1) / kGrain;
    std::vector<T> piece_lo(static_cast<size_t>(pieces)), piece_hi(static_cast<size_t>(pieces));
    for (int64_t b = 0; b < nb; ++b) {
      at::parallel_for(0, pieces, 1, [&](int64_t p0, int64_t p1) {
        for (int64_t p = p0; p < p1; ++p) {
          const int64_t begin = p * kGrain;
          if (!kernel::min_max(x + b * len + begin, std::min(kGrain, len - begin), &piece_lo[p], &piece_hi[p])) {
            finite = false;
          }
        }
      });
      lo_p[b] = *std::min_element(piece_lo.begin(), piece_lo.end());
      hi_p[b] = *std::max_element(piece_hi.begin(), piece_hi.end());
    }
  }
  if (!finite) throw_not_finite(blocks, name);
  return {lo, hi};
}

// The reference's extremes: aminmax after a whole-tensor isfinite check.
BlockExtremes block_extremes_reference(const torch::Tensor& blocks, const std::string& name) {
  check_finite_reference(blocks, name);
  auto [lo, hi] = blocks.aminmax(/*dim=*/1, /*keepdim=*/true);
  return {lo, hi};
}

BlockExtremes block_extremes(const torch::Tensor& blocks, const std::string& name) {
  return blocks.scalar_type() == torch::kFloat64 ? fused_extremes<double>(blocks, name)
                                                 : fused_extremes<float>(blocks, name);
}

ClipRange minmax_range(const BlockExtremes& extremes, Scheme scheme) {
  // max|x| = max(-min, max): negation is exact, so this is bit-equal to abs().max().
  if (scheme == Scheme::kAbsmax) return {torch::Tensor(), torch::maximum(-extremes.lo, extremes.hi)};
  return {extremes.lo, extremes.hi};
}

ClipRange percentile_range(const torch::Tensor& blocks, Scheme scheme, double percent) {
  if (scheme == Scheme::kAbsmax) return {torch::Tensor(), percentile_rows(blocks.abs(), percent)};
  // The numpy seed: alpha = percentile(x, P), beta = percentile(x, 100 - P).
  // For P < 50 the two swap roles; the range stays [smaller, larger].
  const torch::Tensor a = percentile_rows(blocks, percent);
  const torch::Tensor b = percentile_rows(blocks, 100.0 - percent);
  return {torch::minimum(a, b), torch::maximum(a, b)};
}

// Smallest positive normal and largest finite value of the blocks' dtype.
double tiny_of(const torch::Tensor& t) {
  return t.scalar_type() == torch::kFloat64 ? std::numeric_limits<double>::min()
                                            : std::numeric_limits<float>::min();
}
double huge_of(const torch::Tensor& t) {
  return t.scalar_type() == torch::kFloat64 ? std::numeric_limits<double>::max()
                                            : std::numeric_limits<float>::max();
}

// Equations (3)-(6) and (1'), with the zero-range, overflow and underflow
// rules stated in the header.
QParams params_from_range(const ClipRange& range, const QuantConfig& config) {
  const CodeRange codes = code_range(config);
  const torch::Tensor& hi = range.hi;
  const double tiny = tiny_of(hi);
  const double huge = huge_of(hi);
  const bool step = config.scale_form == ScaleForm::kStep;

  if (config.scheme == Scheme::kAbsmax) {
    const auto qmax = static_cast<double>(codes.qmax);
    torch::Tensor scale;
    if (step) {
      scale = hi / qmax;  // (3)
      scale = torch::where(hi == 0, torch::ones_like(scale), scale);
      scale = torch::where(scale == 0, torch::full_like(scale, tiny), scale);
    } else {
      scale = torch::reciprocal(hi) * qmax;  // the tutorial's 127 / max|x|, as Python evaluates it (quantize.h)
      scale = torch::where(hi == 0, torch::ones_like(scale), scale);
      scale = torch::clamp_max(scale, huge);
    }
    return {scale, torch::zeros_like(scale)};
  }

  // A zero-width clipping range [c, c] in a block that is not constant (a
  // percentile of mostly equal values) is widened to include 0: then
  // s = |c| / L, c and 0 both lie on the grid and every code dequantizes
  // within [min(c, 0), max(c, 0)] (s = |c| would send the block's other
  // values to codes up to L * |c|: inf near FLT_MAX, found by fuzzing).
  // Constant blocks are overridden by apply_constant_block_rule.
  const torch::Tensor zero_width = range.hi == range.lo;
  const torch::Tensor lo = torch::where(zero_width, torch::clamp_max(range.lo, 0.0), range.lo);
  const torch::Tensor hi_z = torch::where(zero_width, torch::clamp_min(range.hi, 0.0), range.hi);
  const double levels = std::ldexp(1.0, config.bits) - 1.0;  // L = 2^b - 1
  const auto qmin = static_cast<double>(codes.qmin);
  const torch::Tensor width = hi_z - lo;
  // Still zero width: c = 0, any scale reconstructs it; 1 keeps the arithmetic tame.
  const torch::Tensor constant_scale = torch::ones_like(lo);
  if (step) {
    torch::Tensor scale = width / levels;  // (4)
    scale = torch::where(torch::isinf(scale), hi_z / levels - lo / levels, scale);
    scale = torch::where(width == 0, constant_scale, scale);
    scale = torch::where(scale == 0, torch::full_like(scale, tiny), scale);
    const torch::Tensor zero = -torch::round(lo / scale) + qmin;  // (5), (6)
    return {scale, zero};
  }
  torch::Tensor scale = torch::reciprocal(width) * levels;  // the tutorial's 255 / (max - min), as Python evaluates it
  scale = torch::where(torch::isinf(width), (levels / 2) / (hi_z / 2 - lo / 2), scale);
  scale = torch::where(width == 0, constant_scale, scale);
  scale = torch::clamp_max(scale, huge);
  const torch::Tensor zero = torch::round(-scale * lo + qmin);  // (1'): round(-k*min - 128)
  return {scale, zero};
}

// Near +-FLT_MAX, (2) can overflow at the extreme codes: s = a / qmax may
// round up, and the zero point's rounding shifts the grid by up to s/2 past
// lo. Such blocks (nothing else) get their range shrunk by 1/L and their
// parameters recomputed; two rounds always suffice, four are allowed.
void keep_dequantized_finite(QParams& params, ClipRange range, const QuantConfig& config) {
  const CodeRange codes = code_range(config);
  const bool step = config.scale_form == ScaleForm::kStep;
  const double shrink = 1.0 - 1.0 / static_cast<double>(codes.qmax - codes.qmin);
  for (int round = 0; round < 4; ++round) {
    const auto extreme = [&](int64_t code) {
      const torch::Tensor offset = static_cast<double>(code) - params.zero_point;
      return step ? offset * params.scale : offset / params.scale;
    };
    const torch::Tensor overflow =
        ~(torch::isfinite(extreme(codes.qmin)) & torch::isfinite(extreme(codes.qmax)));
    if (!overflow.any().item<bool>()) return;
    range.hi = torch::where(overflow, range.hi * shrink, range.hi);
    if (range.lo.defined()) range.lo = torch::where(overflow, range.lo * shrink, range.lo);
    const QParams retry = params_from_range(range, config);
    params.scale = torch::where(overflow, retry.scale, params.scale);
    params.zero_point = torch::where(overflow, retry.zero_point, params.zero_point);
  }
}

// Equation (1) (or (1')) in place on `t`, leaving the codes as floats.
void to_codes_(torch::Tensor& t, const QParams& p, const QuantConfig& config) {
  const CodeRange codes = code_range(config);
  if (config.scale_form == ScaleForm::kStep) {
    t.div_(p.scale);
  } else {
    t.mul_(p.scale);
  }
  // Absmax has z = 0, and both seeds then round x / s (or x * k) directly.
  if (config.scheme == Scheme::kZeroPoint) t.add_(p.zero_point);
  t.round_().clamp_(static_cast<double>(codes.qmin), static_cast<double>(codes.qmax));
}

// Equation (2) (or (2')) in place on float codes.
void from_codes_(torch::Tensor& t, const QParams& p, const QuantConfig& config) {
  if (config.scheme == Scheme::kZeroPoint) t.sub_(p.zero_point);
  if (config.scale_form == ScaleForm::kStep) {
    t.mul_(p.scale);
  } else {
    t.div_(p.scale);
  }
}

torch::Tensor fake_quantize_blocks(const torch::Tensor& blocks, const QParams& p,
                                   const QuantConfig& config) {
  torch::Tensor t = blocks.clone();
  to_codes_(t, p, config);
  from_codes_(t, p, config);
  return t;
}

// The reference MSE search: per block, the shrink factor p of the min-max
// range with the smallest squared reconstruction error, fake-quantizing a
// whole copy per candidate and summing in float64 with torch's sum.
ClipRange mse_range_reference(const torch::Tensor& blocks, const BlockExtremes& extremes,
                    const QuantConfig& config) {
  const ClipRange full = minmax_range(extremes, config.scheme);
  const auto scaled = [&](double p) {
    return ClipRange{full.lo.defined() ? full.lo * p : full.lo, full.hi * p};
  };
  ClipRange best = full;
  torch::Tensor best_error;
  for (int i = 0; i < kMseMaxShrinkSteps; ++i) {
    const double p = 1.0 - static_cast<double>(i) / kMseGridSteps;
    const ClipRange candidate = i == 0 ? full : scaled(p);
    const QParams params = params_from_range(candidate, config);
    const torch::Tensor error = (fake_quantize_blocks(blocks, params, config) - blocks)
                                    .to(torch::kFloat64)
                                    .square()
                                    .sum(/*dim=*/1, /*keepdim=*/true);
    if (i == 0) {
      best_error = error;
      continue;
    }
    const torch::Tensor better = error < best_error;  // strict: ties keep the wider range
    best_error = torch::where(better, error, best_error);
    best.hi = torch::where(better, candidate.hi, best.hi);
    if (best.lo.defined()) best.lo = torch::where(better, candidate.lo, best.lo);
  }
  return best;
}

// The candidate ranges of the MSE search: p = 1 - i/100, i < 80, as above.
std::vector<ClipRange> mse_candidates(const BlockExtremes& extremes, const QuantConfig& config) {
  const ClipRange full = minmax_range(extremes, config.scheme);
  std::vector<ClipRange> candidates{full};
  for (int i = 1; i < kMseMaxShrinkSteps; ++i) {
    const double p = 1.0 - static_cast<double>(i) / kMseGridSteps;
    candidates.push_back({full.lo.defined() ? full.lo * p : full.lo, full.hi * p});
  }
  return candidates;
}

// The same search with the fused loop: the same candidates and parameters
// (params_from_range on the same ranges), each block's error summed in
// double by kernel::squared_error over fixed kGrain pieces added in order, so
// the result does not depend on the thread count. Each piece (<= 256 KiB)
// is read from memory once and re-read from cache for all 80 candidates,
// with no temporaries. The sums differ from the reference's (a different
// summation order) only in the last bits; the choice can differ only where
// two candidates' errors tie to ~1e-15 relative.
template <typename T>
ClipRange mse_range_fused(const torch::Tensor& blocks, const BlockExtremes& extremes, const QuantConfig& config) {
  const std::vector<ClipRange> candidates = mse_candidates(extremes, config);
  const auto count = static_cast<int64_t>(candidates.size());
  std::vector<torch::Tensor> scales, zeros;
  for (const ClipRange& c : candidates) {
    const QParams params = params_from_range(c, config);
    scales.push_back(params.scale.contiguous());
    zeros.push_back(params.zero_point.contiguous());
  }
  const int64_t nb = blocks.size(0), len = blocks.size(1);
  const int64_t per_block = (len + kGrain - 1) / kGrain;
  const int64_t pieces = nb * per_block;
  std::vector<double> errors(static_cast<size_t>(count * pieces));
  const T* x = blocks.data_ptr<T>();
  const kernel::Grid<T> form = grid_form<T>(config);
  const int64_t piece_len = std::min(len, kGrain);
  at::parallel_for(0, pieces, std::max<int64_t>(1, 4096 / std::max<int64_t>(piece_len, 1)), [&](int64_t p0, int64_t p1) {
    for (int64_t p = p0; p < p1; ++p) {
      const int64_t b = p / per_block, begin = (p % per_block) * kGrain;
      const int64_t n = std::min(kGrain, len - begin);
      kernel::Grid<T> grid = form;
      for (int64_t i = 0; i < count; ++i) {
        grid.scale = scales[i].data_ptr<T>()[b];
        grid.zero = zeros[i].data_ptr<T>()[b];
        errors[i * pieces + p] = kernel::squared_error(x + b * len + begin, n, grid);
      }
    }
  });
  std::vector<int64_t> best(static_cast<size_t>(nb), 0);
  for (int64_t b = 0; b < nb; ++b) {
    double best_error = 0;
    for (int64_t i = 0; i < count; ++i) {
      double error = 0;
      for (int64_t q = 0; q < per_block; ++q) error += errors[i * pieces + b * per_block + q];
      if (i == 0 || error < best_error) {  // strict: ties keep the wider range
        best_error = error;
        best[b] = i;
      }
    }
  }
  const torch::Tensor index = torch::tensor(best, torch::kInt64).view({nb, 1});
  const auto pick = [&](bool lo) {
    std::vector<torch::Tensor> all;
    for (const ClipRange& c : candidates) all.push_back(lo ? c.lo : c.hi);
    return torch::cat(all, /*dim=*/1).gather(/*dim=*/1, index);
  };
  return {candidates[0].lo.defined() ? pick(true) : torch::Tensor(), pick(false)};
}

enum class Path { kFused, kReference };

ClipRange choose_range(const torch::Tensor& blocks, const BlockExtremes& extremes,
                       const QuantConfig& config, Path path) {
  switch (config.range) {
    case RangeMethod::kMinMax:
      return minmax_range(extremes, config.scheme);
    case RangeMethod::kPercentile:
      return percentile_range(blocks, config.scheme, config.percentile);
    case RangeMethod::kMse:
      if (path == Path::kReference) return mse_range_reference(blocks, extremes, config);
      return blocks.scalar_type() == torch::kFloat64 ? mse_range_fused<double>(blocks, extremes, config)
                                                     : mse_range_fused<float>(blocks, extremes, config);
  }
  throw UsageError("unknown range method");
}

// Constant blocks (min == max == c) get s = |c| (k = 1/|c|), or 1 when c = 0,
// and z = qmin - sign(c) for zero point: then (1)-(2) give x_hat = c exactly.
void apply_constant_block_rule(QParams& params, const BlockExtremes& extremes,
                               const QuantConfig& config) {
  const torch::Tensor constant = extremes.lo == extremes.hi;
  if (!constant.any().item<bool>()) return;
  const torch::Tensor& c = extremes.lo;
  // 1/|c| overflows for a subnormal c (found by fuzz/quantize_fuzz.cpp): cap k like (1') does.
  const torch::Tensor magnitude =
      config.scale_form == ScaleForm::kStep ? c.abs() : torch::clamp_max(1.0 / c.abs(), huge_of(c));
  const torch::Tensor scale = torch::where(c == 0, torch::ones_like(c), magnitude);
  params.scale = torch::where(constant, scale, params.scale);
  if (config.scheme == Scheme::kZeroPoint) {
    const torch::Tensor zero = static_cast<double>(code_range(config).qmin) - torch::sign(c);
    params.zero_point = torch::where(constant, zero, params.zero_point);
  }
}

// Equations (1)-(2) from src into dst (which may be src) with the fused
// loop, in parallel over kGrain pieces of the flat [blocks * len] array,
// each piece walked block segment by block segment.
template <typename T>
void fused_fake_quantize(const T* src, T* dst, int64_t blocks, int64_t len, const QParams& params,
                         const QuantConfig& config) {
  const torch::Tensor scale = params.scale.contiguous().to(c10::CppTypeToScalarType<T>::value);
  const torch::Tensor zero = params.zero_point.contiguous().to(c10::CppTypeToScalarType<T>::value);
  const T* s = scale.data_ptr<T>();
  const T* z = zero.data_ptr<T>();
  const kernel::Grid<T> form = grid_form<T>(config);
  // A large out-of-place write (restoring and quantizing a model's weight) is
  // streamed past the cache, fenced once per task.
  const bool streaming = src != dst && blocks * len * static_cast<int64_t>(sizeof(T)) >= kStreamMinBytes;
  at::parallel_for(0, blocks * len, kGrain, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end;) {
      const int64_t b = i / len;
      const int64_t segment_end = std::min(end, (b + 1) * len);
      kernel::Grid<T> grid = form;
      grid.scale = s[b];
      grid.zero = z[b];
      kernel::fake_quantize(src + i, dst + i, segment_end - i, grid, streaming);
      i = segment_end;
    }
    if (streaming) kernel::store_fence();
  });
}

QParams empty_params(const torch::Tensor& x, int64_t blocks) {
  return {torch::ones({blocks, 1}, x.options()), torch::zeros({blocks, 1}, x.options())};
}

// Validates, checks and cuts x into blocks; returns the blocked view.
torch::Tensor prepare(const torch::Tensor& x, const QuantConfig& config, const std::string& name,
                      Blocking* out) {
  validate(config);
  check_dtype(x, name);
  *out = blocking(x, config, name);
  return x.contiguous().view({out->blocks, out->block_len});
}

void check_params(const QParams& p, const Blocking& b, const std::string& name) {
  const std::vector<int64_t> expected{b.blocks, 1};
  if (!p.scale.defined() || !p.zero_point.defined() || p.scale.sizes() != expected ||
      p.zero_point.sizes() != expected) {
    throw UsageError(fmt::format("quantization parameters for '{}' must be [{}, 1]", name, b.blocks));
  }
}

// Equations (3)-(6) with the overflow and constant-block rules, for every
// block of every tensor at once: all of it is elementwise over blocks, so
// running it once on the blocks of many tensors concatenated gives exactly
// the per-tensor results, with ~30 small tensor ops in all instead of ~30
// per tensor (which, at ~5 us each, cost more than the fused passes
// themselves on a 145-layer model).
std::vector<QParams> params_for_ranges(const std::vector<BlockExtremes>& extremes,
                                       const std::vector<ClipRange>& ranges, const QuantConfig& config) {
  std::vector<torch::Tensor> lo, hi, range_lo, range_hi;
  for (size_t i = 0; i < ranges.size(); ++i) {
    lo.push_back(extremes[i].lo);
    hi.push_back(extremes[i].hi);
    if (ranges[i].lo.defined()) range_lo.push_back(ranges[i].lo);
    range_hi.push_back(ranges[i].hi);
  }
  const auto cat = [&](const std::vector<torch::Tensor>& parts) {
    return parts.size() == 1 ? parts[0] : torch::cat(parts, /*dim=*/0);
  };
  const BlockExtremes all_extremes{cat(lo), cat(hi)};
  const ClipRange all_range{range_lo.empty() ? torch::Tensor() : cat(range_lo), cat(range_hi)};
  QParams all = params_from_range(all_range, config);
  keep_dequantized_finite(all, all_range, config);
  // After the overflow guard, which would otherwise shrink the scale of a constant block near
  // FLT_MAX whose only code reconstructs it exactly, and push it to inf (found by
  // fuzz/quantize_fuzz.cpp).
  apply_constant_block_rule(all, all_extremes, config);
  std::vector<QParams> out;
  int64_t first = 0;
  for (const ClipRange& r : ranges) {
    const int64_t n = r.hi.size(0);
    out.push_back({all.scale.narrow(0, first, n), all.zero_point.narrow(0, first, n)});
    first += n;
  }
  return out;
}

// Shared by choose_qparams(_many) (fused extremes and MSE search) and
// choose_qparams_reference (tensor ops only).
std::vector<QParams> choose_qparams_impl(const std::vector<torch::Tensor>& xs, const QuantConfig& config,
                                         const std::vector<std::string>& names, Path path) {
  torch::NoGradGuard no_grad;
  std::vector<QParams> out(xs.size());
  // Tensors are batched by dtype; empty tensors get the trivial parameters. Each tensor is
  // prepared (checked and cut into blocks) once, during the first pass, in input order.
  std::vector<torch::Tensor> prepared(xs.size());
  std::vector<Blocking> blockings(xs.size());
  for (torch::ScalarType dtype : {torch::kFloat32, torch::kFloat64}) {
    std::vector<size_t> members;
    std::vector<BlockExtremes> extremes;
    std::vector<ClipRange> ranges;
    for (size_t i = 0; i < xs.size(); ++i) {
      const std::string name = i < names.size() ? names[i] : std::string("tensor");
      if (!prepared[i].defined()) prepared[i] = prepare(xs[i], config, name, &blockings[i]);
      if (xs[i].scalar_type() != dtype) continue;
      const torch::Tensor& blocks = prepared[i];
      const Blocking& b = blockings[i];
      if (xs[i].numel() == 0) {
        out[i] = empty_params(xs[i], b.blocks);
        continue;
      }
      extremes.push_back(path == Path::kFused ? block_extremes(blocks, name) : block_extremes_reference(blocks, name));
      ranges.push_back(choose_range(blocks, extremes.back(), config, path));
      members.push_back(i);
    }
    if (members.empty()) continue;
    std::vector<QParams> params = params_for_ranges(extremes, ranges, config);
    for (size_t m = 0; m < members.size(); ++m) out[members[m]] = std::move(params[m]);
  }
  return out;
}

// Checks shared by the in-place and into forms; returns the blocking.
Blocking check_fake_quantize_target(const torch::Tensor& x, const QParams& params, const QuantConfig& config,
                                    const std::string& name) {
  validate(config);
  check_dtype(x, name);
  if (!x.is_contiguous()) {
    throw UsageError(fmt::format("'{}' must be contiguous to be fake-quantized in place", name));
  }
  const Blocking b = blocking(x, config, name);
  check_params(params, b, name);
  return b;
}

}  // namespace

QuantConfig numpy_seed_config(Scheme scheme, int bits) {
  QuantConfig config;
  config.scheme = scheme;
  config.bits = bits;
  return config;
}

QuantConfig torch_tutorial_config(Scheme scheme, int bits) {
  QuantConfig config;
  config.scheme = scheme;
  config.bits = bits;
  set_arithmetic(config, Arithmetic::kTutorial);
  return config;
}

void set_arithmetic(QuantConfig& config, Arithmetic arithmetic) {
  const bool tutorial = arithmetic == Arithmetic::kTutorial;
  config.scale_form = tutorial ? ScaleForm::kInverseStep : ScaleForm::kStep;
  config.zero_point_codes = tutorial ? ZeroPointCodes::kSigned : ZeroPointCodes::kUnsigned;
}

std::optional<Arithmetic> arithmetic_of(const QuantConfig& config) {
  const Arithmetic by_scale = config.scale_form == ScaleForm::kStep ? Arithmetic::kNumpy : Arithmetic::kTutorial;
  if (config.scheme == Scheme::kAbsmax) return by_scale;
  const Arithmetic by_codes =
      config.zero_point_codes == ZeroPointCodes::kUnsigned ? Arithmetic::kNumpy : Arithmetic::kTutorial;
  if (by_scale != by_codes) return std::nullopt;
  return by_scale;
}

void validate(const QuantConfig& config) {
  if (config.bits < kMinBits || config.bits > kMaxBits) {
    throw UsageError(fmt::format("bits must be in [{}, {}], got {}", kMinBits, kMaxBits, config.bits));
  }
  if (config.granularity == Granularity::kPerGroup && config.group_size <= 0) {
    throw UsageError(fmt::format("group size must be a positive integer, got {}", config.group_size));
  }
  if (config.range == RangeMethod::kPercentile &&
      !(config.percentile > 0.0 && config.percentile <= 100.0)) {
    throw UsageError(fmt::format("percentile must be in (0, 100], got {}", config.percentile));
  }
}

CodeRange code_range(const QuantConfig& config) {
  if (config.scheme == Scheme::kAbsmax) {
    const int64_t qmax = (int64_t{1} << (config.bits - 1)) - 1;  // (3)
    return {-qmax, qmax};
  }
  if (config.zero_point_codes == ZeroPointCodes::kUnsigned) {
    return {0, (int64_t{1} << config.bits) - 1};  // (5)
  }
  return {-(int64_t{1} << (config.bits - 1)), (int64_t{1} << (config.bits - 1)) - 1};  // (6)
}

int64_t num_blocks(const torch::Tensor& x, const QuantConfig& config, const std::string& name) {
  validate(config);
  return blocking(x, config, name).blocks;
}

QParams choose_qparams(const torch::Tensor& x, const QuantConfig& config, const std::string& name) {
  return choose_qparams_impl({x}, config, {name}, Path::kFused)[0];
}

std::vector<QParams> choose_qparams_many(const std::vector<torch::Tensor>& xs, const QuantConfig& config,
                                         const std::vector<std::string>& names) {
  return choose_qparams_impl(xs, config, names, Path::kFused);
}

QParams choose_qparams_reference(const torch::Tensor& x, const QuantConfig& config, const std::string& name) {
  return choose_qparams_impl({x}, config, {name}, Path::kReference)[0];
}

torch::Tensor quantize_with(const torch::Tensor& x, const QParams& params, const QuantConfig& config,
                            const std::string& name) {
  torch::NoGradGuard no_grad;
  Blocking b{};
  const torch::Tensor blocks = prepare(x, config, name, &b);
  check_params(params, b, name);
  if (x.numel() > 0) block_extremes(blocks, name);  // NaN / Inf check
  torch::Tensor t = blocks.clone();
  if (x.numel() > 0) to_codes_(t, params, config);
  return t.to(torch::kInt32).view(x.sizes());
}

QuantizedTensor quantize(const torch::Tensor& x, const QuantConfig& config, const std::string& name) {
  QParams params = choose_qparams(x, config, name);
  torch::Tensor codes = quantize_with(x, params, config, name);
  return {std::move(codes), std::move(params), config};
}

torch::Tensor dequantize(const QuantizedTensor& q) {
  torch::NoGradGuard no_grad;
  const int64_t blocks = q.params.scale.size(0);
  torch::Tensor t = q.codes.to(q.params.scale.scalar_type()).contiguous();
  if (t.numel() == 0) return t;
  t = t.view({blocks, t.numel() / blocks});
  from_codes_(t, q.params, q.config);
  return t.view(q.codes.sizes());
}

torch::Tensor fake_quantize(const torch::Tensor& x, const QuantConfig& config, const std::string& name) {
  torch::Tensor copy = x.clone(torch::MemoryFormat::Contiguous);
  fake_quantize_(copy, config, name);
  return copy;
}

QParams fake_quantize_(torch::Tensor& x, const QuantConfig& config, const std::string& name) {
  torch::NoGradGuard no_grad;
  if (!x.is_contiguous()) {
    throw UsageError(fmt::format("'{}' must be contiguous to be fake-quantized in place", name));
  }
  QParams params = choose_qparams(x, config, name);
  fake_quantize_with_(x, params, config, name);
  return params;
}

void fake_quantize_with_(torch::Tensor& x, const QParams& params, const QuantConfig& config,
                         const std::string& name) {
  fake_quantize_into(x, x, params, config, name);
}

void fake_quantize_into(const torch::Tensor& src, torch::Tensor& dst, const QParams& params, const QuantConfig& config,
                        const std::string& name) {
  torch::NoGradGuard no_grad;
  const Blocking b = check_fake_quantize_target(dst, params, config, name);
  if (!src.is_contiguous() || src.sizes() != dst.sizes() || src.scalar_type() != dst.scalar_type()) {
    throw UsageError(fmt::format("fake_quantize_into '{}': source and destination must be contiguous tensors "
                                 "of the same shape and dtype", name));
  }
  if (dst.numel() == 0) return;
  if (dst.scalar_type() == torch::kFloat64) {
    fused_fake_quantize(src.data_ptr<double>(), dst.data_ptr<double>(), b.blocks, b.block_len, params, config);
  } else {
    fused_fake_quantize(src.data_ptr<float>(), dst.data_ptr<float>(), b.blocks, b.block_len, params, config);
  }
}

void fake_quantize_with_reference_(torch::Tensor& x, const QParams& params, const QuantConfig& config,
                                   const std::string& name) {
  torch::NoGradGuard no_grad;
  const Blocking b = check_fake_quantize_target(x, params, config, name);
  if (x.numel() == 0) return;
  torch::Tensor blocks = x.view({b.blocks, b.block_len});
  to_codes_(blocks, params, config);
  from_codes_(blocks, params, config);
}

torch::Tensor fake_quantize_reference(const torch::Tensor& x, const QuantConfig& config, const std::string& name) {
  torch::Tensor copy = x.clone(torch::MemoryFormat::Contiguous);
  const QParams params = choose_qparams_reference(copy, config, name);
  fake_quantize_with_reference_(copy, params, config, name);
  return copy;
}

std::string to_string(Scheme scheme) { return std::string(kSchemeNames.name(scheme)); }

std::string to_string(Granularity granularity, int64_t group_size) {
  const std::string name(kGranularityNames.name(granularity));
  return granularity == Granularity::kPerGroup ? name + std::to_string(group_size) : name;
}

std::string to_string(RangeMethod range, double percentile) {
  if (range == RangeMethod::kPercentile) return fmt::format("{}{}", kPercentileSpecPrefix, percentile);
  return std::string(kRangeMethodNames.name(range));
}

}  // namespace quantppl
