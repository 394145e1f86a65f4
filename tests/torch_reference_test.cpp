// Cross-checks against PyTorch's own quantization ops.
//
// PyTorch's kernels compute round(x * inv_scale) + z with inv_scale = 1/s in
// float (fake_quantize_*) or in a similar multiply form (quantize_per_*),
// where the library divides, round(x / s + z), as the numpy seed does. The two
// agree except where x / s lies within float rounding of a .5 tie. So each
// comparison is: equal everywhere, except at a small number of positions where
// (a) the results differ by exactly one quantization step and (b) x / s is
// within kTieTolerance of a half-integer.
#include <cmath>
#include <vector>

#include <gtest/gtest.h>
#include <torch/torch.h>

#include "quantppl/quantize.h"

namespace quantppl {
namespace {

// x/s and x*(1/s) differ by a few float32 ulps; at |x/s| <= 255 that is < 1e-4.
constexpr double kTieTolerance = 1e-4;
// Upper bound on the share of tie disagreements on Gaussian weights.
constexpr double kMaxTieShare = 1e-4;

const std::vector<std::vector<int64_t>> kShapes = {{1, 1}, {7, 3}, {16, 64}, {33, 17}, {128, 256}, {512, 384}};

struct Disagreement {
  int64_t count = 0;
  bool all_one_step_at_ties = true;
};

// Compares codes qa (library) and qb (PyTorch) for input x with per-element
// scale s and zero point z (expanded to x's shape).
Disagreement compare_codes(const torch::Tensor& x, const torch::Tensor& s, const torch::Tensor& z,
                           const torch::Tensor& qa, const torch::Tensor& qb) {
  Disagreement d;
  const torch::Tensor differ = qa.to(torch::kInt64) != qb.to(torch::kInt64);
  d.count = differ.sum().item<int64_t>();
  if (d.count == 0) return d;
  const torch::Tensor step = (qa.to(torch::kInt64) - qb.to(torch::kInt64)).abs().masked_select(differ);
  const torch::Tensor exact = (x.to(torch::kFloat64) / s.to(torch::kFloat64)).masked_select(differ);
  const torch::Tensor distance_to_tie = ((exact - exact.floor()) - 0.5).abs();
  d.all_one_step_at_ties = (step == 1).all().item<bool>() &&
                           (distance_to_tie < kTieTolerance).all().item<bool>();
  return d;
}

TEST(TorchReferenceTest, FakeQuantizePerTensorAffineAgreesUpToTies) {
  torch::manual_seed(21);
  int64_t total = 0;
  int64_t differing = 0;
  for (const auto& shape : kShapes) {
    for (int bits = kMinBits; bits <= kMaxBits; ++bits) {
      for (const auto scheme : {Scheme::kAbsmax, Scheme::kZeroPoint}) {
        const torch::Tensor x = torch::randn(shape) * 0.02 + (scheme == Scheme::kZeroPoint ? 0.01 : 0.0);
        const QuantConfig config = numpy_seed_config(scheme, bits);
        const QuantizedTensor q = quantize(x, config);
        const CodeRange range = code_range(config);
        const double s = q.params.scale.item<float>();
        const int64_t z = static_cast<int64_t>(q.params.zero_point.item<float>());
        if (scheme == Scheme::kZeroPoint && (z < range.qmin || z > range.qmax)) continue;
        const torch::Tensor theirs = at::fake_quantize_per_tensor_affine(x, s, z, range.qmin, range.qmax);
        const torch::Tensor ours = dequantize(q);
        // Recover PyTorch's codes from its dequantized values: q = x_hat / s + z.
        const torch::Tensor their_codes = torch::round(theirs.to(torch::kFloat64) / s + static_cast<double>(z));
        const Disagreement d = compare_codes(x, q.params.scale.expand(x.sizes()),
                                             q.params.zero_point.expand(x.sizes()), q.codes, their_codes);
        EXPECT_TRUE(d.all_one_step_at_ties) << "bits " << bits << " " << to_string(scheme);
        // Where the codes agree, the dequantized values are bit-identical.
        const torch::Tensor agree = q.codes.to(torch::kFloat64) == their_codes;
        EXPECT_TRUE(torch::equal(ours.masked_select(agree), theirs.masked_select(agree)));
        total += x.numel();
        differing += d.count;
      }
    }
  }
  EXPECT_LE(static_cast<double>(differing), kMaxTieShare * static_cast<double>(total) + 2) << differing << " of " << total;
}

TEST(TorchReferenceTest, FakeQuantizePerChannelAffineAgreesUpToTies) {
  torch::manual_seed(22);
  int64_t total = 0;
  int64_t differing = 0;
  for (const auto& shape : kShapes) {
    for (int bits = kMinBits; bits <= kMaxBits; ++bits) {
      const torch::Tensor x = torch::randn(shape) * 0.02;
      QuantConfig config = numpy_seed_config(Scheme::kAbsmax, bits);
      config.granularity = Granularity::kPerChannel;
      const QuantizedTensor q = quantize(x, config);
      const CodeRange range = code_range(config);
      const torch::Tensor scale = q.params.scale.reshape({-1}).to(torch::kFloat32);
      const torch::Tensor zero = q.params.zero_point.reshape({-1}).to(torch::kInt32);
      const torch::Tensor theirs =
          at::fake_quantize_per_channel_affine(x, scale, zero, /*axis=*/0, range.qmin, range.qmax);
      const torch::Tensor their_codes = torch::round(theirs / q.params.scale);
      const Disagreement d = compare_codes(x, q.params.scale.expand(x.sizes()),
                                           q.params.zero_point.expand(x.sizes()), q.codes, their_codes);
      EXPECT_TRUE(d.all_one_step_at_ties) << "bits " << bits;
      const torch::Tensor agree = q.codes.to(torch::kFloat32) == their_codes;
      EXPECT_TRUE(torch::equal(dequantize(q).masked_select(agree), theirs.masked_select(agree)));
      total += x.numel();
      differing += d.count;
    }
  }
  EXPECT_LE(static_cast<double>(differing), kMaxTieShare * static_cast<double>(total) + 2);
}

// torch::quantize_per_tensor / quantize_per_channel (and the quantized dtypes qint8 / quint8 they
// create) are deprecated since LibTorch 2.15 (a one-time warning at run time), and no kept op
// yields integer codes. The two tests below use them anyway, as references: they are a second,
// independent kernel (the multiply form) producing the integer codes themselves, which the
// fake_quantize comparisons above reach only through the dequantized floats. They run wherever
// the ops exist; once a LibTorch drops them (their per-operator headers go), they report a skip.
#if __has_include(<ATen/ops/quantize_per_tensor.h>) && __has_include(<ATen/ops/quantize_per_channel.h>)
#define QUANTPPL_HAVE_QUANTIZE_PER_TENSOR_OPS 1
#else
#define QUANTPPL_HAVE_QUANTIZE_PER_TENSOR_OPS 0
#endif

TEST(TorchReferenceTest, QuantizePerTensorIntegerRepresentationAgreesUpToTies) {
#if !QUANTPPL_HAVE_QUANTIZE_PER_TENSOR_OPS
  GTEST_SKIP() << "this LibTorch has no torch::quantize_per_tensor";
#else
  torch::manual_seed(23);
  for (const auto& shape : kShapes) {
    // 8-bit absmax codes live in qint8, unsigned zero-point codes in quint8.
    const torch::Tensor x = torch::randn(shape) * 0.05 + 0.01;
    for (const auto scheme : {Scheme::kAbsmax, Scheme::kZeroPoint}) {
      const QuantConfig config = numpy_seed_config(scheme, 8);
      const QuantizedTensor q = quantize(x, config);
      const double s = q.params.scale.item<float>();
      const int64_t z = static_cast<int64_t>(q.params.zero_point.item<float>());
      if (z < 0 || z > 255) continue;
      const auto dtype = scheme == Scheme::kAbsmax ? torch::kQInt8 : torch::kQUInt8;
      const torch::Tensor theirs = torch::quantize_per_tensor(x, s, z, dtype).int_repr();
      const Disagreement d = compare_codes(x, q.params.scale.expand(x.sizes()),
                                           q.params.zero_point.expand(x.sizes()), q.codes, theirs);
      EXPECT_TRUE(d.all_one_step_at_ties) << to_string(scheme);
      EXPECT_LE(static_cast<double>(d.count), kMaxTieShare * x.numel() + 2);
    }
  }
#endif
}

TEST(TorchReferenceTest, QuantizePerChannelIntegerRepresentationAgreesUpToTies) {
#if !QUANTPPL_HAVE_QUANTIZE_PER_TENSOR_OPS
  GTEST_SKIP() << "this LibTorch has no torch::quantize_per_channel";
#else
  torch::manual_seed(24);
  for (const auto& shape : kShapes) {
    const torch::Tensor x = torch::randn(shape) * 0.05;
    QuantConfig config = numpy_seed_config(Scheme::kZeroPoint, 8);
    config.granularity = Granularity::kPerChannel;
    const QuantizedTensor q = quantize(x, config);
    const torch::Tensor z = q.params.zero_point.reshape({-1}).to(torch::kInt64);
    if (z.min().item<int64_t>() < 0 || z.max().item<int64_t>() > 255) continue;
    const torch::Tensor theirs =
        torch::quantize_per_channel(x, q.params.scale.reshape({-1}).to(torch::kFloat64), z, /*axis=*/0,
                                    torch::kQUInt8)
            .int_repr();
    const Disagreement d = compare_codes(x, q.params.scale.expand(x.sizes()),
                                         q.params.zero_point.expand(x.sizes()), q.codes, theirs);
    EXPECT_TRUE(d.all_one_step_at_ties);
    EXPECT_LE(static_cast<double>(d.count), kMaxTieShare * x.numel() + 2);
  }
#endif
}

// A construction where the two arithmetics must disagree: x exactly on a tie
// in real numbers, where x / s and x * (1/s) land on opposite sides of it.
TEST(TorchReferenceTest, TheDifferenceIsRealAndLocatedAtTies) {
  const torch::Tensor x = torch::tensor({-0.3f, 0.0f, 0.1f, 0.7f});
  QuantConfig config = numpy_seed_config(Scheme::kZeroPoint, 8);
  const QuantizedTensor q = quantize(x, config);
  const double s = q.params.scale.item<float>();
  const int64_t z = static_cast<int64_t>(q.params.zero_point.item<float>());
  const torch::Tensor theirs = at::fake_quantize_per_tensor_affine(x, s, z, 0, 255);
  const torch::Tensor their_codes = torch::round(theirs.to(torch::kFloat64) / s + z);
  const Disagreement d = compare_codes(x, q.params.scale.view({1}).expand({4}), q.params.zero_point.view({1}).expand({4}),
                                       q.codes, their_codes);
  EXPECT_GE(d.count, 1);  // 0.1 / (1/255) = 25.4999.. but 0.1 * 255 = 25.5
  EXPECT_TRUE(d.all_one_step_at_ties);
}

}  // namespace
}  // namespace quantppl
