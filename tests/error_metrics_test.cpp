#include <cmath>
#include <limits>

#include <gtest/gtest.h>
#include <torch/torch.h>

#include "quantppl/error.h"
#include "quantppl/error_metrics.h"

namespace quantppl {
namespace {

TEST(ErrorMetricsTest, HandComputedValues) {
  const torch::Tensor x = torch::tensor({1.0, -2.0, 3.0, 0.0});
  const torch::Tensor y = torch::tensor({1.5, -2.0, 2.0, 0.0});
  const ErrorMetrics m = error_metrics(x, y);
  EXPECT_EQ(m.count, 4);
  EXPECT_DOUBLE_EQ(m.mse(), (0.25 + 1.0) / 4);
  EXPECT_DOUBLE_EQ(m.max_abs_error, 1.0);
  EXPECT_DOUBLE_EQ(m.sqnr_db(), 10 * std::log10(14.0 / 1.25));
}

TEST(ErrorMetricsTest, ExactReconstructionHasInfiniteSqnr) {
  const torch::Tensor x = torch::randn({10});
  EXPECT_EQ(error_metrics(x, x).mse(), 0.0);
  EXPECT_EQ(error_metrics(x, x).sqnr_db(), std::numeric_limits<double>::infinity());
  EXPECT_EQ(error_metrics(torch::zeros({0}), torch::zeros({0})).mse(), 0.0);
}

TEST(ErrorMetricsTest, MergeWeighsByElementCountNotByTensor) {
  const torch::Tensor a = torch::tensor({1.0f, 1.0f, 1.0f});
  const torch::Tensor b = torch::tensor({2.0f});
  ErrorMetrics m = error_metrics(a, torch::zeros({3}));
  m.merge(error_metrics(b, torch::zeros({1})));
  EXPECT_DOUBLE_EQ(m.mse(), (3.0 + 4.0) / 4);
  EXPECT_DOUBLE_EQ(m.max_abs_error, 2.0);
  const ErrorMetrics whole = error_metrics(torch::cat({a, b}), torch::zeros({4}));
  EXPECT_DOUBLE_EQ(m.mse(), whole.mse());
  EXPECT_DOUBLE_EQ(m.sqnr_db(), whole.sqnr_db());
}

TEST(ErrorMetricsTest, FusedPassMatchesFloat64TensorOpsAcrossTasksAndLayouts) {
  // 300 x 700 = 210,000 elements: several 65,536-element tasks and a partial one.
  torch::manual_seed(5);
  const torch::Tensor x = torch::randn({300, 700});
  const torch::Tensor r = x + torch::randn({300, 700}) * 0.01;
  const torch::Tensor x64 = x.to(torch::kFloat64);
  const torch::Tensor d64 = x64 - r.to(torch::kFloat64);
  const double sse = d64.square().sum().item<double>();
  const double sss = x64.square().sum().item<double>();
  const double max_abs = d64.abs().max().item<double>();
  for (const bool transposed : {false, true}) {
    const ErrorMetrics m = transposed ? error_metrics(x.t(), r.t()) : error_metrics(x, r);
    EXPECT_EQ(m.count, 210000);
    EXPECT_NEAR(m.sum_squared_error, sse, 1e-12 * sse);
    EXPECT_NEAR(m.sum_squared_signal, sss, 1e-12 * sss);
    EXPECT_EQ(m.max_abs_error, max_abs);
  }
  // float64 inputs take the same loop.
  const ErrorMetrics m64 = error_metrics(x64, r.to(torch::kFloat64));
  EXPECT_NEAR(m64.sum_squared_error, sse, 1e-12 * sse);
  // A NaN in the reconstruction shows in the error, not silently dropped.
  torch::Tensor bad = r.clone();
  bad.index_put_({299, 699}, std::numeric_limits<float>::quiet_NaN());
  EXPECT_TRUE(std::isnan(error_metrics(x, bad).sum_squared_error));
  EXPECT_TRUE(std::isnan(error_metrics(x, bad).max_abs_error));
}

TEST(ErrorMetricsTest, ShapeMismatchIsAnError) {
  EXPECT_THROW(error_metrics(torch::zeros({2, 3}), torch::zeros({3, 2})), UsageError);
}

}  // namespace
}  // namespace quantppl
