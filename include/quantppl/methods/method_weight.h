// A method's result for one layer as a PreparedWeight (formats/weight_format.h),
// so that everything that takes a variant's prepared weights -- compare's
// per-variant weights, quantize --output, quantize --packed -- takes a GPTQ,
// AWQ or AWQ+GPTQ result unchanged.
//
// What is stored for the result W_hat of a layer W [out, in]:
//   * GPTQ: W_hat lies on the format's grid with the parameters GPTQ fixed
//     group by group (gptq.h, parameter_source). The packer is
//     format.prepare_from_groups(W, parameter_source); its pack(W_hat) writes
//     W_hat's codes with those parameters, at the format's real width.
//   * AWQ (and AWQ+GPTQ): W_hat = Q(W diag(s)) diag(s)^-1 (awq.h (1)); what a
//     deployed model stores is the format-domain weight V = Q(W diag(s)) and s
//     (folded into the layer before, which every reader shares). The packed
//     layer is V's sections followed by one more, "input_scales" (f32, in
//     values): the reader unpacks V and divides column j by s_j, the very
//     float32 division that made W_hat, so the weights come back bit-for-bit.
// pack() checks that the format's unpack of what it wrote gives V (or W_hat)
// bit-for-bit, and throws DataError naming the layer if not (a format whose
// prepare_from_groups does not reproduce GPTQ's parameters: a bug, never a
// silently different packed model).
#pragma once

#include <memory>
#include <string>

#include <torch/types.h>

#include "quantppl/formats/weight_format.h"

namespace quantppl {

// The name of the extra section of an AWQ-scaled layer.
inline constexpr const char* kInputScalesSection = "input_scales";

class MethodResultWeight final : public PreparedWeight {
 public:
  // format_weight: V (on the format's grid), float32 [out, in];
  // input_scales: s (float32 [in], > 0) or undefined (no scaling: W_hat = V);
  // packer: a PreparedWeight of `format` whose pack(V) stores V.
  MethodResultWeight(torch::Tensor format_weight, torch::Tensor input_scales, std::unique_ptr<PreparedWeight> packer,
                     std::shared_ptr<const WeightFormat> format, std::string name);

  // dst = W_hat (src is ignored: the result was computed from the original).
  void fake_quantize_into(const torch::Tensor& src, torch::Tensor& dst) const override;
  PackedWeight pack(const torch::Tensor& src) const override;
  std::optional<int64_t> packed_bytes() const override;

  // W_hat itself, float32 [out, in] (a new tensor when scaled).
  torch::Tensor weight() const;

 private:
  torch::Tensor format_weight_;
  torch::Tensor input_scales_;
  std::unique_ptr<PreparedWeight> packer_;
  std::shared_ptr<const WeightFormat> format_;
  std::string name_;
};

// W_hat = V diag(s)^-1, in the one float32 arithmetic every writer and reader uses.
torch::Tensor unscale_inputs(const torch::Tensor& format_weight, const torch::Tensor& input_scales);

// The reader's side: `format`'s unpack of `packed`, after taking out an
// "input_scales" section (required when `scaled`, refused otherwise) and
// dividing by it. DataError naming `name` for a missing, extra or malformed
// scales section (count != in, a value that is not finite and > 0).
torch::Tensor unpack_method_weight(const WeightFormat& format, bool scaled, PackedWeight packed,
                                   const std::string& name);

}  // namespace quantppl
