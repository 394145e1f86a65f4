#include "quantppl/formats/uniform_format.h"

#include <cmath>
#include <cstring>
#include <limits>

#include <fmt/format.h>
#include <torch/torch.h>

#include "quantppl/error.h"
#include "quantppl/formats/packed_sections.h"
#include "quantppl/formats/spec_fields.h"
#include "zero_point_grid.h"

namespace quantppl {
namespace {

int64_t blocks_of(const QuantConfig& config, int64_t out, int64_t in) {
  switch (config.granularity) {
    case Granularity::kPerTensor: return 1;
    case Granularity::kPerChannel: return out;
    case Granularity::kPerGroup: return out * (in / config.group_size);
  }
  return 0;
}

bool zero_points_fit_int16(const torch::Tensor& zero_point) {
  if (zero_point.numel() == 0) return true;
  const double lo = zero_point.min().item<double>();
  const double hi = zero_point.max().item<double>();
  return lo >= std::numeric_limits<int16_t>::min() && hi <= std::numeric_limits<int16_t>::max();
}

// Fake-quantizes one column [out] with one (s, z) per row (or one for all
// rows): the column as an [out, 1] weight per channel, so quantize.h's fused
// loop does the arithmetic, bit-identical with fake-quantizing the whole group.
class UniformColumnQuantizer : public ColumnGroupQuantizer {
 public:
  UniformColumnQuantizer(QuantConfig config, QParams params, std::string name)
      : config_(config), params_(std::move(params)), name_(std::move(name)) {}
  torch::Tensor fake_quantize_column(const torch::Tensor& column, int64_t /*j*/) const override {
    torch::Tensor src = column.contiguous().view({-1, 1});
    torch::Tensor dst = torch::empty_like(src);
    quantppl::fake_quantize_into(src, dst, params_, config_, name_);
    return dst.view(column.sizes());
  }

 private:
  QuantConfig config_;  // per tensor (params [1, 1]) or per channel (params [out, 1])
  QParams params_;
  std::string name_;
};

// A weight on the zero-point grid with a method's (k, z) per block; storage
// and arithmetic in uniform_format.h.
class UniformGridPrepared : public PreparedWeight {
 public:
  UniformGridPrepared(int bits, int64_t out, int64_t in, int64_t block_len, std::vector<float> k, std::vector<float> z,
                      std::string name)
      : bits_(bits), out_(out), in_(in), L_(block_len), k_(std::move(k)), z_(std::move(z)), name_(std::move(name)) {
    s_.resize(k_.size());
    for (size_t b = 0; b < k_.size(); ++b) s_[b] = 1.0f / k_[b];
  }

  void fake_quantize_into(const torch::Tensor& src, torch::Tensor& dst) const override {
    check(src);
    check(dst);
    const float* x = src.data_ptr<float>();
    float* y = dst.data_ptr<float>();
    formats::for_each_grid_run(out_ * in_, L_, [&](int64_t b0, int64_t nb, int64_t lo, int64_t len) {
      formats::grid_fake_sub_mul(x + lo, y + lo, nb, len / nb, &k_[b0], &z_[b0], &s_[b0], qmax());
    });
  }

  PackedWeight pack(const torch::Tensor& src) const override {
    check(src);
    PackedWeight packed;
    packed.out_features = out_;
    packed.in_features = in_;
    const int64_t n = out_ * in_;
    std::vector<int32_t> codes(n);
    const float* x = src.data_ptr<float>();
    formats::for_each_grid_run(n, L_, [&](int64_t b0, int64_t nb, int64_t lo, int64_t len) {
      for (int64_t b = 0; b < nb; ++b) {
        const int64_t piece = len / nb, at = lo + b * piece;
        formats::grid_codes(x + at, codes.data() + at, piece, k_[b0 + b], z_[b0 + b], qmax());
      }
    });
    const auto blocks = static_cast<int64_t>(k_.size());
    packed.sections.push_back(PackedSection{"codes", code_dtype(bits_), n, pack_codes(codes, bits_)});
    packed.sections.push_back(make_section("scales", "f32", blocks, s_.data(), 4 * s_.size()));
    packed.sections.push_back(make_section("zero_points", "f32", blocks, z_.data(), 4 * z_.size()));
    return packed;
  }

  std::optional<int64_t> packed_bytes() const override {
    return (out_ * in_ * bits_ + 7) / 8 + 8 * static_cast<int64_t>(k_.size());
  }

 private:
  float qmax() const { return static_cast<float>((1 << bits_) - 1); }
  void check(const torch::Tensor& t) const {
    if (t.scalar_type() != torch::kFloat32 || !t.is_contiguous() || t.dim() != 2 || t.size(0) != out_ ||
        t.size(1) != in_) {
      throw UsageError(fmt::format("weight '{}': expected a contiguous float32 [{}, {}] tensor, got {} of {} dims",
                                   name_, out_, in_, c10::toString(t.scalar_type()), t.dim()));
    }
  }
  int bits_;
  int64_t out_, in_, L_;
  std::vector<float> k_, z_, s_;
  std::string name_;
};

}  // namespace

const ZeroPointGrid* UniformFormat::zero_point_grid() const {
  if (config_.scheme != Scheme::kZeroPoint) return nullptr;
  const std::string gran = to_string(config_.granularity, config_.group_size);
  if (config_.range != RangeMethod::kMinMax) {
    throw UsageError(fmt::format("'{}': zero points set by a method start from each block's min-max scale, so the "
                                 "range '{}' would never be used; use zeropoint:{}:{}",
                                 spec(), to_string(config_.range, config_.percentile), config_.bits, gran));
  }
  if (config_.scale_form != ScaleForm::kStep || config_.zero_point_codes != ZeroPointCodes::kUnsigned) {
    throw UsageError(fmt::format("'{}': a method's real zero points are stored on the numpy arithmetic's grid "
                                 "x_hat = (q - z) * s with codes in [0, 2^b - 1], not the tutorial's (q - z) / k; "
                                 "use zeropoint:{}:{}",
                                 spec(), config_.bits, gran));
  }
  return this;
}

std::unique_ptr<PreparedWeight> UniformFormat::prepare_with(const torch::Tensor& weight,
                                                            std::vector<float> inverse_scale,
                                                            std::vector<float> zero_point,
                                                            const std::string& name) const {
  zero_point_grid();
  if (config_.scheme != Scheme::kZeroPoint) throw UsageError(fmt::format("'{}' has no zero point", spec()));
  if (weight.scalar_type() != torch::kFloat32 || !weight.is_contiguous() || weight.dim() != 2) {
    throw UsageError(fmt::format("weight '{}' must be a contiguous float32 [out, in] tensor", name));
  }
  const int64_t out = weight.size(0), in = weight.size(1);
  const int64_t g = group_columns(in, name);
  const int64_t blocks = blocks_of(config_, out, in);
  if (static_cast<int64_t>(inverse_scale.size()) != blocks || static_cast<int64_t>(zero_point.size()) != blocks) {
    throw UsageError(fmt::format("weight '{}' has {} blocks under {}, got {} inverse scales and {} zero points", name,
                                 blocks, spec(), inverse_scale.size(), zero_point.size()));
  }
  for (int64_t b = 0; b < blocks; ++b) {
    const float k = inverse_scale[b], z = zero_point[b];
    if (!(std::isfinite(k) && k > 0 && std::isfinite(1.0f / k) && 1.0f / k > 0) || !std::isfinite(z)) {
      throw DataError(fmt::format("weight '{}': block {} has inverse scale {} and zero point {}; {} stores a "
                                  "positive finite scale 1/k and a finite zero point",
                                  name, b, k, z, spec()));
    }
  }
  const int64_t block_len = g == 0 ? out * in : g;
  return std::make_unique<UniformGridPrepared>(config_.bits, out, in, block_len, std::move(inverse_scale),
                                               std::move(zero_point), name);
}

UniformFormat::UniformFormat(const QuantConfig& config) : config_(config) { validate(config_); }

std::string uniform_spec(const QuantConfig& c) {
  const std::optional<Arithmetic> arithmetic = arithmetic_of(c);
  if (!arithmetic) {
    throw UsageError(fmt::format("scale form {} with {} zero-point codes has no spec spelling (ARITH {})",
                                 kScaleFormNames.name(c.scale_form), kZeroPointCodesNames.name(c.zero_point_codes),
                                 kArithmeticNames.described()));
  }
  std::string spec = fmt::format("{}:{}:{}:{}", to_string(c.scheme), c.bits, to_string(c.granularity, c.group_size),
                                 to_string(c.range, c.percentile));
  if (*arithmetic != Arithmetic::kNumpy) spec += ":" + std::string(kArithmeticNames.name(*arithmetic));
  return spec;
}

std::string UniformFormat::spec() const { return uniform_spec(config_); }

int64_t UniformFormat::group_columns(int64_t in_features, const std::string& name) const {
  switch (config_.granularity) {
    case Granularity::kPerTensor: return 0;
    case Granularity::kPerChannel: return in_features;
    case Granularity::kPerGroup:
      if (in_features % config_.group_size != 0) {
        throw UsageError(fmt::format("group size {} does not divide the row length {} of '{}'; choose a group size "
                                     "that divides every selected layer's input dimension",
                                     config_.group_size, in_features, name));
      }
      return config_.group_size;
  }
  return 0;
}

int64_t UniformFormat::packed_bytes(int64_t out, int64_t in) const {
  group_columns(in, "weight");
  const int64_t blocks = blocks_of(config_, out, in);
  const int64_t codes = (out * in * config_.bits + 7) / 8;
  return codes + 4 * blocks + (config_.scheme == Scheme::kZeroPoint ? 2 * blocks : 0);
}

double UniformFormat::bits_per_weight(int64_t out, int64_t in) const {
  const int64_t numel = out * in;
  return numel == 0 ? 0.0 : 8.0 * static_cast<double>(packed_bytes(out, in)) / static_cast<double>(numel);
}

std::unique_ptr<PreparedWeight> UniformFormat::prepare(const torch::Tensor& weight, const std::string& name) const {
  return std::make_unique<UniformPreparedWeight>(config_, choose_qparams(weight, config_, name), weight, name);
}

std::vector<std::unique_ptr<PreparedWeight>> UniformFormat::prepare_many(const std::vector<torch::Tensor>& weights,
                                                                         const std::vector<std::string>& names,
                                                                         const std::vector<WeightSummary>*) const {
  std::vector<QParams> params = choose_qparams_many(weights, config_, names);
  std::vector<std::unique_ptr<PreparedWeight>> out;
  out.reserve(params.size());
  for (size_t i = 0; i < params.size(); ++i) {
    out.push_back(std::make_unique<UniformPreparedWeight>(config_, std::move(params[i]), weights[i], names.at(i)));
  }
  return out;
}

void UniformFormat::fake_quantize_into(const torch::Tensor& src, torch::Tensor& dst, const std::string& name) const {
  const QParams params = choose_qparams(src, config_, name);
  quantppl::fake_quantize_into(src, dst, params, config_, name);
}

std::unique_ptr<ColumnGroupQuantizer> UniformFormat::begin_group(const torch::Tensor& whole_weight,
                                                                 const torch::Tensor& group_cols,
                                                                 const std::string& name) const {
  torch::NoGradGuard no_grad;
  QuantConfig column_config = config_;
  if (config_.granularity == Granularity::kPerTensor) {
    return std::make_unique<UniformColumnQuantizer>(column_config, choose_qparams(whole_weight, config_, name), name);
  }
  // Per channel the group is the whole row; per group the G columns: either way one (s, z) per row.
  column_config.granularity = Granularity::kPerChannel;
  column_config.group_size = 0;
  return std::make_unique<UniformColumnQuantizer>(
      column_config, choose_qparams(group_cols.contiguous(), column_config, name), name);
}

UniformPreparedWeight::UniformPreparedWeight(QuantConfig config, QParams params, const torch::Tensor& weight,
                                             std::string name)
    : config_(config), params_(std::move(params)), numel_(weight.numel()), name_(std::move(name)) {}

void UniformPreparedWeight::fake_quantize_into(const torch::Tensor& src, torch::Tensor& dst) const {
  quantppl::fake_quantize_into(src, dst, params_, config_, name_);
}

std::optional<int64_t> UniformPreparedWeight::packed_bytes() const {
  // Exact: the zero points' width (int16, or float32 when one does not fit) depends on the values.
  const int64_t blocks = params_.scale.size(0);
  int64_t bytes = (numel_ * config_.bits + 7) / 8 + 4 * blocks;
  if (config_.scheme == Scheme::kZeroPoint) bytes += (zero_points_fit_int16(params_.zero_point) ? 2 : 4) * blocks;
  return bytes;
}

PackedWeight UniformPreparedWeight::pack(const torch::Tensor& src) const {
  torch::NoGradGuard no_grad;
  PackedWeight packed;
  packed.out_features = src.dim() >= 1 ? src.size(0) : 1;
  packed.in_features = src.dim() >= 2 ? src.size(1) : 1;
  const CodeRange range = code_range(config_);
  const torch::Tensor codes = (quantize_with(src, params_, config_, name_) - static_cast<int32_t>(range.qmin)).contiguous();
  packed.sections.push_back(PackedSection{"codes", code_dtype(config_.bits), codes.numel(),
                                          pack_codes(codes.data_ptr<int32_t>(), codes.numel(), config_.bits)});
  const torch::Tensor scales = params_.scale.to(torch::kFloat32).contiguous();
  packed.sections.push_back(make_section("scales", "f32", scales.numel(), scales.data_ptr(),
                                         static_cast<size_t>(4 * scales.numel())));
  if (config_.scheme == Scheme::kZeroPoint) {
    const bool as_int16 = zero_points_fit_int16(params_.zero_point);
    const torch::Tensor zp = params_.zero_point.to(as_int16 ? torch::kInt16 : torch::kFloat32).contiguous();
    packed.sections.push_back(make_section("zero_points", as_int16 ? "i16" : "f32", zp.numel(), zp.data_ptr(),
                                           static_cast<size_t>((as_int16 ? 2 : 4) * zp.numel())));
  }
  return packed;
}

QuantizedTensor UniformFormat::unpack_codes(const PackedWeight& packed, const std::string& name) const {
  const int64_t out = packed.out_features, in = packed.in_features;
  if (out <= 0 || in <= 0) throw DataError(fmt::format("'{}': shape [{}, {}] is not a weight's", name, out, in));
  if (config_.granularity == Granularity::kPerGroup && in % config_.group_size != 0) {
    throw DataError(fmt::format("'{}': in_features {} is not a multiple of group_size {}", name, in, config_.group_size));
  }
  const int64_t numel = out * in;
  const int64_t blocks = blocks_of(config_, out, in);
  const bool zero_point = config_.scheme == Scheme::kZeroPoint;
  const size_t sections = zero_point ? 3 : 2;
  const PackedSection& codes_section = expect_section(packed, 0, sections, "codes", code_dtype(config_.bits), numel, name);
  const PackedSection& scales_section = expect_section(packed, 1, sections, "scales", "f32", blocks, name);

  const CodeRange range = code_range(config_);
  torch::Tensor codes = torch::empty({out, in}, torch::kInt32);
  int32_t* c = codes.data_ptr<int32_t>();
  if (!unpack_codes_into(reinterpret_cast<const uint8_t*>(codes_section.bytes.data()), numel, config_.bits, c)) {
    throw DataError(fmt::format("'{}': codes have non-zero padding bits after the last code", name));
  }
  const auto max_code = static_cast<int32_t>(range.qmax - range.qmin);
  for (int64_t k = 0; k < numel; ++k) {
    if (c[k] > max_code) {
      throw DataError(fmt::format("'{}': code {} at index {} exceeds qmax - qmin = {}", name, c[k], k, max_code));
    }
  }
  codes.add_(static_cast<int32_t>(range.qmin));

  QParams params;
  params.scale = torch::empty({blocks, 1}, torch::kFloat32);
  std::memcpy(params.scale.data_ptr(), scales_section.bytes.data(), static_cast<size_t>(4 * blocks));
  const float* s = params.scale.data_ptr<float>();
  for (int64_t k = 0; k < blocks; ++k) {
    if (!std::isfinite(s[k]) || s[k] <= 0) {
      throw DataError(fmt::format("'{}': scale {} of block {} is not a positive finite number", name, s[k], k));
    }
  }
  if (!zero_point) {
    params.zero_point = torch::zeros({blocks, 1}, torch::kFloat32);
  } else {
    const std::string dtype = packed.sections.at(2).dtype == "f32" ? "f32" : "i16";
    const PackedSection& zp_section = expect_section(packed, 2, sections, "zero_points", dtype, blocks, name);
    torch::Tensor zp = torch::empty({blocks, 1}, dtype == "f32" ? torch::kFloat32 : torch::kInt16);
    std::memcpy(zp.data_ptr(), zp_section.bytes.data(), zp_section.bytes.size());
    params.zero_point = zp.to(torch::kFloat32);
    if (dtype == "f32") {
      // Real, not only integer: a method's zero points (HQQ, zero_point_grid) are stored as they are.
      const float* z = params.zero_point.data_ptr<float>();
      for (int64_t k = 0; k < blocks; ++k) {
        if (!std::isfinite(z[k])) {
          throw DataError(fmt::format("'{}': zero point {} of block {} is not a finite number", name, z[k], k));
        }
      }
    }
  }
  return {std::move(codes), std::move(params), config_};
}

torch::Tensor UniformFormat::unpack(const PackedWeight& packed, const std::string& name) const {
  torch::NoGradGuard no_grad;
  return dequantize(unpack_codes(packed, name));
}

std::shared_ptr<const WeightFormat> parse_uniform_format(const std::vector<std::string>& parts) {
  if (parts.size() < 2 || parts.size() > 5) {
    throw UsageError(fmt::format("expected 2 to 5 ':'-separated fields, got {}", parts.size()));
  }
  QuantConfig config;
  const auto field = [&](const auto& table, const std::string& name) {
    const auto value = table.find(name);
    if (!value) throw UsageError(fmt::format("unknown {} '{}' (expected {})", table.what, name, table.choices_in_words()));
    return *value;
  };
  config.scheme = field(kSchemeNames, parts[0]);
  const std::string& bits = parts[1];
  if (bits.empty() || bits.size() > 2 || bits.find_first_not_of("0123456789") != std::string::npos ||
      std::stoi(bits) < kMinBits || std::stoi(bits) > kMaxBits) {
    throw UsageError(fmt::format("bits must be an integer in [{}, {}], got '{}'", kMinBits, kMaxBits, bits));
  }
  config.bits = std::stoi(bits);
  if (parts.size() >= 3) {
    const GranularityField g = parse_granularity_field(parts[2]);
    config.granularity = g.granularity;
    config.group_size = g.group_size;
  }
  if (parts.size() >= 4) {
    const RangeField r = parse_range_field(parts[3]);
    config.range = r.range;
    config.percentile = r.percentile;
  }
  if (parts.size() == 5) set_arithmetic(config, field(kArithmeticNames, parts[4]));
  return std::make_shared<UniformFormat>(config);
}

}  // namespace quantppl
