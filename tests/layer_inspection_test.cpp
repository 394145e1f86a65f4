// Layer inspection against independent computations: torch's own statistics,
// direct counts of clipped weights, error_metrics of fake_quantize, and
// numpy-style medians through torch::quantile.
#include <cmath>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>
#include <torch/torch.h>

#include "fixture_support.h"
#include "quantppl/contract_model.h"
#include "quantppl/error.h"
#include "quantppl/layer_inspection.h"
#include "quantppl/quantize.h"
#include "quantppl/variant_spec.h"

namespace quantppl {
namespace {

using testing::fixture;

constexpr double kStatRelTol = 1e-9;  // float64 sums in two different orders

void expect_rel_near(double actual, double expected, double rel, const std::string& what) {
  EXPECT_NEAR(actual, expected, rel * std::max(1.0, std::abs(expected))) << what;
}

TEST(LayerInspectionTest, StatsEqualTorchsOwnOnEveryFixtureLayer) {
  ContractModel model = ContractModel::load(fixture("tiny.pt"));
  for (const LinearLayer& layer : model.linear_layers()) {
    const WeightStats s = weight_stats(layer.weight, layer.name);
    const torch::Tensor x = layer.weight.to(torch::kFloat64);
    EXPECT_EQ(s.parameters, layer.weight.numel());
    EXPECT_EQ(s.min, layer.weight.min().item<float>()) << layer.name;
    EXPECT_EQ(s.max, layer.weight.max().item<float>()) << layer.name;
    EXPECT_EQ(s.absmax, layer.weight.abs().max().item<float>()) << layer.name;
    const double std = x.std(/*unbiased=*/false).item<double>();
    expect_rel_near(s.stddev, std, kStatRelTol, layer.name);
    // Excess kurtosis as E[((x - mu) / sigma)^4] - 3, standardized first (a different order of operations).
    const double kurt = ((x - x.mean()) / std).pow(4).mean().item<double>() - 3.0;
    expect_rel_near(s.kurtosis, kurt, kStatRelTol, layer.name);
  }
}

TEST(LayerInspectionTest, KurtosisOfKnownDistributions) {
  // A fine uniform grid: excess kurtosis -> -6/5; a constant: 0 by definition; a symmetric two-point: -2.
  const torch::Tensor uniform = torch::linspace(-1, 1, 100001, torch::kFloat32);
  EXPECT_NEAR(weight_stats(uniform).kurtosis, -1.2, 1e-4);
  EXPECT_EQ(weight_stats(torch::full({4, 4}, 0.5f)).kurtosis, 0.0);
  EXPECT_NEAR(weight_stats(torch::tensor({-1.0f, 1.0f, -1.0f, 1.0f})).kurtosis, -2.0, 1e-12);
  EXPECT_THROW(weight_stats(torch::empty({0, 4})), DataError);
}

TEST(LayerInspectionTest, OutlierFractionCountsPlantedOutliers) {
  torch::manual_seed(7);
  torch::Tensor w = torch::randn({200, 100});
  w.view({-1}).index_put_({torch::arange(0, 20000, 1000)}, 50.0f);  // 20 planted outliers
  const WeightStats s = weight_stats(w);
  const torch::Tensor x = w.to(torch::kFloat64);
  const double sigma = x.std(/*unbiased=*/false).item<double>();
  const int64_t direct = (x - x.mean()).abs().gt(6 * sigma).sum().item<int64_t>();
  EXPECT_GE(direct, 20);
  EXPECT_DOUBLE_EQ(s.outlier_fraction_6sigma, static_cast<double>(direct) / 20000.0);
}

TEST(LayerInspectionTest, MinMaxRangesClipNothing) {
  ContractModel model = ContractModel::load(fixture("tiny.pt"));
  for (const char* spec : {"absmax:8", "absmax:2:channel", "zeropoint:4", "zeropoint:3:group32"}) {
    for (const LinearLayer& layer : model.linear_layers()) {
      EXPECT_EQ(variant_damage(layer.weight, parse_variant(spec).config, layer.name).clipped_fraction, 0.0)
          << spec << " " << layer.name;
    }
  }
}

TEST(LayerInspectionTest, PercentileClippingMatchesADirectCount) {
  ContractModel model = ContractModel::load(fixture("tiny.pt"));
  const LinearLayer layer = model.linear_layers().front();
  for (const char* spec : {"absmax:8:tensor:p99", "zeropoint:4:tensor:p95", "absmax:4:channel:p90"}) {
    const QuantConfig config = parse_variant(spec).config;
    const QParams p = choose_qparams(layer.weight, config, layer.name);
    const CodeRange codes = code_range(config);
    // In float64, per block: clipped iff the unrounded code is outside [qmin - 0.5, qmax + 0.5].
    const torch::Tensor blocks = layer.weight.to(torch::kFloat64).view({p.scale.size(0), -1});
    const torch::Tensor u = blocks / p.scale.to(torch::kFloat64) + p.zero_point.to(torch::kFloat64);
    const int64_t direct = (u.lt(codes.qmin - 0.5) | u.gt(codes.qmax + 0.5)).sum().item<int64_t>();
    const VariantDamage d = variant_damage(layer.weight, config, layer.name);
    EXPECT_GT(direct, 0) << spec;
    EXPECT_NEAR(d.clipped_fraction * layer.weight.numel(), static_cast<double>(direct), 0.5) << spec;
    // Property: a clipped weight is off by more than half a step, an unclipped one by at most half a step.
    const torch::Tensor w_hat = fake_quantize(layer.weight, config, layer.name);
    const torch::Tensor err = (layer.weight - w_hat).abs().view({p.scale.size(0), -1});
    const torch::Tensor half_step = p.scale / 2;
    const int64_t beyond = err.gt(half_step * (1 + 1e-4)).sum().item<int64_t>();
    EXPECT_NEAR(static_cast<double>(beyond), static_cast<double>(direct), 0.01 * direct + 1) << spec;
  }
}

TEST(LayerInspectionTest, ErrorEqualsErrorMetricsOfFakeQuantize) {
  ContractModel model = ContractModel::load(fixture("tiny.pt"));
  for (const char* spec : {"absmax:8", "zeropoint:4:group32:mse", "absmax:3:channel:p99.9"}) {
    const QuantConfig config = parse_variant(spec).config;
    for (const LinearLayer& layer : model.linear_layers()) {
      const VariantDamage d = variant_damage(layer.weight, config, layer.name);
      const ErrorMetrics e = error_metrics(layer.weight, fake_quantize(layer.weight, config, layer.name));
      EXPECT_EQ(d.error.sum_squared_error, e.sum_squared_error) << spec << " " << layer.name;
      EXPECT_EQ(d.error.max_abs_error, e.max_abs_error) << spec << " " << layer.name;
      EXPECT_EQ(d.error.sqnr_db(), e.sqnr_db()) << spec << " " << layer.name;
    }
  }
}

TEST(LayerInspectionTest, ScaleAndZeroPointSummaries) {
  ContractModel model = ContractModel::load(fixture("tiny.pt"));
  const LinearLayer layer = model.linear_layers().front();
  const QuantConfig per_tensor = parse_variant("zeropoint:8").config;
  const QParams p = choose_qparams(layer.weight, per_tensor);
  const VariantDamage t = variant_damage(layer.weight, per_tensor);
  EXPECT_EQ(t.blocks, 1);
  EXPECT_EQ(t.scale.min, p.scale.item<float>());
  EXPECT_EQ(t.scale.median, p.scale.item<float>());
  EXPECT_EQ(t.zero_point.max, p.zero_point.item<float>());

  const QuantConfig per_group = parse_variant("zeropoint:4:group32").config;
  const QParams g = choose_qparams(layer.weight, per_group);
  const VariantDamage d = variant_damage(layer.weight, per_group);
  const torch::Tensor s = g.scale.to(torch::kFloat64).view({-1});
  EXPECT_EQ(d.blocks, s.numel());
  EXPECT_EQ(d.scale.min, s.min().item<double>());
  EXPECT_EQ(d.scale.max, s.max().item<double>());
  // torch::quantile interpolates linearly, as numpy.median does for an even count.
  EXPECT_DOUBLE_EQ(d.scale.median, torch::quantile(s, 0.5).item<double>());
  EXPECT_DOUBLE_EQ(d.zero_point.median, torch::quantile(g.zero_point.to(torch::kFloat64).view({-1}), 0.5).item<double>());
}

TEST(LayerInspectionTest, RunInspectSummaryMergesEveryLayer) {
  InspectOptions options;
  options.model_path = fixture("tiny.pt");
  options.variant = parse_variant("absmax:4:channel");
  const InspectionReport r = run_inspect(options);
  ContractModel model = ContractModel::load(fixture("tiny.pt"));
  const std::vector<LinearLayer> layers = model.linear_layers();
  ASSERT_EQ(r.layers.size(), layers.size());
  ErrorMetrics total;
  int64_t parameters = 0;
  std::string worst;
  double worst_db = INFINITY;
  for (size_t i = 0; i < layers.size(); ++i) {
    EXPECT_EQ(r.layers[i].name, layers[i].name);
    EXPECT_EQ(r.layers[i].shape, layers[i].weight.sizes().vec());
    const ErrorMetrics e = error_metrics(layers[i].weight, fake_quantize(layers[i].weight, options.variant.config));
    total.merge(e);
    parameters += layers[i].weight.numel();
    if (e.sqnr_db() < worst_db) {
      worst_db = e.sqnr_db();
      worst = layers[i].name;
    }
  }
  EXPECT_EQ(r.summary.layers, static_cast<int64_t>(layers.size()));
  EXPECT_EQ(r.summary.parameters, parameters);
  EXPECT_DOUBLE_EQ(r.summary.error.mse(), total.mse());
  EXPECT_DOUBLE_EQ(r.summary.error.sqnr_db(), total.sqnr_db());
  EXPECT_EQ(r.summary.worst_layer, worst);
  EXPECT_EQ(r.summary.clipped_fraction, 0.0);
}

TEST(LayerInspectionTest, JsonHasTheIssuesFieldNames) {
  InspectOptions options;
  options.model_path = fixture("tiny.pt");
  options.variant = parse_variant("absmax:8");
  options.include = "lm_head";
  const nlohmann::json j = nlohmann::json::parse(format_inspection_json(run_inspect(options)));
  for (const char* key : {"model", "model_sha256", "variant", "layers", "summary"}) EXPECT_TRUE(j.contains(key)) << key;
  ASSERT_EQ(j["layers"].size(), 1u);
  const nlohmann::json& row = j["layers"][0];
  for (const char* key : {"name", "shape", "scale", "zero_point", "clipped_fraction", "mse", "max_abs_error", "sqnr_db",
                          "parameters", "min", "max", "absmax", "std", "kurtosis", "outlier_fraction_6sigma"}) {
    EXPECT_TRUE(row.contains(key)) << key;
  }
  EXPECT_TRUE(row["shape"].is_array());
  EXPECT_TRUE(row["scale"].is_number());
  EXPECT_EQ(row["name"], "lm_head");
}

TEST(LayerInspectionTest, Fp32HasStatisticsOnly) {
  InspectOptions options;
  options.model_path = fixture("tiny.pt");
  options.variant = parse_variant("fp32");
  const InspectionReport r = run_inspect(options);
  EXPECT_FALSE(r.layers.front().damage.has_value());
  const nlohmann::json j = nlohmann::json::parse(format_inspection_json(r));
  EXPECT_TRUE(j["layers"][0]["mse"].is_null());
  EXPECT_TRUE(j["layers"][0]["std"].is_number());
}

}  // namespace
}  // namespace quantppl
