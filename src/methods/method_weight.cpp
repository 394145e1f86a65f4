// A method's result as a PreparedWeight; see include/quantppl/methods/method_weight.h.
#include "quantppl/methods/method_weight.h"

#include <cmath>
#include <cstring>
#include <vector>

#include <fmt/format.h>
#include <torch/torch.h>

#include "quantppl/error.h"

namespace quantppl {

torch::Tensor unscale_inputs(const torch::Tensor& format_weight, const torch::Tensor& input_scales) {
  return format_weight.div(input_scales.unsqueeze(0));  // as awq.cpp: x_hat = V / s, one IEEE division
}

MethodResultWeight::MethodResultWeight(torch::Tensor format_weight, torch::Tensor input_scales,
                                       std::unique_ptr<PreparedWeight> packer,
                                       std::shared_ptr<const WeightFormat> format, std::string name)
    : format_weight_(std::move(format_weight)),
      input_scales_(std::move(input_scales)),
      packer_(std::move(packer)),
      format_(std::move(format)),
      name_(std::move(name)) {}

torch::Tensor MethodResultWeight::weight() const {
  return input_scales_.defined() ? unscale_inputs(format_weight_, input_scales_) : format_weight_;
}

void MethodResultWeight::fake_quantize_into(const torch::Tensor& src, torch::Tensor& dst) const {
  (void)src;
  torch::NoGradGuard no_grad;
  if (input_scales_.defined()) {
    torch::div_out(dst, format_weight_, input_scales_.unsqueeze(0));
  } else {
    dst.copy_(format_weight_);
  }
}

PackedWeight MethodResultWeight::pack(const torch::Tensor& src) const {
  (void)src;
  torch::NoGradGuard no_grad;
  PackedWeight packed = packer_->pack(format_weight_);
  const torch::Tensor back = format_->unpack(packed, name_);
  if (!back.equal(format_weight_)) {
    throw DataError(fmt::format("cannot pack layer '{}' of {} at its real width: the format's parameters do not "
                                "reproduce the method's weights bit-for-bit",
                                name_, format_->spec()));
  }
  if (input_scales_.defined()) {
    const torch::Tensor s = input_scales_.to(torch::kFloat32).contiguous();
    PackedSection section{kInputScalesSection, "f32", s.numel(), std::string(static_cast<size_t>(s.numel()) * 4, '\0')};
    std::memcpy(section.bytes.data(), s.data_ptr<float>(), section.bytes.size());
    packed.sections.push_back(std::move(section));
  }
  return packed;
}

std::optional<int64_t> MethodResultWeight::packed_bytes() const {
  const int64_t base = packer_->packed_bytes().value_or(format_->packed_bytes(format_weight_.size(0), format_weight_.size(1)));
  return base + (input_scales_.defined() ? 4 * input_scales_.numel() : 0);
}

torch::Tensor unpack_method_weight(const WeightFormat& format, bool scaled, PackedWeight packed,
                                   const std::string& name) {
  std::vector<PackedSection> scales;
  std::vector<PackedSection> rest;
  for (PackedSection& s : packed.sections) (s.name == kInputScalesSection ? scales : rest).push_back(std::move(s));
  if (!scaled) {
    if (!scales.empty()) {
      throw DataError(fmt::format("packed weight '{}' has an '{}' section, but its variant scales no inputs", name,
                                  kInputScalesSection));
    }
    packed.sections = std::move(rest);
    return format.unpack(packed, name);
  }
  if (scales.size() != 1) {
    throw DataError(fmt::format("packed weight '{}' must have one '{}' section (an AWQ variant), got {}", name,
                                kInputScalesSection, scales.size()));
  }
  const PackedSection& s = scales[0];
  if (s.dtype != "f32" || s.count != packed.in_features || static_cast<int64_t>(s.bytes.size()) != 4 * s.count) {
    throw DataError(fmt::format("packed weight '{}': section '{}' must be {} f32 values, got {} {} values in {} bytes",
                                name, kInputScalesSection, packed.in_features, s.count, s.dtype, s.bytes.size()));
  }
  torch::Tensor input_scales = torch::empty({s.count}, torch::kFloat32);
  if (s.count > 0) std::memcpy(input_scales.data_ptr<float>(), s.bytes.data(), s.bytes.size());
  if (!(torch::isfinite(input_scales) & (input_scales > 0)).all().item<bool>()) {
    throw DataError(fmt::format("packed weight '{}': section '{}' holds a value that is not a finite number > 0", name,
                                kInputScalesSection));
  }
  packed.sections = std::move(rest);
  return unscale_inputs(format.unpack(packed, name), input_scales);
}

}  // namespace quantppl
