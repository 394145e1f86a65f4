// Properties of the quantizer over scheme x bits x granularity x range, plus
// degenerate inputs and error messages.
#include <cmath>
#include <limits>
#include <string>
#include <tuple>

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "quantppl/error.h"
#include "quantppl/error_metrics.h"
#include "quantppl/quantize.h"

namespace quantppl {
namespace {

using ::testing::HasSubstr;

// Weights shaped like a Linear layer, with a few heavy outliers as real
// language models have.
torch::Tensor weights(int64_t rows, int64_t cols, uint64_t seed) {
  torch::manual_seed(seed);
  torch::Tensor w = torch::randn({rows, cols}) * 0.05;
  w.view({-1}).index_put_({torch::randint(w.numel(), {std::max<int64_t>(1, w.numel() / 500)})},
                          torch::randn({std::max<int64_t>(1, w.numel() / 500)}) * 0.5);
  return w;
}

struct Case {
  Scheme scheme;
  int bits;
  Granularity granularity;
  RangeMethod range;
};

QuantConfig config_of(const Case& c) {
  QuantConfig config = numpy_seed_config(c.scheme, c.bits);
  config.granularity = c.granularity;
  config.group_size = 32;
  config.range = c.range;
  config.percentile = 99.9;
  return config;
}

std::string case_name(const ::testing::TestParamInfo<Case>& info) {
  const QuantConfig c = config_of(info.param);
  std::string name = to_string(c.scheme) + std::to_string(c.bits) + "_" +
                     to_string(c.granularity, c.group_size) + "_" + to_string(c.range, 99);
  return name;
}

class QuantizePropertyTest : public ::testing::TestWithParam<Case> {};

TEST_P(QuantizePropertyTest, CodesStayInRange) {
  const QuantConfig config = config_of(GetParam());
  const QuantizedTensor q = quantize(weights(48, 128, 1), config);
  const CodeRange range = code_range(config);
  EXPECT_GE(q.codes.min().item<int64_t>(), range.qmin);
  EXPECT_LE(q.codes.max().item<int64_t>(), range.qmax);
  EXPECT_EQ(q.codes.scalar_type(), torch::kInt32);
  EXPECT_EQ(q.codes.sizes(), torch::IntArrayRef({48, 128}));
}

TEST_P(QuantizePropertyTest, UnclippedErrorIsAtMostHalfAStep) {
  const QuantConfig config = config_of(GetParam());
  const torch::Tensor w = weights(48, 128, 2);
  const QuantizedTensor q = quantize(w, config);
  const torch::Tensor w_hat = dequantize(q);
  const CodeRange range = code_range(config);
  const int64_t blocks = q.params.scale.size(0);
  const auto per_element = [&](const torch::Tensor& p) {
    return p.expand({blocks, w.numel() / blocks}).reshape(w.sizes()).to(torch::kFloat64);
  };
  const torch::Tensor scale = per_element(q.params.scale);
  // A value is unclipped when its unrounded code x / s + z lies in the range.
  const torch::Tensor raw = w.to(torch::kFloat64) / scale + per_element(q.params.zero_point);
  const torch::Tensor inside = (raw >= range.qmin - 0.5) & (raw <= range.qmax + 0.5);
  const torch::Tensor error = (w - w_hat).abs().to(torch::kFloat64);
  // Half a step, plus float32 rounding of the division and the product.
  const torch::Tensor bound = scale * 0.5 * (1 + 1e-5) + w.abs().to(torch::kFloat64) * 1e-6;
  EXPECT_TRUE((error.masked_select(inside) <= bound.masked_select(inside)).all().item<bool>());
  if (config.range == RangeMethod::kMinMax) {
    EXPECT_TRUE(inside.all().item<bool>());
  }
}

TEST_P(QuantizePropertyTest, FakeQuantizingTwiceKeepsTheCodes) {
  const QuantConfig config = config_of(GetParam());
  if (config.range != RangeMethod::kMinMax) GTEST_SKIP() << "a clipped range moves with its data";
  const torch::Tensor once = fake_quantize(weights(48, 128, 3), config);
  const torch::Tensor twice = fake_quantize(once, config);
  // The grid of `once` is the grid it was built on: the same codes come back,
  // and the values agree to float rounding of s (a few ulps: s is recomputed
  // from the reconstructed range, e.g. (hi' - lo') / L, see quantize.h).
  EXPECT_TRUE(torch::equal(quantize(once, config).codes, quantize(twice, config).codes));
  EXPECT_TRUE(torch::allclose(once, twice, /*rtol=*/5e-7, /*atol=*/0));
}

TEST_P(QuantizePropertyTest, InPlaceEqualsOutOfPlaceAndDequantizeOfQuantize) {
  const QuantConfig config = config_of(GetParam());
  const torch::Tensor w = weights(48, 128, 4);
  torch::Tensor in_place = w.clone();
  fake_quantize_(in_place, config, "w");
  EXPECT_TRUE(torch::equal(in_place, fake_quantize(w, config)));
  EXPECT_TRUE(torch::equal(in_place, dequantize(quantize(w, config))));
}

TEST_P(QuantizePropertyTest, ConstantBlocksReconstructExactly) {
  const QuantConfig config = config_of(GetParam());
  for (const float c : {0.0f, 0.3f, -0.7f, 1e-30f, -3e30f, 12345.678f}) {
    const torch::Tensor w = torch::full({4, 64}, c);
    EXPECT_TRUE(torch::equal(fake_quantize(w, config), w)) << "c = " << c;
  }
  // One constant row among varied ones, one all-zero group.
  torch::Tensor w = weights(8, 64, 5);
  w[2].fill_(0.25f);
  w[5].slice(0, 0, 32).zero_();
  const torch::Tensor w_hat = fake_quantize(w, config);
  EXPECT_TRUE(torch::isfinite(w_hat).all().item<bool>());
  if (config.granularity != Granularity::kPerTensor) {
    EXPECT_TRUE(torch::equal(w_hat[2], w[2]));
  }
  if (config.granularity == Granularity::kPerGroup) {
    EXPECT_TRUE(torch::equal(w_hat[5].slice(0, 0, 32), w[5].slice(0, 0, 32)));
  }
}

TEST_P(QuantizePropertyTest, ZeroIsExactlyRepresentable) {
  const QuantConfig config = config_of(GetParam());
  if (config.range == RangeMethod::kPercentile && config.scheme == Scheme::kZeroPoint) {
    GTEST_SKIP() << "a clipped asymmetric range need not contain 0";
  }
  torch::Tensor w = weights(16, 64, 6);
  w.index_put_({torch::indexing::Slice(), 5}, 0.0f);
  EXPECT_TRUE((fake_quantize(w, config).select(1, 5) == 0).all().item<bool>());
}

TEST_P(QuantizePropertyTest, EmptyTensorQuantizesToEmpty) {
  QuantConfig config = config_of(GetParam());
  const torch::Tensor empty = torch::zeros({0, 64});
  const QuantizedTensor q = quantize(empty, config);
  EXPECT_EQ(q.codes.numel(), 0);
  EXPECT_EQ(fake_quantize(empty, config).numel(), 0);
  EXPECT_EQ(dequantize(q).numel(), 0);
}

std::vector<Case> all_cases() {
  std::vector<Case> cases;
  for (const auto scheme : {Scheme::kAbsmax, Scheme::kZeroPoint}) {
    for (int bits = kMinBits; bits <= kMaxBits; ++bits) {
      for (const auto g : {Granularity::kPerTensor, Granularity::kPerChannel, Granularity::kPerGroup}) {
        for (const auto r : {RangeMethod::kMinMax, RangeMethod::kPercentile, RangeMethod::kMse}) {
          cases.push_back({scheme, bits, g, r});
        }
      }
    }
  }
  return cases;
}

INSTANTIATE_TEST_SUITE_P(AllSchemes, QuantizePropertyTest, ::testing::ValuesIn(all_cases()), case_name);

// ---- granularity equivalences ----

TEST(GranularityTest, GroupOfWholeRowEqualsPerChannel) {
  const torch::Tensor w = weights(24, 96, 7);
  for (const auto scheme : {Scheme::kAbsmax, Scheme::kZeroPoint}) {
    for (const auto range : {RangeMethod::kMinMax, RangeMethod::kPercentile, RangeMethod::kMse}) {
      QuantConfig channel = numpy_seed_config(scheme, 4);
      channel.range = range;
      channel.granularity = Granularity::kPerChannel;
      QuantConfig group = channel;
      group.granularity = Granularity::kPerGroup;
      group.group_size = 96;
      EXPECT_TRUE(torch::equal(fake_quantize(w, channel), fake_quantize(w, group)));
    }
  }
}

TEST(GranularityTest, PerChannelOfOneRowEqualsPerTensor) {
  const torch::Tensor w = weights(1, 256, 8);
  for (const auto scheme : {Scheme::kAbsmax, Scheme::kZeroPoint}) {
    QuantConfig tensor = numpy_seed_config(scheme, 3);
    QuantConfig channel = tensor;
    channel.granularity = Granularity::kPerChannel;
    EXPECT_TRUE(torch::equal(fake_quantize(w, tensor), fake_quantize(w, channel)));
  }
}

TEST(GranularityTest, PerChannelScalesFollowEachRowsAbsmax) {
  const torch::Tensor w = weights(6, 32, 9);
  QuantConfig config = numpy_seed_config(Scheme::kAbsmax, 8);
  config.granularity = Granularity::kPerChannel;
  const QParams p = choose_qparams(w, config);
  ASSERT_EQ(p.scale.sizes(), torch::IntArrayRef({6, 1}));
  for (int r = 0; r < 6; ++r) {
    EXPECT_EQ(p.scale[r][0].item<float>(), w[r].abs().max().item<float>() / 127.0f);
  }
}

TEST(GranularityTest, GroupsRunAlongTheInputDimension) {
  // Row 0's second group holds a large value; only that group's scale grows.
  torch::Tensor w = torch::ones({2, 8}) * 0.1f;
  w[0][5] = 10.0f;
  QuantConfig config = numpy_seed_config(Scheme::kAbsmax, 8);
  config.granularity = Granularity::kPerGroup;
  config.group_size = 4;
  const QParams p = choose_qparams(w, config);
  ASSERT_EQ(p.scale.size(0), 4);
  EXPECT_EQ(p.scale[1][0].item<float>(), 10.0f / 127.0f);
  EXPECT_EQ(p.scale[0][0].item<float>(), 0.1f);  // a constant group: s = |c|
  EXPECT_EQ(p.scale[2][0].item<float>(), 0.1f);
}

TEST(GranularityTest, GroupSizeThatDoesNotDivideTheRowIsAnErrorNamingTheTensor) {
  QuantConfig config = numpy_seed_config(Scheme::kAbsmax, 4);
  config.granularity = Granularity::kPerGroup;
  config.group_size = 64;
  try {
    fake_quantize(torch::randn({4, 100}), config, "decoder.block.0.layer.1.EncDecAttention.q");
    FAIL() << "expected UsageError";
  } catch (const UsageError& e) {
    EXPECT_THAT(e.what(), HasSubstr("group size 64 does not divide the row length 100"));
    EXPECT_THAT(e.what(), HasSubstr("decoder.block.0.layer.1.EncDecAttention.q"));
  }
}

// ---- range methods ----

TEST(RangeTest, MseSearchIsNeverWorseThanMinMax) {
  for (const auto scheme : {Scheme::kAbsmax, Scheme::kZeroPoint}) {
    for (int bits = kMinBits; bits <= kMaxBits; ++bits) {
      for (const auto g : {Granularity::kPerTensor, Granularity::kPerChannel, Granularity::kPerGroup}) {
        const torch::Tensor w = weights(32, 128, 100 + bits);
        QuantConfig minmax = numpy_seed_config(scheme, bits);
        minmax.granularity = g;
        minmax.group_size = 64;
        QuantConfig mse = minmax;
        mse.range = RangeMethod::kMse;
        const double e_minmax = error_metrics(w, fake_quantize(w, minmax)).mse();
        const double e_mse = error_metrics(w, fake_quantize(w, mse)).mse();
        EXPECT_LE(e_mse, e_minmax) << to_string(scheme) << bits << to_string(g, 64);
      }
    }
  }
}

TEST(RangeTest, MseSearchClipsOutliersAtLowBits) {
  // At 3 bits a single outlier 20 sigma out wastes most of the grid: the
  // search must find a clearly smaller range and a clearly smaller error.
  torch::manual_seed(12);
  torch::Tensor w = torch::randn({4096});
  w[0] = 20.0f;
  QuantConfig minmax = numpy_seed_config(Scheme::kAbsmax, 3);
  QuantConfig mse = minmax;
  mse.range = RangeMethod::kMse;
  EXPECT_LT(choose_qparams(w, mse).scale.item<float>(), 0.7f * choose_qparams(w, minmax).scale.item<float>());
  EXPECT_LT(error_metrics(w, fake_quantize(w, mse)).mse(), 0.5 * error_metrics(w, fake_quantize(w, minmax)).mse());
}

TEST(RangeTest, AbsmaxPercentileUsesThePercentileOfMagnitudes) {
  // |x| = 1..100: numpy.percentile(range(1, 101), 90) = 90.1.
  const torch::Tensor x = torch::arange(1, 101, torch::kFloat64) * torch::where(torch::arange(100) % 2 == 0, 1.0, -1.0);
  QuantConfig config = numpy_seed_config(Scheme::kAbsmax, 8);
  config.range = RangeMethod::kPercentile;
  config.percentile = 90;
  EXPECT_DOUBLE_EQ(choose_qparams(x, config).scale.item<double>(), 90.1 / 127);
}

TEST(RangeTest, PercentileHundredEqualsMinMax) {
  const torch::Tensor w = weights(16, 64, 13);
  for (const auto scheme : {Scheme::kAbsmax, Scheme::kZeroPoint}) {
    QuantConfig minmax = numpy_seed_config(scheme, 5);
    minmax.granularity = Granularity::kPerChannel;
    QuantConfig p100 = minmax;
    p100.range = RangeMethod::kPercentile;
    p100.percentile = 100;
    EXPECT_TRUE(torch::equal(fake_quantize(w, minmax), fake_quantize(w, p100)));
  }
}

// ---- input checks ----

TEST(InputTest, BitsOutsideTwoToEightAreRejected) {
  for (const int bits : {-1, 0, 1, 9, 16}) {
    QuantConfig config = numpy_seed_config(Scheme::kAbsmax, bits);
    try {
      fake_quantize(torch::randn({4}), config);
      FAIL() << "bits " << bits << " accepted";
    } catch (const UsageError& e) {
      EXPECT_THAT(e.what(), HasSubstr("bits must be in [2, 8], got " + std::to_string(bits)));
    }
  }
}

TEST(InputTest, PercentileOutsideRangeAndBadGroupSizeAreRejected) {
  QuantConfig config = numpy_seed_config(Scheme::kZeroPoint, 8);
  config.range = RangeMethod::kPercentile;
  for (const double p : {0.0, -5.0, 100.5, std::nan("")}) {
    config.percentile = p;
    EXPECT_THROW(validate(config), UsageError) << p;
  }
  config = numpy_seed_config(Scheme::kZeroPoint, 8);
  config.granularity = Granularity::kPerGroup;
  config.group_size = 0;
  EXPECT_THROW(validate(config), UsageError);
}

TEST(InputTest, NanOrInfIsAnErrorNamingTheTensor) {
  for (const float bad : {std::numeric_limits<float>::quiet_NaN(), std::numeric_limits<float>::infinity()}) {
    torch::Tensor w = torch::randn({3, 4});
    w[1][2] = bad;
    try {
      fake_quantize(w, numpy_seed_config(Scheme::kAbsmax, 8), "encoder.block.1.layer.0.SelfAttention.k");
      FAIL();
    } catch (const DataError& e) {
      EXPECT_THAT(e.what(), HasSubstr("'encoder.block.1.layer.0.SelfAttention.k' contains NaN or Inf"));
      EXPECT_THAT(e.what(), HasSubstr("flat index 6"));
    }
  }
}

TEST(InputTest, IntegerTensorsAreRejected) {
  EXPECT_THROW(fake_quantize(torch::ones({3}, torch::kInt64), numpy_seed_config(Scheme::kAbsmax, 8)), DataError);
}

TEST(InputTest, ExtremeMagnitudesStayFinite) {
  const float big = std::numeric_limits<float>::max();
  const float tiny = std::numeric_limits<float>::denorm_min();
  const torch::Tensor x = torch::tensor({-big, big, 0.0f, 1.0f, -1.0f});
  const torch::Tensor t = torch::tensor({tiny, 0.0f, -tiny, 2 * tiny});
  for (const auto scheme : {Scheme::kAbsmax, Scheme::kZeroPoint}) {
    for (const auto form : {ScaleForm::kStep, ScaleForm::kInverseStep}) {
      QuantConfig config = numpy_seed_config(scheme, 8);
      config.scale_form = form;
      EXPECT_TRUE(torch::isfinite(fake_quantize(x, config)).all().item<bool>()) << x;
      const torch::Tensor t_hat = fake_quantize(t, config);
      EXPECT_TRUE(torch::isfinite(t_hat).all().item<bool>());
      EXPECT_LE((t_hat - t).abs().max().item<float>(), 2 * tiny);
    }
  }
}

TEST(InputTest, InPlaceRejectsNonContiguousTensors) {
  torch::Tensor w = torch::randn({8, 8}).t();
  EXPECT_THROW(fake_quantize_(w, numpy_seed_config(Scheme::kAbsmax, 8), "w"), UsageError);
}

TEST(CodeRangeTest, RangesFollowTheSeeds) {
  EXPECT_EQ(code_range(numpy_seed_config(Scheme::kAbsmax, 8)).qmin, -127);
  EXPECT_EQ(code_range(numpy_seed_config(Scheme::kAbsmax, 8)).qmax, 127);
  EXPECT_EQ(code_range(numpy_seed_config(Scheme::kAbsmax, 2)).qmax, 1);
  EXPECT_EQ(code_range(numpy_seed_config(Scheme::kZeroPoint, 4)).qmin, 0);
  EXPECT_EQ(code_range(numpy_seed_config(Scheme::kZeroPoint, 4)).qmax, 15);
  EXPECT_EQ(code_range(torch_tutorial_config(Scheme::kZeroPoint)).qmin, -128);
  EXPECT_EQ(code_range(torch_tutorial_config(Scheme::kZeroPoint)).qmax, 127);
}

}  // namespace
}  // namespace quantppl
