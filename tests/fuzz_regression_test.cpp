// Inputs found by the libFuzzer targets in fuzz/ (scripts/fuzz.sh), kept as regression tests.
// Each names the target that found it; docs/reliability.md lists them.
#include <cmath>
#include <limits>
#include <string>

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "quantppl/error.h"
#include "quantppl/model_metadata.h"
#include "quantppl/quantize.h"

namespace quantppl {
namespace {

using ::testing::HasSubstr;

// metadata_fuzz: a number beyond double's range made nlohmann throw out_of_range, which escaped
// parse_model_metadata as a non-quantppl exception (the CLI would report an internal error).
TEST(FuzzRegressionTest, MetadataNumberOverflowIsDataError) {
  for (const std::string& text : {std::string("2E028694016"), std::string(R"({"format_version": 1e999})")}) {
    try {
      parse_model_metadata(text, "model 'x.pt': quantppl.json");
      FAIL() << "expected DataError for " << text;
    } catch (const DataError& e) {
      EXPECT_THAT(e.what(), HasSubstr("model 'x.pt': quantppl.json: not valid JSON"));
    }
  }
  EXPECT_THROW(metadata_with_variant("[1e999]", "absmax:8"), DataError);
}

// quantize_fuzz: a constant block near FLT_MAX (here a group of one element) reconstructs exactly
// with s = |c|, but the overflow guard, applied after the constant-block rule, shrank its scale
// and the single code then dequantized to inf.
TEST(FuzzRegressionTest, ConstantBlockNearFloatMaxReconstructsExactly) {
  const float big = 3.4028e38f;
  const torch::Tensor x = torch::tensor({0.0f, 2.3510e-38f, big, -7.7823e5f, -big}, torch::kFloat32);
  for (const Scheme scheme : {Scheme::kZeroPoint, Scheme::kAbsmax}) {
    QuantConfig config = numpy_seed_config(scheme, 3);
    config.granularity = Granularity::kPerGroup;
    config.group_size = 1;
    const torch::Tensor x_hat = fake_quantize(x, config, "w");
    EXPECT_TRUE(torch::isfinite(x_hat).all().item<bool>()) << x_hat;
    EXPECT_TRUE(torch::equal(x_hat, x)) << x_hat;
  }
}

// quantize_fuzz: in the torch tutorial's arithmetic a constant subnormal block got k = 1/|c| = inf.
TEST(FuzzRegressionTest, InverseStepConstantSubnormalBlockHasFiniteScale) {
  const torch::Tensor x = torch::tensor({-9.154821e-21f, 1.1478666e-39f}, torch::kFloat32).reshape({2, 1});
  QuantConfig config = torch_tutorial_config(Scheme::kAbsmax);
  config.bits = 4;
  config.granularity = Granularity::kPerChannel;
  const QuantizedTensor q = quantize(x, config, "w");
  EXPECT_TRUE(torch::isfinite(q.params.scale).all().item<bool>()) << q.params.scale;
  EXPECT_TRUE(torch::isfinite(dequantize(q)).all().item<bool>());
}

// quantize_fuzz: the same root cause in the torch tutorial's arithmetic: a float32 constant
// block near FLT_MAX (k = 1/|c| subnormal) had its k shrunk by the overflow guard and dequantized
// to inf.
TEST(FuzzRegressionTest, InverseStepConstantBlockNearFloatMaxStaysFinite) {
  const torch::Tensor x = torch::tensor({4.3e-10f, 3.38e38f}, torch::kFloat32).reshape({2, 1});
  QuantConfig config = torch_tutorial_config(Scheme::kZeroPoint);
  config.bits = 3;
  config.granularity = Granularity::kPerChannel;
  const torch::Tensor x_hat = fake_quantize(x, config, "w");
  EXPECT_TRUE(torch::isfinite(x_hat).all().item<bool>()) << x_hat;
}

// quantize_fuzz: a zero-width clipping range near FLT_MAX (the 50th percentile of
// {2e-38, 3.39e38}) got s = |lo| and z = qmin - 1, so code qmax dequantized to inf. Fixed by
// widening a zero-width range to include 0 (quantize.h, "Constant blocks").
TEST(FuzzRegressionTest, ZeroWidthRangeNearFloatMaxStaysFinite) {
  const torch::Tensor x = torch::tensor({2.0895e-38f, 3.3896e38f}, torch::kFloat32);
  QuantConfig config = numpy_seed_config(Scheme::kZeroPoint, 4);
  config.range = RangeMethod::kPercentile;
  config.percentile = 50.0;
  const torch::Tensor x_hat = fake_quantize(x, config, "w");
  EXPECT_TRUE(torch::isfinite(x_hat).all().item<bool>()) << x_hat;
}

}  // namespace
}  // namespace quantppl
