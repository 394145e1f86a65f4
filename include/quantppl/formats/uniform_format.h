// The uniform integer grids of quantize.h as a WeightFormat:
//
//   absmax:BITS[:GRAN[:RANGE[:ARITH]]]      symmetric, codes +-(2^(b-1) - 1)
//   zeropoint:BITS[:GRAN[:RANGE[:ARITH]]]   asymmetric, integer zero point
//
// The math (equations (1)-(6), the constant-block, overflow and range rules)
// is quantize.h's; this file only adapts it: fake_quantize_into is quantize.h's
// fused fast path (choose_qparams + fake_quantize_into), so results are
// bit-identical with the functions every test of quantize.h checks.
//
// Storage (pack): "codes" uB (u = q - qmin, one bit stream, packed_sections.h),
// "scales" f32 one per block (k = 1/s for the tutorial arithmetic), and for
// zeropoint "zero_points" i16, or f32 when one of the weight's zero points does
// not fit int16 (they hold integers; only blocks far from 0 relative to their
// width need that). So
//   bits_per_weight = b + 32 * blocks / numel  (+ 16 * blocks / numel for zeropoint)
// e.g. absmax:4:group64 = 4 + 32/64 = 4.5, zeropoint:4:group64 = 4.75.
//
// A method's zero points (ZeroPointGrid, weight_format.h; HQQ sets them) are
// stored on the numpy arithmetic's grid, zeropoint:B:GRAN[:minmax] only:
// "codes" uB from the grid's q, "scales" f32 s = fl(1/k) and "zero_points"
// f32 holding the real z, so x_hat = fl(q - z) * s, which is (2) as
// dequantize computes it and the hqq package's (q - z) * (1/k) in float32;
// bits_per_weight = b + 64 * blocks / numel (zeropoint:4:group64: 5.0). Other
// ranges are refused (a method that chooses the parameters starts from the
// min-max range, so the range field would name a choice never made), and so
// is the tutorial arithmetic (x_hat = (q - z) / k with signed codes: not the
// grid the package's zero points are for).
//
// GPTQ (begin_group): per tensor the one (s, z) of the whole original weight;
// per channel each row's (s, z) of the current weight; per group each row's
// (s, z) of the current G columns of the group.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "quantppl/formats/weight_format.h"
#include "quantppl/quantize.h"

namespace quantppl {

class UniformFormat : public WeightFormat, public ZeroPointGrid {
 public:
  // UsageError for a config validate() rejects.
  explicit UniformFormat(const QuantConfig& config);
  const QuantConfig& config() const { return config_; }

  std::string spec() const override;
  int64_t group_columns(int64_t in_features, const std::string& name) const override;
  double bits_per_weight(int64_t out_features, int64_t in_features) const override;
  int64_t packed_bytes(int64_t out_features, int64_t in_features) const override;
  std::unique_ptr<PreparedWeight> prepare(const torch::Tensor& weight, const std::string& name) const override;
  // Batched parameter arithmetic; `known` is not used (choose_qparams reads the weight's rows).
  std::vector<std::unique_ptr<PreparedWeight>> prepare_many(const std::vector<torch::Tensor>& weights,
                                                            const std::vector<std::string>& names,
                                                            const std::vector<WeightSummary>* known = nullptr) const override;
  void fake_quantize_into(const torch::Tensor& src, torch::Tensor& dst, const std::string& name) const override;
  std::unique_ptr<ColumnGroupQuantizer> begin_group(const torch::Tensor& whole_weight, const torch::Tensor& group_cols,
                                                    const std::string& name) const override;
  torch::Tensor unpack(const PackedWeight& packed, const std::string& name) const override;

  // this for zeropoint:B:GRAN:minmax (numpy arithmetic), nullptr for absmax,
  // UsageError for other zero-point ranges and the tutorial arithmetic.
  const ZeroPointGrid* zero_point_grid() const override;
  int bits() const override { return config_.bits; }
  std::unique_ptr<PreparedWeight> prepare_with(const torch::Tensor& weight, std::vector<float> inverse_scale,
                                               std::vector<float> zero_point, const std::string& name) const override;

  // The codes and parameters unpack() reads, for callers that want them (inspect, tests).
  QuantizedTensor unpack_codes(const PackedWeight& packed, const std::string& name) const;

 private:
  QuantConfig config_;
};

// A uniform weight with its parameters chosen (the per-block s and z).
class UniformPreparedWeight : public PreparedWeight {
 public:
  // `weight`: the weight the parameters were chosen for (its shape is kept), `name` names it in errors.
  UniformPreparedWeight(QuantConfig config, QParams params, const torch::Tensor& weight, std::string name);
  const QParams& params() const { return params_; }
  void fake_quantize_into(const torch::Tensor& src, torch::Tensor& dst) const override;
  PackedWeight pack(const torch::Tensor& src) const override;
  std::optional<int64_t> packed_bytes() const override;

 private:
  QuantConfig config_;
  QParams params_;
  int64_t numel_ = 0;
  std::string name_;
};

// The canonical spec of a config: every field explicit up to RANGE, ARITH only
// when not numpy ("absmax:8:tensor:minmax", "zeropoint:4:channel:mse:tutorial").
// UsageError for a scale form + zero-point codes pair no ARITH names.
std::string uniform_spec(const QuantConfig& config);

// The format-table parser of "absmax:..." / "zeropoint:..." (fields split at ':').
std::shared_ptr<const WeightFormat> parse_uniform_format(const std::vector<std::string>& fields);

}  // namespace quantppl
