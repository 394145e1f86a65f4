// The seeds' printed numbers, reproduced exactly.
//
// The numpy notebook (../shared/seeds/numpy-quantization-from-scratch.txt)
// prints scales with repr(), which round-trips a float64 exactly, so scales
// are compared with ==; arrays it prints after np.round(x, 2) are compared
// after the same rounding. The torch tutorial's example is checked against its
// own formulas, written out literally here with torch ops (not the library).
#include <cmath>
#include <vector>

#include <gtest/gtest.h>
#include <torch/torch.h>

#include "quantppl/error_metrics.h"
#include "quantppl/quantize.h"

namespace quantppl {
namespace {

// The notebook's params after np.round(params, 2).
const std::vector<double> kNumpyParams = {73.01, -42.44, 114.48, 13.72,  77.91, 145.29, 93.61,
                                          104.81, 90.27, 85.97,  81.49,  110.62, 100.19, -39.48,
                                          92.56, 109.81, 66.74,  108.35, 109.48, 11.7};

torch::Tensor f64(const std::vector<double>& v) {
  return torch::tensor(v, torch::TensorOptions().dtype(torch::kFloat64));
}

std::vector<int64_t> codes_of(const QuantizedTensor& q) {
  const torch::Tensor c = q.codes.to(torch::kInt64).contiguous();
  return {c.data_ptr<int64_t>(), c.data_ptr<int64_t>() + c.numel()};
}

// np.round(x, 2): rint(x * 100) / 100, half to even.
std::vector<double> round2(const torch::Tensor& t) {
  const torch::Tensor c = t.to(torch::kFloat64).contiguous();
  std::vector<double> out;
  for (int64_t i = 0; i < c.numel(); ++i) out.push_back(std::nearbyint(c.data_ptr<double>()[i] * 100) / 100);
  return out;
}

double round2(double x) { return std::nearbyint(x * 100) / 100; }

TEST(NumpySeedTest, AsymmetricEightBitScaleZeroAndCodes) {
  const QuantizedTensor q = quantize(f64(kNumpyParams), numpy_seed_config(Scheme::kZeroPoint, 8));
  EXPECT_EQ(q.params.scale.item<double>(), 0.7361960784313725);
  EXPECT_EQ(q.params.zero_point.item<double>(), 58.0);
  const std::vector<int64_t> expected = {157, 0,   214, 77,  164, 255, 185, 200, 181, 175,
                                         169, 208, 194, 4,   184, 207, 149, 205, 207, 74};
  EXPECT_EQ(codes_of(q), expected);
  const std::vector<double> dequantized = {72.88, -42.7, 114.85, 13.99,  78.04, 145.03, 93.5,
                                           104.54, 90.55, 86.13,  81.72,  110.43, 100.12, -39.75,
                                           92.76, 109.69, 66.99,  108.22, 109.69, 11.78};
  EXPECT_EQ(round2(dequantize(q)), dequantized);
  EXPECT_EQ(round2(error_metrics(f64(kNumpyParams), dequantize(q)).mse()), 0.05);
}

TEST(NumpySeedTest, SymmetricEightBitScaleAndCodes) {
  const QuantizedTensor q = quantize(f64(kNumpyParams), numpy_seed_config(Scheme::kAbsmax, 8));
  EXPECT_EQ(q.params.scale.item<double>(), 1.144015748031496);
  EXPECT_EQ(q.params.zero_point.item<double>(), 0.0);
  const std::vector<int64_t> expected = {64, -37, 100, 12, 68, 127, 82, 92, 79, 75,
                                         71, 97,  88,  -35, 81, 96, 58, 95, 96, 10};
  EXPECT_EQ(codes_of(q), expected);
  const std::vector<double> dequantized = {73.22, -42.33, 114.4, 13.73,  77.79, 145.29, 93.81,
                                           105.25, 90.38, 85.8,  81.23,  110.97, 100.67, -40.04,
                                           92.67, 109.83, 66.35, 108.68, 109.83, 11.44};
  EXPECT_EQ(round2(dequantize(q)), dequantized);
  EXPECT_EQ(round2(error_metrics(f64(kNumpyParams), dequantize(q)).mse()), 0.08);
}

TEST(NumpySeedTest, PercentileVersusMinMaxWithOutlier) {
  std::vector<double> params = kNumpyParams;
  params.back() = 1000.0;
  const torch::Tensor x = f64(params);

  QuantConfig minmax = numpy_seed_config(Scheme::kZeroPoint, 8);
  QuantConfig percentile = minmax;
  percentile.range = RangeMethod::kPercentile;
  percentile.percentile = 99.99;

  const QuantizedTensor qm = quantize(x, minmax);
  const QuantizedTensor qp = quantize(x, percentile);
  EXPECT_EQ(qm.params.scale.item<double>(), 4.088);
  EXPECT_EQ(qm.params.zero_point.item<double>(), 10.0);
  EXPECT_EQ(qp.params.scale.item<double>(), 4.081609517647049);
  EXPECT_EQ(qp.params.zero_point.item<double>(), 10.0);
  const std::vector<int64_t> expected = {28, 0,  38, 13, 29, 46, 33, 36, 32, 31,
                                         30, 37, 35, 0,  33, 37, 26, 37, 37, 255};
  EXPECT_EQ(codes_of(qm), expected);
  EXPECT_EQ(codes_of(qp), expected);

  const std::vector<double> deq_minmax = {73.58, -40.88, 114.46, 12.26,  77.67, 147.17, 94.02,
                                          106.29, 89.94, 85.85,  81.76,  110.38, 102.2, -40.88,
                                          94.02, 110.38, 65.41,  110.38, 110.38, 1001.56};
  const std::vector<double> deq_percentile = {73.47, -40.82, 114.29, 12.24,  77.55, 146.94, 93.88,
                                              106.12, 89.8,  85.71,  81.63,  110.2, 102.04, -40.82,
                                              93.88, 110.2,  65.31,  110.2,  110.2, 999.99};
  EXPECT_EQ(round2(dequantize(qm)), deq_minmax);
  EXPECT_EQ(round2(dequantize(qp)), deq_percentile);

  // Errors excluding the outlier: the notebook's params[:-1].
  const auto head = [](const torch::Tensor& t) { return t.slice(0, 0, 19); };
  EXPECT_EQ(round2(error_metrics(head(x), head(dequantize(qm))).mse()), 1.38);
  EXPECT_EQ(round2(error_metrics(head(x), head(dequantize(qp))).mse()), 1.23);
}

// The numpy notebook's formulas, written out with torch float64 ops.
struct NumpyReference {
  torch::Tensor codes;
  torch::Tensor dequantized;
};

NumpyReference numpy_asymmetric(const torch::Tensor& params, int bits) {
  const torch::Tensor alpha = params.max();
  const torch::Tensor beta = params.min();
  const torch::Tensor scale = (alpha - beta) / (std::pow(2.0, bits) - 1);
  const torch::Tensor zero = -1 * torch::round(beta / scale);
  const torch::Tensor q = torch::clamp(torch::round(params / scale + zero), 0, std::pow(2.0, bits) - 1);
  return {q, (q - zero) * scale};
}

NumpyReference numpy_symmetric(const torch::Tensor& params, int bits) {
  const torch::Tensor alpha = params.abs().max();
  const torch::Tensor scale = alpha / (std::pow(2.0, bits - 1) - 1);
  const double bound = std::pow(2.0, bits - 1) - 1;
  const torch::Tensor q = torch::clamp(torch::round(params / scale), -bound, bound);
  return {q, q * scale};
}

TEST(NumpySeedTest, FormulasMatchOnRandomDataEveryBitWidth) {
  torch::manual_seed(7);
  for (int bits = kMinBits; bits <= kMaxBits; ++bits) {
    for (int trial = 0; trial < 5; ++trial) {
      const torch::Tensor x = torch::rand({1000}, torch::kFloat64) * 200 - 50;
      const NumpyReference asym = numpy_asymmetric(x, bits);
      const QuantizedTensor qa = quantize(x, numpy_seed_config(Scheme::kZeroPoint, bits));
      EXPECT_TRUE(torch::equal(qa.codes.to(torch::kFloat64), asym.codes)) << "bits " << bits;
      EXPECT_TRUE(torch::equal(dequantize(qa), asym.dequantized)) << "bits " << bits;

      const NumpyReference sym = numpy_symmetric(x, bits);
      const QuantizedTensor qs = quantize(x, numpy_seed_config(Scheme::kAbsmax, bits));
      EXPECT_TRUE(torch::equal(qs.codes.to(torch::kFloat64), sym.codes)) << "bits " << bits;
      EXPECT_TRUE(torch::equal(dequantize(qs), sym.dequantized)) << "bits " << bits;
    }
  }
}

// The torch tutorial's absmax_quantize and zeropoint_quantize, verbatim.
// The tutorial runs in Python, where `127 / tensor` is Tensor.__rdiv__:
// reciprocal() * 127. (LibTorch C++'s `127 / tensor` divides, which differs
// in the last bit for about a third of weight tensors.)
NumpyReference tutorial_absmax(const torch::Tensor& ip) {
  const torch::Tensor scale = torch::reciprocal(torch::max(torch::abs(ip))) * 127;
  const torch::Tensor ip_quant = (scale * ip).round();
  return {ip_quant, ip_quant / scale};
}

NumpyReference tutorial_zeropoint(const torch::Tensor& ip) {
  torch::Tensor ip_range = torch::max(ip) - torch::min(ip);
  const torch::Tensor scale = torch::reciprocal(ip_range) * 255;
  const torch::Tensor zeropoint = (-scale * torch::min(ip) - 128).round();
  const torch::Tensor ip_quant = torch::clip((ip * scale + zeropoint).round(), -128, 127);
  return {ip_quant, (ip_quant - zeropoint) / scale};
}

TEST(TorchTutorialTest, ZeroPointExampleHasZeroPointMinus52) {
  const torch::Tensor x = torch::tensor({-0.3f, 0.0f, 0.1f, 0.7f});
  const QuantizedTensor q = quantize(x, torch_tutorial_config(Scheme::kZeroPoint));
  EXPECT_EQ(q.params.zero_point.item<float>(), -52.0f);
  EXPECT_EQ(q.params.scale.item<float>(), 255.0f);
  const NumpyReference ref = tutorial_zeropoint(x);
  EXPECT_TRUE(torch::equal(q.codes.to(torch::kFloat32), ref.codes)) << q.codes << ref.codes;
  EXPECT_TRUE(torch::equal(dequantize(q), ref.dequantized));
  // Zero maps to the zero point and back to exactly zero.
  EXPECT_EQ(q.codes[1].item<int>(), -52);
  EXPECT_EQ(dequantize(q)[1].item<float>(), 0.0f);
}

TEST(TorchTutorialTest, AbsmaxExampleMatchesTutorialFormula) {
  const torch::Tensor x = torch::tensor({-0.3f, 0.0f, 0.1f, 0.7f});
  const QuantizedTensor q = quantize(x, torch_tutorial_config(Scheme::kAbsmax));
  EXPECT_EQ(q.params.scale.item<float>(), 127.0f / 0.7f);
  const NumpyReference ref = tutorial_absmax(x);
  EXPECT_TRUE(torch::equal(q.codes.to(torch::kFloat32), ref.codes));
  EXPECT_TRUE(torch::equal(dequantize(q), ref.dequantized));
  EXPECT_EQ(q.codes[3].item<int>(), 127);
  EXPECT_EQ(q.codes[1].item<int>(), 0);
}

TEST(TorchTutorialTest, FormulasMatchOnRandomWeights) {
  torch::manual_seed(11);
  for (int trial = 0; trial < 20; ++trial) {
    const torch::Tensor w = torch::randn({64, 96}) * 0.05 + (trial % 3 == 0 ? 0.02 : 0.0);
    const NumpyReference za = tutorial_zeropoint(w);
    const QuantizedTensor qz = quantize(w, torch_tutorial_config(Scheme::kZeroPoint));
    EXPECT_TRUE(torch::equal(qz.codes.to(torch::kFloat32), za.codes));
    EXPECT_TRUE(torch::equal(dequantize(qz), za.dequantized));
    const NumpyReference aa = tutorial_absmax(w);
    const QuantizedTensor qa = quantize(w, torch_tutorial_config(Scheme::kAbsmax));
    EXPECT_TRUE(torch::equal(qa.codes.to(torch::kFloat32), aa.codes));
    EXPECT_TRUE(torch::equal(dequantize(qa), aa.dequantized));
  }
}

// (5) and (6): unsigned and signed zero-point codes dequantize identically,
// codes differ by exactly 2^(b-1).
TEST(ZeroPointConventionsTest, UnsignedAndSignedCodesDequantizeIdentically) {
  torch::manual_seed(3);
  for (int bits = kMinBits; bits <= kMaxBits; ++bits) {
    for (const auto granularity : {Granularity::kPerTensor, Granularity::kPerChannel}) {
      const torch::Tensor w = torch::randn({32, 64}) * 0.1 + 0.03;
      QuantConfig unsigned_codes = numpy_seed_config(Scheme::kZeroPoint, bits);
      unsigned_codes.granularity = granularity;
      QuantConfig signed_codes = unsigned_codes;
      signed_codes.zero_point_codes = ZeroPointCodes::kSigned;
      const QuantizedTensor qu = quantize(w, unsigned_codes);
      const QuantizedTensor qs = quantize(w, signed_codes);
      const int shift = 1 << (bits - 1);
      EXPECT_TRUE(torch::equal(qu.codes - shift, qs.codes)) << "bits " << bits;
      EXPECT_TRUE(torch::equal(qu.params.zero_point - shift, qs.params.zero_point));
      EXPECT_TRUE(torch::equal(dequantize(qu), dequantize(qs))) << "bits " << bits;
      EXPECT_GE(qs.codes.min().item<int>(), -shift);
      EXPECT_LE(qs.codes.max().item<int>(), shift - 1);
    }
  }
}

}  // namespace
}  // namespace quantppl
