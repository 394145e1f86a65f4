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
//
// In memory the object holds that packed form, not V: compare prepares every
// variant before evaluating any, so a float32 V per layer would cost each
// method variant 4 bytes a weight (12 GB for three variants of a model with
// 4 GB of Linear weights); the packed sections cost ~bits/32 of that (4.5
// bits a weight for q4_0: 0.14x). The constructor packs V and checks that the
// format's unpack of what it wrote gives V (as numbers: pack()'s check);
// fake_quantize_into and weight() then rebuild W_hat from the packed sections
// (unpack, and the division by s), bit-identical with V (or V / s). The one
// difference unpack may make, a zero of the other sign (absmax unpacks q = 0
// as +0 where GPTQ's rounding gave -0), is undone from a bit mask of those
// positions, kept only when there are any (1/32 of V's bytes).
//
// Where that check fails (a format whose prepare_from_groups does not
// reproduce the method's parameters: a bug) or pack() throws, the object keeps
// the float32 V instead, so the variant is still evaluated as the method made
// it, and pack() throws that DataError naming the layer (or pack()'s own
// error): never a silently different packed model.
#pragma once

#include <cstdint>
#include <exception>
#include <memory>
#include <string>
#include <vector>

#include <torch/types.h>

#include "quantppl/formats/weight_format.h"

namespace quantppl {

// The name of the extra section of an AWQ-scaled layer.
inline constexpr const char* kInputScalesSection = "input_scales";

class MethodResultWeight final : public PreparedWeight {
 public:
  // format_weight: V (on the format's grid), float32 [out, in];
  // input_scales: s (float32 [in], > 0) or undefined (no scaling: W_hat = V);
  // packer: a PreparedWeight of `format` whose pack(V) stores V. Packs V once
  // (the packer and V are not kept unless packing fails, above).
  MethodResultWeight(torch::Tensor format_weight, torch::Tensor input_scales, std::unique_ptr<PreparedWeight> packer,
                     std::shared_ptr<const WeightFormat> format, std::string name);

  // dst = W_hat (src is ignored: the result was computed from the original).
  void fake_quantize_into(const torch::Tensor& src, torch::Tensor& dst) const override;
  PackedWeight pack(const torch::Tensor& src) const override;
  std::optional<int64_t> packed_bytes() const override;

  // W_hat itself, float32 [out, in]: a new tensor (rebuilt from the packed sections).
  torch::Tensor weight() const;

  // The bytes this object holds for the weight: the packed sections', the
  // zero-sign mask's and s's (or V's 4 * out * in when packing failed). Not counted: the name, the
  // format (shared) and the vectors' bookkeeping.
  int64_t held_bytes() const;
  // Whether V is held as float32 because packing failed.
  bool holds_float32() const { return format_weight_.defined(); }

 private:
  // V as float32 [out, in]: unpacked, or the kept copy.
  torch::Tensor format_weight() const;

  PackedWeight packed_;              // V's sections, without input_scales (empty when packing failed)
  std::vector<uint8_t> zero_signs_;  // bit i set: element i of unpack(packed_) is a zero of V's other sign
  torch::Tensor format_weight_;      // V, only when packing failed
  std::exception_ptr pack_error_;    // why packing failed, thrown again by pack()
  torch::Tensor input_scales_;
  int64_t packed_bytes_ = 0;         // what pack() writes, input_scales included
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
