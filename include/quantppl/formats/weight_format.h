// A weight format: how one Linear weight W [out, in] is rounded, block by
// block, to a number format, and what it costs to store.
//
// Every quantized variant names one WeightFormat (formats/format_table.h maps
// spec text to formats): the uniform integer grids of quantize.h
// (absmax/zeropoint, any granularity and range) are one family; NF4, FP4/FP8,
// OCP MX, NVFP4 and llama.cpp's block formats (issue 14) are others.
// Methods that decide *how* to round (GPTQ, AWQ, HQQ: include/quantppl/methods/)
// reach a format only through this interface, so a new format works with every
// method and a new method with every format.
//
// Conventions shared by every format:
// * Blocks run along a row (the input dimension, dim 1): a block is G
//   consecutive inputs of one output row (group_columns(in) == G), or a whole
//   row (per channel: G == in), or the whole tensor (per tensor: G == 0).
// * fake_quantize_into computes x_hat = dequantize(quantize(x)) in float32,
//   with the format's own rounding; an all-zero block stays zero; NaN or Inf in
//   the input is a DataError naming the weight.
// * pack/unpack store the same x_hat at the format's real width; unpack(pack(W))
//   is bit-identical with fake_quantize_into(W).
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <torch/types.h>

namespace quantppl {

// One stored array of a packed weight, e.g. {"codes", "u4", ...},
// {"scales", "e8m0", ...}, {"scales", "f16", ...}, {"zero_points", "i16", ...}.
// `dtype` is a short tag the .qpack header records: "uN" (N-bit unsigned codes
// in one LSB-first bit stream, packed_model.h), "i16", "f16", "f32", "e8m0",
// "e4m3", "u8". `count` is the number of elements, `bytes` their storage.
struct PackedSection {
  std::string name;
  std::string dtype;
  int64_t count = 0;
  std::string bytes;
};

struct PackedWeight {
  int64_t out_features = 0;
  int64_t in_features = 0;
  std::vector<PackedSection> sections;
};

// What one read of a whole weight tells: max|x|, min x, max x, the first x in
// row-major order with |x| = max|x| (ggml's signed extreme; +0 when the
// weight is all zeros) and whether every element is finite. A caller that
// reads a weight once and keeps it unchanged (WeightBackup's originals) can
// hand it to WeightFormat::prepare_known for every variant, instead of each
// variant's prepare() reading the weight again for the same facts.
struct WeightSummary {
  float amax = 0;
  float min = 0;
  float max = 0;
  float signed_max = 0;
  bool finite = true;
};

// The summary of a contiguous float32 tensor (one parallel read, in pieces
// merged in index order: the same numbers for any thread count).
WeightSummary summarize_weight(const torch::Tensor& weight);

// The quantizer of one column group, with its parameters already fixed: what
// GPTQ (methods/gptq.h) needs, since it quantizes one column at a time, each
// after the error of the previous columns has been spread onto it.
class ColumnGroupQuantizer {
 public:
  virtual ~ColumnGroupQuantizer() = default;
  // x_hat of one column (float32 [out]) that lies at position `j` within the
  // group (0 <= j < group width), with the group's fixed parameters.
  virtual torch::Tensor fake_quantize_column(const torch::Tensor& column, int64_t j) const = 0;
};

// One weight with its parameters chosen (the costly part for percentile and
// MSE ranges, GPTQ's error compensation, AWQ's search): compare applies every
// variant once per batch, so parameters are chosen once and applied many times.
// A method's result (methods/) is also a PreparedWeight.
class PreparedWeight {
 public:
  virtual ~PreparedWeight() = default;
  // dst = x_hat. `src` is the weight prepare() was given (the original, from
  // the backup); dst: contiguous float32 of its shape; src == dst allowed.
  // One read of src and one write of dst.
  virtual void fake_quantize_into(const torch::Tensor& src, torch::Tensor& dst) const = 0;
  // The weight at its real width (the .qpack sections); exact size.
  virtual PackedWeight pack(const torch::Tensor& src) const = 0;
  // The bytes pack() writes, when they depend on the values (the uniform
  // format stores zero points as int16 or, when one does not fit, float32);
  // nullopt: WeightFormat::packed_bytes of the weight's shape, the default.
  virtual std::optional<int64_t> packed_bytes() const { return std::nullopt; }
};

// A zero-point grid whose per-block parameters a method may choose itself
// (HQQ, methods/hqq.h, optimises the zero point). Per block b (the blocks of
// WeightFormat::group_columns, row-major), with L = 2^bits - 1 and the
// method's float32 inverse scale k_b > 0 and real zero point z_b:
//
//   q = clamp(round_half_even(fl(w * k_b) + z_b), 0, L)     (float32, the hqq package's order)
//   x_hat = the format's dequantization of q with (k_b, z_b) as its file stores them
//
// Each format states what it stores and what that rounds (uniform_format.h:
// 1/k and z as float32, x_hat = (q - z) * fl(1/k); gguf_blocks.h q4_1/q5_1:
// d = f16(1/k), m = f16(-z * d), x_hat = fl(q * d) + m). Either way x_hat is
// what the stored file computes: unpack(pack(W)) is bit-identical with
// fake_quantize_into(W) of the PreparedWeight below.
class ZeroPointGrid {
 public:
  virtual ~ZeroPointGrid() = default;
  virtual int bits() const = 0;
  // `weight` [out, in] float32 contiguous with the method's k and z, one per
  // block (k.size() == z.size() == the number of blocks). UsageError for a
  // shape the format cannot cut or a count mismatch; DataError naming `name`
  // when a parameter cannot be stored (non-finite; beyond float16 for q*_1).
  virtual std::unique_ptr<PreparedWeight> prepare_with(const torch::Tensor& weight, std::vector<float> inverse_scale,
                                                       std::vector<float> zero_point,
                                                       const std::string& name) const = 0;
};

class WeightFormat {
 public:
  virtual ~WeightFormat() = default;

  // The canonical spec (every field explicit), e.g. "absmax:4:group64:minmax",
  // "nf4:group64:minmax", "mxfp4", "q4_0". parse(spec()) gives an equal format.
  virtual std::string spec() const = 0;

  // Inputs per block along a row: G, in_features (per channel), or 0 (one
  // block for the whole tensor). UsageError naming `name` if the format cannot
  // cut a row of in_features inputs (e.g. 32 does not divide it).
  virtual int64_t group_columns(int64_t in_features, const std::string& name) const = 0;

  // All stored bits (codes and every scale, zero point and global scale) over
  // the number of weights, for a weight of this shape: 4.25 for mxfp4, 4.5 for
  // q4_0 and nvfp4, 8.5 for q8_0.
  virtual double bits_per_weight(int64_t out_features, int64_t in_features) const = 0;
  // The bytes pack() writes for a weight of this shape (sum of its sections'
  // bytes). Exact for every format whose size does not depend on the values.
  virtual int64_t packed_bytes(int64_t out_features, int64_t in_features) const = 0;

  // Chooses the weight's parameters (NaN/Inf: DataError naming `name`).
  virtual std::unique_ptr<PreparedWeight> prepare(const torch::Tensor& weight, const std::string& name) const = 0;

  // prepare() given known == summarize_weight(weight): bit-identical with
  // prepare(weight, name), errors included. A format whose prepare() reads
  // the weight only for these facts (the NaN/Inf check, lazy_safe, NVFP4's
  // global scale, a per-tensor scale from max|x|) skips that read, so a
  // variant costs one read and one write of each weight instead of two reads
  // and a write. The default ignores `known`.
  virtual std::unique_ptr<PreparedWeight> prepare_known(const torch::Tensor& weight, const std::string& name,
                                                        const WeightSummary& /*known*/) const {
    return prepare(weight, name);
  }
  // Whether prepare_known uses `known` (a caller need not compute summaries
  // for a format that ignores them: the uniform grids read their rows anyway).
  virtual bool uses_summaries() const { return false; }

  // prepare() of many weights (every selected layer of a model), identical
  // with calling it on each; names[i] names weights[i]; known, when given,
  // holds summarize_weight(weights[i]) (prepare_known). A format whose
  // per-block parameter arithmetic is cheaper batched (the uniform format's
  // ~30 small tensor ops per call) overrides it; the default loops.
  virtual std::vector<std::unique_ptr<PreparedWeight>> prepare_many(
      const std::vector<torch::Tensor>& weights, const std::vector<std::string>& names,
      const std::vector<WeightSummary>* known = nullptr) const {
    std::vector<std::unique_ptr<PreparedWeight>> out;
    out.reserve(weights.size());
    for (size_t i = 0; i < weights.size(); ++i) {
      out.push_back(known ? prepare_known(weights[i], names.at(i), known->at(i)) : prepare(weights[i], names.at(i)));
    }
    return out;
  }

  // prepare(src)->fake_quantize_into(src, dst), for one-off use. src, dst: contiguous float32 [out, in], same shape;
  // src == dst allowed (in place). The fast path: fused, no per-element
  // pow/log2, parallel over LibTorch's intra-op threads.
  virtual void fake_quantize_into(const torch::Tensor& src, torch::Tensor& dst, const std::string& name) const = 0;

  // GPTQ's view. `whole_weight` is the original W (tensor-level parameters,
  // such as a per-tensor scale or NVFP4's global scale, come from it);
  // `group_cols` is the current (error-updated) W[:, c0 : c0 + G) of the group
  // whose first column c0 GPTQ has reached (the whole W per tensor). The
  // returned quantizer fake-quantizes that group's columns.
  virtual std::unique_ptr<ColumnGroupQuantizer> begin_group(const torch::Tensor& whole_weight,
                                                            const torch::Tensor& group_cols,
                                                            const std::string& name) const = 0;

  // The parameters a method fixed group by group (GPTQ: gptq.h's
  // parameter_source), as a PreparedWeight that packs the method's result:
  // per block, what prepare() would choose from that block of `group_source`;
  // weight-level parameters (a per-tensor scale, NVFP4's global scale) from
  // `whole_weight`, as begin_group takes them. The default, prepare(group_source),
  // is right for every format whose parameters are per block only.
  virtual std::unique_ptr<PreparedWeight> prepare_from_groups(const torch::Tensor& whole_weight,
                                                              const torch::Tensor& group_source,
                                                              const std::string& name) const {
    (void)whole_weight;
    return prepare(group_source, name);
  }

  // The zero-point grid a method may set parameters on (ZeroPointGrid above),
  // or nullptr when the format has none (absmax, float grids, q4_0, ...).
  // UsageError, saying why, when the format has such a grid but a method's
  // parameters cannot replace its own (uniform_format.h: range searches and
  // the tutorial arithmetic).
  virtual const ZeroPointGrid* zero_point_grid() const { return nullptr; }

  // The inverse of PreparedWeight::pack: x_hat, bit-identical with
  // fake_quantize_into. DataError naming `name` for sections that do not
  // match the format and shape (a hostile .qpack must not crash it).
  virtual torch::Tensor unpack(const PackedWeight& packed, const std::string& name) const = 0;
};

}  // namespace quantppl
