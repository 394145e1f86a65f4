// A method's result as a PreparedWeight; see include/quantppl/methods/method_weight.h.
#include "quantppl/methods/method_weight.h"

#include <cmath>
#include <cstdint>
#include <cstring>
#include <new>
#include <vector>

#include <fmt/format.h>
#include <torch/torch.h>

#include "quantppl/error.h"

namespace quantppl {

namespace {

constexpr uint32_t kSignBit = 0x80000000u;

// The positions where a and b (float32, same shape, contiguous) differ as bit
// patterns, one bit each (LSB first); empty when they are identical. Where
// a == b as numbers, those are zeros of opposite sign.
std::vector<uint8_t> differing_bits(const torch::Tensor& a, const torch::Tensor& b) {
  const torch::Tensor differ = a.view(torch::kInt32).ne(b.view(torch::kInt32)).contiguous();
  if (!differ.any().item<bool>()) return {};
  const int64_t n = differ.numel();
  std::vector<uint8_t> mask(static_cast<size_t>((n + 7) / 8), 0);
  const bool* d = differ.data_ptr<bool>();
  for (int64_t i = 0; i < n; ++i) {
    if (d[i]) mask[static_cast<size_t>(i / 8)] |= static_cast<uint8_t>(1u << (i % 8));
  }
  return mask;
}

// Flips the sign bit of x's elements marked in `mask` (x contiguous float32).
void flip_signs(torch::Tensor& x, const std::vector<uint8_t>& mask) {
  uint32_t* p = reinterpret_cast<uint32_t*>(x.data_ptr<float>());
  const int64_t n = x.numel();
  at::parallel_for(0, static_cast<int64_t>(mask.size()), 4096, [&](int64_t b0, int64_t b1) {
    for (int64_t byte = b0; byte < b1; ++byte) {
      const uint8_t m = mask[static_cast<size_t>(byte)];
      if (m == 0) continue;
      for (int bit = 0; bit < 8; ++bit) {
        const int64_t i = byte * 8 + bit;
        if (((m >> bit) & 1u) != 0 && i < n) p[i] ^= kSignBit;
      }
    }
  });
}

}  // namespace

torch::Tensor unscale_inputs(const torch::Tensor& format_weight, const torch::Tensor& input_scales) {
  return format_weight.div(input_scales.unsqueeze(0));  // as awq.cpp: x_hat = V / s, one IEEE division
}

MethodResultWeight::MethodResultWeight(torch::Tensor format_weight, torch::Tensor input_scales,
                                       std::unique_ptr<PreparedWeight> packer,
                                       std::shared_ptr<const WeightFormat> format, std::string name)
    : input_scales_(std::move(input_scales)), format_(std::move(format)), name_(std::move(name)) {
  torch::NoGradGuard no_grad;
  packed_bytes_ = packer->packed_bytes().value_or(format_->packed_bytes(format_weight.size(0), format_weight.size(1))) +
                  (input_scales_.defined() ? 4 * input_scales_.numel() : 0);
  try {
    PackedWeight packed = packer->pack(format_weight);
    const torch::Tensor back = format_->unpack(packed, name_);
    if (!back.sizes().equals(format_weight.sizes()) || !back.equal(format_weight)) {
      throw DataError(fmt::format("cannot pack layer '{}' of {} at its real width: the format's parameters do not "
                                  "reproduce the method's weights bit-for-bit",
                                  name_, format_->spec()));
    }
    // Equal as numbers, but a zero can come back with the other sign (absmax's
    // x_hat = q * s is +0 for q = 0, where GPTQ's round(x / s) * s gave -0 for
    // a small negative x): the packed model is right (what pack() always
    // accepted), and those signs are kept, one bit a weight, so that W_hat is V's
    // very bits.
    zero_signs_ = differing_bits(back.contiguous(), format_weight.contiguous());
    packed_ = std::move(packed);
  } catch (const std::bad_alloc&) {
    throw;
  } catch (...) {
    pack_error_ = std::current_exception();
    packed_ = PackedWeight{};
    zero_signs_.clear();
    format_weight_ = std::move(format_weight);
  }
}

torch::Tensor MethodResultWeight::format_weight() const {
  if (format_weight_.defined()) return format_weight_;
  torch::Tensor v = format_->unpack(packed_, name_).contiguous();
  if (!zero_signs_.empty()) flip_signs(v, zero_signs_);
  return v;
}

torch::Tensor MethodResultWeight::weight() const {
  torch::NoGradGuard no_grad;
  const torch::Tensor v = format_weight();
  return input_scales_.defined() ? unscale_inputs(v, input_scales_) : v;
}

void MethodResultWeight::fake_quantize_into(const torch::Tensor& src, torch::Tensor& dst) const {
  (void)src;
  torch::NoGradGuard no_grad;
  const torch::Tensor v = format_weight();
  if (input_scales_.defined()) {
    torch::div_out(dst, v, input_scales_.unsqueeze(0));
  } else {
    dst.copy_(v);
  }
}

PackedWeight MethodResultWeight::pack(const torch::Tensor& src) const {
  (void)src;
  if (pack_error_) std::rethrow_exception(pack_error_);
  PackedWeight packed = packed_;
  if (input_scales_.defined()) {
    const torch::Tensor s = input_scales_.to(torch::kFloat32).contiguous();
    PackedSection section{kInputScalesSection, "f32", s.numel(), std::string(static_cast<size_t>(s.numel()) * 4, '\0')};
    std::memcpy(section.bytes.data(), s.data_ptr<float>(), section.bytes.size());
    packed.sections.push_back(std::move(section));
  }
  return packed;
}

std::optional<int64_t> MethodResultWeight::packed_bytes() const { return packed_bytes_; }

int64_t MethodResultWeight::held_bytes() const {
  int64_t bytes = 0;
  for (const PackedSection& s : packed_.sections) bytes += static_cast<int64_t>(s.bytes.size());
  bytes += static_cast<int64_t>(zero_signs_.size());
  if (format_weight_.defined()) bytes += format_weight_.numel() * static_cast<int64_t>(format_weight_.element_size());
  if (input_scales_.defined()) bytes += input_scales_.numel() * static_cast<int64_t>(input_scales_.element_size());
  return bytes;
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
