#include "quantppl/quantize.h"

#include <cmath>
#include <limits>

#include <fmt/format.h>
#include <torch/torch.h>

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

void check_input(const torch::Tensor& x, const std::string& name) {
  if (!x.defined()) throw UsageError(fmt::format("'{}' is an undefined tensor", name));
  if (x.scalar_type() != torch::kFloat32 && x.scalar_type() != torch::kFloat64) {
    throw DataError(fmt::format("'{}' has dtype {}, expected float32 or float64", name,
                                std::string(c10::toString(x.scalar_type()))));
  }
  if (x.numel() > 0 && !torch::isfinite(x).all().item<bool>()) {
    const torch::Tensor bad = torch::nonzero(~torch::isfinite(x.reshape({-1})));
    const int64_t first = bad[0][0].item<int64_t>();
    throw DataError(fmt::format("'{}' contains NaN or Inf (first at flat index {}: {})", name,
                                first, x.reshape({-1})[first].item<double>()));
  }
}

BlockExtremes block_extremes(const torch::Tensor& blocks) {
  auto [lo, hi] = blocks.aminmax(/*dim=*/1, /*keepdim=*/true);
  return {lo, hi};
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
      scale = qmax / hi;  // the tutorial's 127 / max|x|
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
  torch::Tensor scale = levels / width;  // the tutorial's 255 / (max - min)
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

// Per block, the shrink factor p of the min-max range with the smallest
// squared reconstruction error (summed in float64).
ClipRange mse_range(const torch::Tensor& blocks, const BlockExtremes& extremes,
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

ClipRange choose_range(const torch::Tensor& blocks, const BlockExtremes& extremes,
                       const QuantConfig& config) {
  switch (config.range) {
    case RangeMethod::kMinMax:
      return minmax_range(extremes, config.scheme);
    case RangeMethod::kPercentile:
      return percentile_range(blocks, config.scheme, config.percentile);
    case RangeMethod::kMse:
      return mse_range(blocks, extremes, config);
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

QParams empty_params(const torch::Tensor& x, int64_t blocks) {
  return {torch::ones({blocks, 1}, x.options()), torch::zeros({blocks, 1}, x.options())};
}

// Validates, checks and cuts x into blocks; returns the blocked view.
torch::Tensor prepare(const torch::Tensor& x, const QuantConfig& config, const std::string& name,
                      Blocking* out) {
  validate(config);
  check_input(x, name);
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

}  // namespace

QuantConfig numpy_seed_config(Scheme scheme, int bits) {
  QuantConfig config;
  config.scheme = scheme;
  config.bits = bits;
  return config;
}

QuantConfig torch_tutorial_config(Scheme scheme) {
  QuantConfig config;
  config.scheme = scheme;
  config.bits = 8;
  config.scale_form = ScaleForm::kInverseStep;
  config.zero_point_codes = ZeroPointCodes::kSigned;
  return config;
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
  torch::NoGradGuard no_grad;
  Blocking b{};
  const torch::Tensor blocks = prepare(x, config, name, &b);
  if (x.numel() == 0) return empty_params(x, b.blocks);
  const BlockExtremes extremes = block_extremes(blocks);
  const ClipRange range = choose_range(blocks, extremes, config);
  QParams params = params_from_range(range, config);
  keep_dequantized_finite(params, range, config);
  // After the overflow guard, which would otherwise shrink the scale of a constant block near
  // FLT_MAX whose only code reconstructs it exactly, and push it to inf (found by
  // fuzz/quantize_fuzz.cpp).
  apply_constant_block_rule(params, extremes, config);
  return params;
}

torch::Tensor quantize_with(const torch::Tensor& x, const QParams& params, const QuantConfig& config,
                            const std::string& name) {
  torch::NoGradGuard no_grad;
  Blocking b{};
  const torch::Tensor blocks = prepare(x, config, name, &b);
  check_params(params, b, name);
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
  torch::NoGradGuard no_grad;
  if (!x.is_contiguous()) {
    throw UsageError(fmt::format("'{}' must be contiguous to be fake-quantized in place", name));
  }
  validate(config);
  const Blocking b = blocking(x, config, name);
  check_params(params, b, name);
  if (x.numel() == 0) return;
  torch::Tensor blocks = x.view({b.blocks, b.block_len});
  to_codes_(blocks, params, config);
  from_codes_(blocks, params, config);
}

std::string to_string(Scheme scheme) {
  return scheme == Scheme::kAbsmax ? "absmax" : "zeropoint";
}

std::string to_string(Granularity granularity, int64_t group_size) {
  switch (granularity) {
    case Granularity::kPerTensor:
      return "tensor";
    case Granularity::kPerChannel:
      return "channel";
    case Granularity::kPerGroup:
      return fmt::format("group{}", group_size);
  }
  return "?";
}

std::string to_string(RangeMethod range, double percentile) {
  switch (range) {
    case RangeMethod::kMinMax:
      return "minmax";
    case RangeMethod::kPercentile:
      return fmt::format("p{}", percentile);
    case RangeMethod::kMse:
      return "mse";
  }
  return "?";
}

}  // namespace quantppl
