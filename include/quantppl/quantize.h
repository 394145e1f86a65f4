// Uniform (linear) quantization of float tensors: choose quantization
// parameters, quantize to integer codes, dequantize, and fake-quantize
// (quantize then dequantize in one call, the form used to measure damage).
//
// ---------------------------------------------------------------------------
// The math (equation numbers are cited in quantize.cpp)
// ---------------------------------------------------------------------------
// A tensor is cut into blocks (see Granularity); each block b gets a scale
// s_b and an integer zero point z_b. With b bits:
//
//   (1) q     = clamp(round(x / s + z), qmin, qmax)      ScaleForm::kStep
//   (2) x_hat = (q - z) * s
//
// `round` is round-half-to-even (IEEE nearbyint, as np.round and
// torch.round).  Note the order in (1): z is added *before* rounding, exactly
// as both seeds write it (np.round(params / scale + zero) and
// (ip * scale + zeropoint).round()); since z is an integer this differs from
// round(x / s) + z only where adding z rounds away low bits of x / s.
//
// Absmax (symmetric, Scheme::kAbsmax), with a = the block's clipping
// magnitude (max|x| for min-max ranges):
//
//   (3) qmax = 2^(b-1) - 1,  qmin = -qmax,  s = a / qmax,  z = 0
//
// so codes are symmetric, +-(2^(b-1) - 1): -128 is never used at 8 bits,
// which keeps 0 exact and the grid symmetric (the numpy seed's choice).
//
// Zero point (asymmetric, Scheme::kZeroPoint), with [lo, hi] the block's
// clipping range (min and max for min-max ranges) and L = 2^b - 1 levels:
//
//   (4) s = (hi - lo) / L
//   (5) unsigned codes (numpy seed):  qmin = 0,         qmax = L,
//                                     z = -round(lo / s)
//   (6) signed codes (torch tutorial): qmin = -2^(b-1), qmax = 2^(b-1) - 1,
//                                     z = -round(lo / s) - 2^(b-1)
//
// Why (5) and (6) dequantize identically: (6) is (5) with both q and z
// shifted by the even integer 2^(b-1). Adding an integer commutes with
// round() and shifts clamp()'s bounds with it, so q6 = q5 - 2^(b-1) and
// z6 = z5 - 2^(b-1); in (2) the shift cancels in q - z. (Tested bit-exact.)
//
// ScaleForm::kInverseStep is the torch tutorial's arithmetic, where "scale"
// is the number of codes per unit, k = qmax / a or L / (hi - lo), and
//
//   (1') q = clamp(round(x * k + z), qmin, qmax)   with z = round(-k * lo + qmin)
//   (2') x_hat = (q - z) / k
//
// (1') and (1) agree except where x * k and x / s round differently near a
// .5 tie: the tutorial's [-0.3, 0, 0.1, 0.7] example is such a case
// (0.1 * 255 = 25.5 exactly in float, 0.1 / (1/255) = 25.4999...).
// PyTorch's own fake-quantize kernels use a third arithmetic,
// round(x * (1/s)) + z; see tests/torch_reference_test.cpp.
//
// Arithmetic names the two conventions a variant spec can choose (its ARITH
// field, variant_spec.h):
//   kNumpy    ("numpy", the default): kStep with unsigned codes (5), the
//             numpy seed's.
//   kTutorial ("tutorial"): kInverseStep with signed codes (6), the torch
//             tutorial's absmax_quantize / zeropoint_quantize, generalised
//             from 8 bits to b by writing its constants in b:
//               absmax:    k = (2^(b-1) - 1) / max|x|   q = round(k * x)
//               zeropoint: k = (2^b - 1) / (max - min)
//                          z = round(-k * min - 2^(b-1))
//                          q = clamp(round(x * k + z), -2^(b-1), 2^(b-1) - 1)
//             x_hat = (q - z) / k. At 8 bits these are the tutorial's 127,
//             255, 128 and [-128, 127]. k is computed as the tutorial's
//             Python computes `127 / tensor`: Tensor.__rdiv__ is
//             reciprocal() * 127, so k = fl(fl(1 / a) * qmax), which is not
//             the correctly rounded qmax / a (LibTorch C++'s `127 / tensor`)
//             in about a third of the weight tensors (absmax 8 bits: 11 of
//             the fixture model's 37, 18 of the default model's 55), and a
//             1-ulp difference in k moves most x_hat of the tensor by an ulp. The weights equal the tutorial's
//             ip_dequant bit for bit in float32 (tests/cli/test_tutorial_arithmetic.py
//             runs its functions), except in constant blocks: there the
//             tutorial's guard (range = 1 for zero point; none for absmax,
//             whose all-zero block gives 0/0 = NaN) does not reconstruct the
//             value, and the rule below does.
//
// ---------------------------------------------------------------------------
// Decisions
// ---------------------------------------------------------------------------
// * Arithmetic happens in the tensor's own dtype (float32 weights in float32,
//   the numpy seed's float64 arrays in float64), so the seeds' printed
//   numbers are reproduced exactly. Only float32 and float64 are accepted.
// * Granularity: kPerTensor = one block; kPerChannel = one block per output
//   row (dim 0; a tensor of fewer than 2 dims is one row); kPerGroup = runs of
//   G consecutive elements along the last (input) dimension. G must divide the
//   row length: a ragged last group would need its own rule and no
//   flan-t5 layer needs one (512, 1024, 384 are multiples of 32, 64, 128), so
//   it is an error that names the tensor.
// * Constant blocks: a block whose values all equal c reconstructs exactly.
//   Such a block gets s = |c| (1 when c = 0) whatever the scheme and range
//   method: absmax then codes it as sign(c) (so x_hat = sign(c) * |c| = c,
//   where s = |c| / qmax would give fl(qmax * fl(|c| / qmax)), not always c);
//   zero point codes it as qmin with z = qmin - sign(c). (The torch tutorial's
//   guard, range = 1, would not reconstruct c != 0.) In ScaleForm::kInverseStep
//   the same rule gives k = 1/|c|, exact to within one ulp of c.
//   A zero-point clipping range of zero width [c, c] in a non-constant block
//   (a percentile of mostly-equal values) is widened to include 0, so
//   s = |c| / L and nothing divides by zero or overflows.
// * A scale that overflows (hi - lo = inf for finite hi, lo near +-FLT_MAX)
//   is computed as hi/L - lo/L instead; a scale that underflows to 0 is
//   raised to the smallest normal float.
// * NaN or Inf anywhere in the input is a DataError naming the tensor.
//   Empty tensors quantize to empty codes.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include <torch/types.h>

#include "quantppl/enum_table.h"

namespace quantppl {

enum class Scheme { kAbsmax, kZeroPoint };
enum class Granularity { kPerTensor, kPerChannel, kPerGroup };
enum class RangeMethod {
  kMinMax,      // [min, max], or max|x| for absmax (both seeds)
  kPercentile,  // numpy's percentile, default 'linear' method (numpy seed)
  kMse,         // shrink the min-max range to minimise reconstruction MSE
};
enum class ScaleForm { kStep, kInverseStep };
enum class ZeroPointCodes { kUnsigned, kSigned };
enum class Arithmetic { kNumpy, kTutorial };

// The names of these enums, everywhere: variant specs, reports, .qpack
// headers, --help. Variant specs spell two of them with a parameter:
// "group" N (e.g. group64) and "p" P for the percentile (e.g. p99.9).
inline constexpr EnumTable<Scheme, 2> kSchemeNames{"scheme", {{
    {Scheme::kAbsmax, "absmax", "symmetric: s = max|x| / (2^(b-1) - 1), z = 0, codes +-(2^(b-1) - 1)"},
    {Scheme::kZeroPoint, "zeropoint", "asymmetric: s = (max - min) / (2^b - 1), integer zero point z"},
}}};
inline constexpr EnumTable<Granularity, 3> kGranularityNames{"granularity", {{
    {Granularity::kPerTensor, "tensor", "one scale for the whole weight"},
    {Granularity::kPerChannel, "channel", "one scale per output row"},
    {Granularity::kPerGroup, "group", "one scale per N consecutive inputs of a row (spec: groupN)"},
}}};
inline constexpr EnumTable<RangeMethod, 3> kRangeMethodNames{"range", {{
    {RangeMethod::kMinMax, "minmax", "the block's min and max (max|x| for absmax)"},
    {RangeMethod::kPercentile, "percentile", "clip to the P-th percentile (spec: pP, e.g. p99.9)"},
    {RangeMethod::kMse, "mse", "the min-max range shrunk to minimise the reconstruction MSE"},
}}};
// Variant specs write the percentile range as this prefix and P ("p99.9"),
// the group granularity as its name and N ("group64").
inline constexpr std::string_view kPercentileSpecPrefix = "p";
inline constexpr EnumTable<ScaleForm, 2> kScaleFormNames{"scale form", {{
    {ScaleForm::kStep, "step", "q = round(x / s + z), x_hat = (q - z) * s"},
    {ScaleForm::kInverseStep, "inverse_step", "q = round(x * k + z), x_hat = (q - z) / k"},
}}};
inline constexpr EnumTable<ZeroPointCodes, 2> kZeroPointCodesNames{"zero-point codes", {{
    {ZeroPointCodes::kUnsigned, "unsigned", "zero-point codes in [0, 2^b - 1]"},
    {ZeroPointCodes::kSigned, "signed", "zero-point codes in [-2^(b-1), 2^(b-1) - 1]"},
}}};
inline constexpr EnumTable<Arithmetic, 2> kArithmeticNames{"arithmetic", {{
    {Arithmetic::kNumpy, "numpy", "the numpy seed's: divide by the step s, unsigned zero-point codes"},
    {Arithmetic::kTutorial, "tutorial", "the torch tutorial's: multiply by k = 1/s, signed zero-point codes"},
}}};

constexpr int kMinBits = 2;
constexpr int kMaxBits = 8;

struct QuantConfig {
  Scheme scheme = Scheme::kAbsmax;
  int bits = 8;
  Granularity granularity = Granularity::kPerTensor;
  int64_t group_size = 0;  // kPerGroup only; > 0
  RangeMethod range = RangeMethod::kMinMax;
  // kPercentile only, in (0, 100]. Zero point clips to
  // [percentile(x, 100 - P), percentile(x, P)]; absmax to percentile(|x|, P).
  double percentile = 99.99;
  ScaleForm scale_form = ScaleForm::kStep;
  ZeroPointCodes zero_point_codes = ZeroPointCodes::kUnsigned;
};

// The numpy notebook's conventions: step scale, unsigned zero-point codes.
QuantConfig numpy_seed_config(Scheme scheme, int bits);
// The torch tutorial's conventions: inverse scale, signed codes (8 bits in
// the tutorial; other widths as generalised above).
QuantConfig torch_tutorial_config(Scheme scheme, int bits = 8);

// Sets scale_form and zero_point_codes to the arithmetic's pair.
void set_arithmetic(QuantConfig& config, Arithmetic arithmetic);
// The arithmetic whose pair `config` holds (absmax has no zero point, so its
// codes field does not matter), or nullopt for a pair no spec names
// (step with signed codes, inverse step with unsigned codes).
std::optional<Arithmetic> arithmetic_of(const QuantConfig& config);

// Throws UsageError for bits outside [2, 8], a non-positive group size, a
// percentile outside (0, 100].
void validate(const QuantConfig& config);

// The inclusive code range [qmin, qmax] of (3), (5), (6).
struct CodeRange {
  int64_t qmin;
  int64_t qmax;
};
CodeRange code_range(const QuantConfig& config);

// Per-block parameters, shape [num_blocks, 1] in the input's dtype (zero
// points hold integers). Per tensor, num_blocks = 1; per channel, rows; per
// group, numel / G, in row-major order (row r's groups are r*C/G ... ).
struct QParams {
  torch::Tensor scale;
  torch::Tensor zero_point;
};

struct QuantizedTensor {
  torch::Tensor codes;  // int32, the input's shape, every value in [qmin, qmax]
  QParams params;
  QuantConfig config;
};

// Number of blocks `x` is cut into under `config` (throws as quantize does).
int64_t num_blocks(const torch::Tensor& x, const QuantConfig& config, const std::string& name);

// Chooses s and z per block, (3)-(6) with the range from config.range.
// `name` is used in error messages ("weight 'encoder.block.0...' ...").
QParams choose_qparams(const torch::Tensor& x, const QuantConfig& config,
                       const std::string& name = "tensor");

// choose_qparams for many tensors at once (e.g. every Linear weight of a
// model), bit-identical with calling it on each: the per-block parameter
// arithmetic runs once over all blocks instead of once per tensor. names[i]
// names xs[i] in errors.
std::vector<QParams> choose_qparams_many(const std::vector<torch::Tensor>& xs, const QuantConfig& config,
                                         const std::vector<std::string>& names);

// Equation (1): integer codes with the parameters choose_qparams picks.
QuantizedTensor quantize(const torch::Tensor& x, const QuantConfig& config,
                         const std::string& name = "tensor");

// Equation (1) with given parameters (for tests and stored models).
torch::Tensor quantize_with(const torch::Tensor& x, const QParams& params,
                            const QuantConfig& config, const std::string& name = "tensor");

// Equation (2), in the parameters' dtype, shaped like the codes.
torch::Tensor dequantize(const QuantizedTensor& q);

// dequantize(quantize(x)) without materialising the codes.
torch::Tensor fake_quantize(const torch::Tensor& x, const QuantConfig& config,
                            const std::string& name = "tensor");

// fake_quantize in place, for model weights: `x` must be contiguous. Returns
// the parameters used. Bit-identical with fake_quantize().
QParams fake_quantize_(torch::Tensor& x, const QuantConfig& config,
                       const std::string& name = "tensor");

// Equations (1)-(2) in place with given parameters (from choose_qparams on
// the same tensor, or stored): fake_quantize_ is choose_qparams followed by
// this, so the two are bit-identical.
void fake_quantize_with_(torch::Tensor& x, const QParams& params, const QuantConfig& config,
                         const std::string& name = "tensor");

// dst = fake_quantize_with_(copy of src): one read of src and one write of
// dst, so restoring a backed-up weight and quantizing it cost one copy. src
// and dst: contiguous, same shape and dtype (src == dst is allowed).
void fake_quantize_into(const torch::Tensor& src, torch::Tensor& dst, const QParams& params,
                        const QuantConfig& config, const std::string& name = "tensor");

// ---------------------------------------------------------------------------
// Fast path and reference
// ---------------------------------------------------------------------------
// The functions above run fused loops (src/fake_quantize_kernel.h): one
// read pass for every block's min/max and NaN/Inf check, one read-write pass
// for (1)-(2), no temporaries, parallel over LibTorch's intra-op threads,
// AVX2 where the CPU has it. The reference below is the plain formula as a
// chain of whole-tensor LibTorch ops (isfinite, aminmax, div_, add_, round_,
// clamp_, sub_, mul_). The two are bit-identical for min-max and percentile
// ranges (tests/quantize_fast_path_test.cpp checks every granularity, scheme,
// bit width and scale form, and every weight of a model). The MSE search
// sums each candidate's squared error in a different order than the
// reference's torch::sum, so its choice can differ where two candidates'
// errors agree to ~1e-15 relative.
QParams choose_qparams_reference(const torch::Tensor& x, const QuantConfig& config,
                                 const std::string& name = "tensor");
void fake_quantize_with_reference_(torch::Tensor& x, const QParams& params, const QuantConfig& config,
                                   const std::string& name = "tensor");
// choose_qparams_reference + fake_quantize_with_reference_ on a copy.
torch::Tensor fake_quantize_reference(const torch::Tensor& x, const QuantConfig& config,
                                      const std::string& name = "tensor");

// Names as variant specs write them (from the tables above): "absmax",
// "group64", "p99.9".
std::string to_string(Scheme scheme);
std::string to_string(Granularity granularity, int64_t group_size);
std::string to_string(RangeMethod range, double percentile);

}  // namespace quantppl
