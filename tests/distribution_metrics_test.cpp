// The comparison statistics (distribution_metrics.h): analytic cases on
// two-token vocabularies (every statistic written out by hand from its
// definition, numpy-linear percentiles of 1, 2 and 3 values with ties, N = 1,
// NaN), and an independent numpy computation in float64
// (tests/reference/distribution_metrics.py) on random logits and on the
// logits of the test fixture model.
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <functional>
#include <limits>
#include <fstream>
#include <map>
#include <optional>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>
#include <torch/torch.h>

#include "fixture_support.h"
#include "quantppl/compare.h"
#include "quantppl/contract_model.h"
#include "quantppl/distribution_metrics.h"
#include "quantppl/model_quantizer.h"
#include "quantppl/perplexity.h"
#include "quantppl/text_windows.h"
#include "quantppl/variant_spec.h"

namespace quantppl {
namespace {

// C++ against numpy in float64 on the same logits. The per-token NLL is float32 by
// definition (label_nll), so p = exp(-nll) carries ~1e-7 relative error and Δp
// up to ~3e-8 absolute; KL's terms are float.
constexpr double kRefRelTol = 1e-5;
constexpr double kRefAbsTol = 1e-7;

void write_raw(const std::string& path, const torch::Tensor& t) {
  const torch::Tensor c = t.contiguous();
  std::ofstream out(path, std::ios::binary);
  out.write(static_cast<const char*>(c.data_ptr()), static_cast<std::streamsize>(c.numel() * c.element_size()));
}

std::string temp_dir(const std::string& name) {
  const std::string dir =
      (std::filesystem::temp_directory_path() / ("quantppl_" + name + "_" + std::to_string(::getpid()))).string();
  std::filesystem::create_directories(dir);
  return dir;
}

nlohmann::json run_reference(const std::string& args) {
  return nlohmann::json::parse(testing::run_command(
      testing::python() + " " +
      testing::shell_quote(std::string(QUANTPPL_SOURCE_DIR) + "/tests/reference/distribution_metrics.py") + " " + args));
}

struct Batch {
  torch::Tensor p, q, labels, mask;
};

Batch random_batch(int64_t b, int64_t t, int64_t v, double noise, uint64_t seed) {
  torch::manual_seed(seed);
  Batch x;
  x.p = torch::randn({b, t, v}) * 3;
  x.q = x.p + torch::randn({b, t, v}) * noise;
  x.labels = torch::randint(v, {b, t}, torch::kInt64);
  x.mask = torch::rand({b, t}) < 0.8;
  x.mask.index_put_({0, 0}, true);
  return x;
}

// Positions over a vocabulary of 2 with label 0: P(label) = a_t, Q(label) = b_t
// (logits [log(a / (1 - a)), 0]). Then, by (1)-(4) of distribution_metrics.h,
//   KL_t = a ln(a / b) + (1 - a) ln((1 - a) / (1 - b)),  nll = -ln a and -ln b,
//   d_t = ln(a / b),  dp_t = b - a,  agree_t = [(a >= 1/2) == (b >= 1/2)]
// (argmax of a tie is index 0).
DistributionComparison two_token_comparison(const std::vector<std::pair<double, double>>& ab,
                                            PerTokenValues values = PerTokenValues::kKeep) {
  const auto n = static_cast<int64_t>(ab.size());
  torch::Tensor p = torch::zeros({1, n, 2});
  torch::Tensor q = torch::zeros({1, n, 2});
  for (int64_t t = 0; t < n; ++t) {
    const auto [a, b] = ab[static_cast<size_t>(t)];
    p.index_put_({0, t, 0}, std::log(a / (1 - a)));
    q.index_put_({0, t, 0}, std::log(b / (1 - b)));
  }
  DistributionComparison c(values);
  c.add(make_reference_batch(p, torch::zeros({1, n}, torch::kInt64), torch::ones({1, n}, torch::kBool)), q);
  return c;
}

double kl2(double a, double b) { return a * std::log(a / b) + (1 - a) * std::log((1 - a) / (1 - b)); }

// The logits are float32, so a and b carry ~1e-7 relative error.
constexpr double kAnalyticTol = 2e-6;

#define EXPECT_OPT_NEAR(opt, value) \
  do {                                   \
    ASSERT_TRUE((opt).has_value());      \
    EXPECT_NEAR(*(opt), (value), kAnalyticTol); \
  } while (0)

TEST(DistributionMetricsTest, OneTokenEveryPercentileIsTheValueAndStderrsAreNaN) {
  const DistributionStats s = two_token_comparison({{0.5, 0.75}}).summarize();
  EXPECT_EQ(s.tokens, 1);
  const double kl = 0.5 * std::log(4.0 / 3.0);  // kl2(0.5, 0.75)
  EXPECT_NEAR(s.kl.mean, kl, kAnalyticTol);
  EXPECT_NEAR(s.kl.min, kl, kAnalyticTol);
  EXPECT_NEAR(s.kl.max, kl, kAnalyticTol);
  for (const auto* x : {&s.kl.p001, &s.kl.p01, &s.kl.median, &s.kl.p99, &s.kl.p999}) EXPECT_OPT_NEAR(*x, kl);
  for (const auto* x : {&s.delta_p.p001, &s.delta_p.p25, &s.delta_p.median, &s.delta_p.p999}) EXPECT_OPT_NEAR(*x, 0.25);
  EXPECT_NEAR(s.delta_p.mean, 0.25, kAnalyticTol);
  EXPECT_NEAR(s.delta_p_rms, 0.25, kAnalyticTol);
  EXPECT_EQ(s.top1_agreement, 1.0);
  EXPECT_EQ(s.top1_agreement_stderr, 0.0);  // binomial: sqrt(1 * 0 / 1)
  EXPECT_NEAR(s.delta_nll_mean, std::log(0.5 / 0.75), kAnalyticTol);
  EXPECT_NEAR(s.ppl_ratio, 2.0 / 3.0, kAnalyticTol);
  // No sample standard deviation from one value.
  for (const double x : {s.kl.mean_stderr, s.delta_p.mean_stderr, s.delta_p_rms_stderr, s.delta_nll_stderr,
                         s.delta_nll_ci95, s.ppl_ratio_ci95_low, s.ppl_ratio_ci95_high, s.nll_correlation}) {
    EXPECT_TRUE(std::isnan(x)) << x;
  }
}

TEST(DistributionMetricsTest, TwoTokensInterpolateLinearlyAndCorrelateMinusOne) {
  // a, b = (0.5, 0.75) and (0.8, 0.6): dp = {0.25, -0.2}; nll(fp32) falls while nll(variant) rises.
  const DistributionStats s = two_token_comparison({{0.5, 0.75}, {0.8, 0.6}}).summarize();
  // numpy linear, n = 2: percentile P = v0 + (v1 - v0) * P / 100 on the sorted values.
  const double d0 = -0.2;
  const double d1 = 0.25;
  EXPECT_NEAR(s.delta_p.min, d0, kAnalyticTol);
  EXPECT_NEAR(s.delta_p.max, d1, kAnalyticTol);
  EXPECT_OPT_NEAR(s.delta_p.p001, d0 + 0.45 * 0.001);
  EXPECT_OPT_NEAR(s.delta_p.p01, d0 + 0.45 * 0.01);
  EXPECT_OPT_NEAR(s.delta_p.p05, d0 + 0.45 * 0.05);
  EXPECT_OPT_NEAR(s.delta_p.p10, d0 + 0.45 * 0.10);
  EXPECT_OPT_NEAR(s.delta_p.p25, d0 + 0.45 * 0.25);
  EXPECT_OPT_NEAR(s.delta_p.median, 0.025);
  EXPECT_OPT_NEAR(s.delta_p.p75, d0 + 0.45 * 0.75);
  EXPECT_OPT_NEAR(s.delta_p.p90, d0 + 0.45 * 0.90);
  EXPECT_OPT_NEAR(s.delta_p.p95, d0 + 0.45 * 0.95);
  EXPECT_OPT_NEAR(s.delta_p.p99, d0 + 0.45 * 0.99);
  EXPECT_OPT_NEAR(s.delta_p.p999, d0 + 0.45 * 0.999);
  EXPECT_NEAR(s.delta_p.mean, 0.025, kAnalyticTol);
  // sd of {v0, v1} with N - 1 = 1 is |v1 - v0| / sqrt(2); stderr = sd / sqrt(2) = |v1 - v0| / 2.
  EXPECT_NEAR(s.delta_p.mean_stderr, 0.45 / 2, kAnalyticTol);
  EXPECT_NEAR(s.delta_p_rms, std::sqrt((0.25 * 0.25 + 0.2 * 0.2) / 2), kAnalyticTol);
  // stderr of dp^2 = |0.0625 - 0.04| / 2, over 2 rms.
  EXPECT_NEAR(s.delta_p_rms_stderr, (0.0625 - 0.04) / 2 / (2 * s.delta_p_rms), kAnalyticTol);
  const double k0 = kl2(0.5, 0.75);
  const double k1 = kl2(0.8, 0.6);
  EXPECT_NEAR(s.kl.mean, (k0 + k1) / 2, kAnalyticTol);
  EXPECT_NEAR(s.kl.mean_stderr, std::abs(k1 - k0) / 2, kAnalyticTol);
  EXPECT_OPT_NEAR(s.kl.median, (k0 + k1) / 2);
  EXPECT_OPT_NEAR(s.kl.p10, std::min(k0, k1) + 0.1 * std::abs(k1 - k0));
  EXPECT_EQ(s.top1_agreement, 1.0);  // both sides prefer the label in both positions
  const double d_a = std::log(0.5 / 0.75);
  const double d_b = std::log(0.8 / 0.6);
  EXPECT_NEAR(s.delta_nll_mean, (d_a + d_b) / 2, kAnalyticTol);
  EXPECT_NEAR(s.delta_nll_stderr, std::abs(d_a - d_b) / 2, kAnalyticTol);
  EXPECT_NEAR(s.delta_nll_ci95, 1.959963984540054 * std::abs(d_a - d_b) / 2, kAnalyticTol);
  EXPECT_NEAR(s.ppl_ratio, std::exp((d_a + d_b) / 2), kAnalyticTol);
  EXPECT_NEAR(s.ppl_ratio_ci95_low, std::exp((d_a + d_b) / 2 - s.delta_nll_ci95), kAnalyticTol);
  EXPECT_NEAR(s.ppl_ratio_ci95_high, std::exp((d_a + d_b) / 2 + s.delta_nll_ci95), kAnalyticTol);
  // Two points lie on a line: the correlation is -1 (nll(fp32) 0.69 -> 0.22, nll(variant) 0.29 -> 0.51).
  EXPECT_NEAR(s.nll_correlation, -1.0, 1e-9);
  EXPECT_NEAR(s.nll_mean, -(std::log(0.75) + std::log(0.6)) / 2, kAnalyticTol);
  EXPECT_NEAR(s.reference_nll_mean, -(std::log(0.5) + std::log(0.8)) / 2, kAnalyticTol);
}

TEST(DistributionMetricsTest, TiesAndDisagreementAndAConstantSeries) {
  // dp = {0.25, -0.25, 0.25}: sorted {-0.25, 0.25, 0.25}, vi = 2 P / 100.
  // KL is the same for b = 0.75 and 0.25 when a = 1/2; nll(fp32) = ln 2 throughout.
  const DistributionStats s = two_token_comparison({{0.5, 0.75}, {0.5, 0.25}, {0.5, 0.75}}).summarize();
  EXPECT_OPT_NEAR(s.delta_p.p01, -0.25 + 0.5 * 0.02);
  EXPECT_OPT_NEAR(s.delta_p.p10, -0.25 + 0.5 * 0.2);
  EXPECT_OPT_NEAR(s.delta_p.p25, 0.0);
  EXPECT_OPT_NEAR(s.delta_p.median, 0.25);
  EXPECT_OPT_NEAR(s.delta_p.p75, 0.25);
  EXPECT_OPT_NEAR(s.delta_p.p999, 0.25);
  const double kl = 0.5 * std::log(4.0 / 3.0);
  EXPECT_OPT_NEAR(s.kl.p001, kl);
  EXPECT_OPT_NEAR(s.kl.p999, kl);
  EXPECT_NEAR(s.kl.mean_stderr, 0.0, 1e-7);  // equal values (up to float rounding of the logits)
  EXPECT_NEAR(s.top1_agreement, 2.0 / 3.0, 1e-15);  // b = 0.25: the variant prefers the other token
  EXPECT_NEAR(s.top1_agreement_stderr, std::sqrt(2.0 / 9.0 / 3.0), 1e-15);
  // delta = {ln(2/3), ln 2, ln(2/3)}: mean and the sample sd written out.
  const double d[] = {std::log(2.0 / 3.0), std::log(2.0), std::log(2.0 / 3.0)};
  const double mean = (d[0] + d[1] + d[2]) / 3;
  const double sd = std::sqrt(((d[0] - mean) * (d[0] - mean) + (d[1] - mean) * (d[1] - mean) +
                               (d[2] - mean) * (d[2] - mean)) / 2);
  EXPECT_NEAR(s.delta_nll_mean, mean, kAnalyticTol);
  EXPECT_NEAR(s.delta_nll_stderr, sd / std::sqrt(3.0), kAnalyticTol);
  EXPECT_NEAR(s.ppl_ratio, std::exp(mean), kAnalyticTol);
  EXPECT_TRUE(std::isnan(s.nll_correlation));  // nll(fp32) is constant: no correlation
}

TEST(DistributionMetricsTest, SumsOnlyGivesEverythingButThePercentiles) {
  const std::vector<std::pair<double, double>> ab = {{0.5, 0.75}, {0.8, 0.6}, {0.3, 0.35}, {0.9, 0.4}};
  const DistributionStats kept = two_token_comparison(ab).summarize();
  const DistributionStats sums = two_token_comparison(ab, PerTokenValues::kSumsOnly).summarize();
  for (const auto* x : {&sums.kl.p001, &sums.kl.p01, &sums.kl.p05, &sums.kl.p10, &sums.kl.p25, &sums.kl.median,
                        &sums.kl.p75, &sums.kl.p90, &sums.kl.p95, &sums.kl.p99, &sums.kl.p999, &sums.delta_p.p01,
                        &sums.delta_p.median, &sums.delta_p.p999}) {
    EXPECT_FALSE(x->has_value());
  }
  EXPECT_TRUE(kept.kl.p99.has_value());
  EXPECT_EQ(sums.kl.mean, kept.kl.mean);
  EXPECT_EQ(sums.kl.mean_stderr, kept.kl.mean_stderr);
  EXPECT_EQ(sums.kl.min, kept.kl.min);
  EXPECT_EQ(sums.kl.max, kept.kl.max);
  EXPECT_EQ(sums.delta_p.min, kept.delta_p.min);
  EXPECT_EQ(sums.delta_p.max, kept.delta_p.max);
  EXPECT_EQ(sums.delta_p_rms, kept.delta_p_rms);
  EXPECT_EQ(sums.top1_agreement, kept.top1_agreement);
  EXPECT_EQ(sums.delta_nll_ci95, kept.delta_nll_ci95);
  EXPECT_EQ(sums.nll_correlation, kept.nll_correlation);
  EXPECT_NEAR(kept.delta_p.min, -0.5, kAnalyticTol);
  EXPECT_NEAR(kept.delta_p.max, 0.25, kAnalyticTol);
  EXPECT_EQ(kept.top1_agreement, 0.75);  // (0.9, 0.4) disagrees
  EXPECT_TRUE(std::isnan(two_token_comparison(ab, PerTokenValues::kSumsOnly).kl_p99()));
}

TEST(DistributionMetricsTest, NoTokensIsNaNEverywhere) {
  const DistributionStats s = DistributionComparison().summarize();
  EXPECT_EQ(s.tokens, 0);
  for (const double x : {s.kl.mean, s.kl.max, s.delta_p.mean, s.top1_agreement, s.ppl_ratio, s.nll_correlation}) {
    EXPECT_TRUE(std::isnan(x));
  }
  EXPECT_FALSE(s.kl.median.has_value());
}

TEST(DistributionMetricsTest, Fp32AgainstItselfIsZeroKlAndFullAgreement) {
  const Batch x = random_batch(3, 17, 50, 0.0, 1);
  const ReferenceBatch reference = make_reference_batch(x.p, x.labels, x.mask);
  DistributionComparison c;
  c.add(reference, x.p);
  DistributionComparison self;
  self.add_reference(reference);
  EXPECT_EQ(c.kl_mean(), 0.0);
  EXPECT_EQ(c.kl_max(), 0.0);
  EXPECT_EQ(c.top1_agreement(), 1.0);
  EXPECT_EQ(c.delta_nll_mean(), 0.0);
  EXPECT_EQ(c.delta_nll_ci95(), 0.0);
  EXPECT_EQ(c.tokens(), x.mask.sum().item<int64_t>());
  for (const DistributionStats& s : {c.summarize(), self.summarize()}) {
    EXPECT_EQ(s.kl.min, 0.0);
    EXPECT_EQ(*s.kl.p999, 0.0);
    EXPECT_EQ(s.delta_p.max, 0.0);
    EXPECT_EQ(s.delta_p_rms, 0.0);
    EXPECT_EQ(s.delta_p_rms_stderr, 0.0);
    EXPECT_EQ(s.ppl_ratio, 1.0);
    EXPECT_EQ(s.ppl_ratio_ci95_low, 1.0);
    EXPECT_EQ(s.ppl_ratio_ci95_high, 1.0);
    EXPECT_EQ(s.nll_correlation, 1.0);
    EXPECT_EQ(s.top1_agreement_stderr, 0.0);
  }
}

// Every statistic of `s` under the name the JSON report and the Python reference use.
std::map<std::string, std::optional<double>> by_name(const DistributionStats& s) {
  std::map<std::string, std::optional<double>> m;
  for (const auto& [prefix, v] : {std::pair<std::string, const TokenValueStats*>{"kl", &s.kl}, {"delta_p", &s.delta_p}}) {
    m[prefix + "_mean"] = v->mean;
    m[prefix + "_mean_stderr"] = v->mean_stderr;
    m[prefix + "_min"] = v->min;
    m[prefix + "_max"] = v->max;
    m[prefix + "_p001"] = v->p001;
    m[prefix + "_p01"] = v->p01;
    m[prefix + "_p05"] = v->p05;
    m[prefix + "_p10"] = v->p10;
    m[prefix + "_p25"] = v->p25;
    m[prefix + "_median"] = v->median;
    m[prefix + "_p75"] = v->p75;
    m[prefix + "_p90"] = v->p90;
    m[prefix + "_p95"] = v->p95;
    m[prefix + "_p99"] = v->p99;
    m[prefix + "_p999"] = v->p999;
  }
  m["delta_p_rms"] = s.delta_p_rms;
  m["delta_p_rms_stderr"] = s.delta_p_rms_stderr;
  m["top1_agreement"] = s.top1_agreement;
  m["top1_agreement_stderr"] = s.top1_agreement_stderr;
  m["delta_nll_mean"] = s.delta_nll_mean;
  m["delta_nll_ci95"] = s.delta_nll_ci95;
  m["ppl_ratio"] = s.ppl_ratio;
  m["ppl_ratio_ci95_low"] = s.ppl_ratio_ci95_low;
  m["ppl_ratio_ci95_high"] = s.ppl_ratio_ci95_high;
  m["nll_correlation"] = s.nll_correlation;
  m["nll_mean"] = s.nll_mean;
  m["reference_nll_mean"] = s.reference_nll_mean;
  return m;
}

// Every field the reference prints (but tokens and nll_sum) against ours.
void expect_matches_reference(const DistributionStats& s, const nlohmann::json& j) {
  EXPECT_EQ(s.tokens, j["tokens"].get<int64_t>());
  const auto ours = by_name(s);
  size_t compared = 0;
  for (const auto& [key, value] : j.items()) {
    if (key == "tokens" || key == "nll_sum") continue;
    const auto it = ours.find(key);
    ASSERT_NE(it, ours.end()) << key;
    ASSERT_TRUE(it->second.has_value()) << key;
    const double theirs = value.get<double>();
    EXPECT_NEAR(*it->second, theirs, kRefRelTol * std::abs(theirs) + kRefAbsTol) << key;
    ++compared;
  }
  EXPECT_EQ(compared, ours.size());  // the reference computes every statistic we report
}

TEST(DistributionMetricsTest, MatchesNumpyInFloat64AcrossBatches) {
  const std::string dir = temp_dir("kl");
  // Two batches accumulate like one concatenated batch.
  const Batch a = random_batch(2, 13, 300, 0.3, 2);
  const Batch b = random_batch(2, 13, 300, 0.3, 3);
  DistributionComparison c;
  c.add(make_reference_batch(a.p, a.labels, a.mask), a.q);
  c.add(make_reference_batch(b.p, b.labels, b.mask), b.q);
  write_raw(dir + "/p.f32", torch::cat({a.p, b.p}));
  write_raw(dir + "/q.f32", torch::cat({a.q, b.q}));
  write_raw(dir + "/labels.i64", torch::cat({a.labels, b.labels}));
  write_raw(dir + "/mask.u8", torch::cat({a.mask, b.mask}).to(torch::kUInt8));
  std::ofstream(dir + "/shape.json") << R"({"B": 4, "T": 13, "V": 300})";
  const auto j = run_reference(testing::shell_quote(dir));
  EXPECT_GT(j["kl_mean"].get<double>(), 1e-3);  // the comparison is not trivially zero
  EXPECT_LT(j["top1_agreement"].get<double>(), 1.0);
  const DistributionStats s = c.summarize();
  expect_matches_reference(s, j);
  EXPECT_DOUBLE_EQ(c.top1_agreement(), j["top1_agreement"].get<double>());
  EXPECT_NEAR(c.nll_sum(), j["nll_sum"].get<double>(), kRefRelTol * std::abs(j["nll_sum"].get<double>()));
  // The legacy accessors are the summary's values.
  EXPECT_EQ(c.kl_mean(), s.kl.mean);
  EXPECT_EQ(c.kl_p99(), *s.kl.p99);
  EXPECT_EQ(c.kl_max(), s.kl.max);
  EXPECT_EQ(c.delta_nll_ci95(), s.delta_nll_ci95);
  std::filesystem::remove_all(dir);
}

// The fixture model's own logits, fp32 and zeropoint:4:group64, batch by
// batch as compare evaluates them, against numpy on the same logits.
TEST(DistributionMetricsTest, MatchesNumpyOnTheFixtureModelsLogits) {
  ContractModel model = ContractModel::load(testing::fixture("tiny.pt"));
  const ModelMetadata& meta = model.metadata();
  const EvalText text = load_eval_text(default_text_path(), model.tokenizer(), meta.eos_token_id, 64);
  const std::vector<EvalBatch> batches = make_batches(text.windows, PerplexityMode::kReconstruct, 4, meta);
  ASSERT_GT(batches.size(), 2u);
  WeightBackup backup(model.linear_layers());
  const QuantConfig config = parse_variant("zeropoint:4:group64").config;
  DistributionComparison c;
  std::vector<torch::Tensor> p_rows, q_rows, labels;
  torch::NoGradGuard no_grad;
  for (const EvalBatch& batch : batches) {
    const torch::Tensor p = model.forward(batch.input_ids, batch.attention_mask, batch.decoder_input_ids).clone();
    apply_variant(backup, config);
    const torch::Tensor q = model.forward(batch.input_ids, batch.attention_mask, batch.decoder_input_ids).clone();
    backup.restore();
    c.add(make_reference_batch(p, batch.labels, batch.label_mask), q);
    p_rows.push_back(p.index({batch.label_mask}));
    q_rows.push_back(q.index({batch.label_mask}));
    labels.push_back(batch.labels.index({batch.label_mask}));
  }
  const std::string dir = temp_dir("kl_fixture");
  const torch::Tensor all_p = torch::cat(p_rows);
  write_raw(dir + "/p.f32", all_p);
  write_raw(dir + "/q.f32", torch::cat(q_rows));
  write_raw(dir + "/labels.i64", torch::cat(labels));
  write_raw(dir + "/mask.u8", torch::ones({all_p.size(0)}, torch::kUInt8));
  std::ofstream(dir + "/shape.json") << nlohmann::json{{"B", 1}, {"T", all_p.size(0)}, {"V", all_p.size(1)}}.dump();
  const auto j = run_reference(testing::shell_quote(dir));
  EXPECT_EQ(j["tokens"].get<int64_t>(), static_cast<int64_t>(text.token_ids.size()));
  EXPECT_GT(j["kl_mean"].get<double>(), 1e-3);
  expect_matches_reference(c.summarize(), j);
  std::filesystem::remove_all(dir);
}

TEST(DistributionMetricsTest, NonFiniteLogitsOnEitherSideMakeTheSumsNaN) {
  for (const bool in_reference : {true, false}) {
    Batch x = random_batch(2, 9, 40, 0.1, 6);
    x.mask.index_put_({1, 4}, true);
    (in_reference ? x.p : x.q).index_put_({1, 4, 7}, std::numeric_limits<float>::quiet_NaN());
    DistributionComparison c;
    c.add(make_reference_batch(x.p, x.labels, x.mask), x.q);
    EXPECT_TRUE(std::isnan(c.kl_mean())) << in_reference;
    EXPECT_TRUE(std::isnan(c.nll_sum())) << in_reference;
    EXPECT_TRUE(std::isnan(c.delta_nll_mean())) << in_reference;
    EXPECT_LT(c.top1_agreement(), 1.0) << in_reference;
    // As numpy: NaN in the values makes the minimum, maximum and every percentile NaN.
    const DistributionStats s = c.summarize();
    for (const double v : {s.kl.min, s.kl.max, *s.kl.median, *s.kl.p99, s.delta_p.min, *s.delta_p.p01,
                           s.delta_p_rms, s.nll_correlation, s.ppl_ratio}) {
      EXPECT_TRUE(std::isnan(v)) << in_reference;
    }
    EXPECT_TRUE(std::isnan(c.kl_p99()));
    EXPECT_FALSE(std::isnan(s.top1_agreement));
  }
  // add_reference on a non-finite fp32 row: the same NaNs.
  Batch x = random_batch(1, 5, 10, 0.0, 7);
  x.mask.fill_(true);
  x.p.index_put_({0, 2, 3}, std::numeric_limits<float>::infinity());
  DistributionComparison self;
  self.add_reference(make_reference_batch(x.p, x.labels, x.mask));
  const DistributionStats s = self.summarize();
  EXPECT_TRUE(std::isnan(s.kl.mean));
  EXPECT_TRUE(std::isnan(s.kl.max));
  EXPECT_TRUE(std::isnan(*s.delta_p.median));
  EXPECT_DOUBLE_EQ(s.top1_agreement, 0.8);
}

TEST(DistributionMetricsTest, LargerPerturbationMeansLargerKlAndLowerAgreement) {
  const Batch small = random_batch(2, 32, 100, 0.05, 4);
  const Batch large = random_batch(2, 32, 100, 1.0, 4);
  DistributionComparison cs;
  DistributionComparison cl;
  cs.add(make_reference_batch(small.p, small.labels, small.mask), small.q);
  cl.add(make_reference_batch(large.p, large.labels, large.mask), large.q);
  EXPECT_LT(cs.kl_mean(), cl.kl_mean());
  EXPECT_GT(cs.top1_agreement(), cl.top1_agreement());
  EXPECT_LE(cs.kl_p99(), cs.kl_max());
  const DistributionStats s = cl.summarize();
  EXPECT_LE(s.kl.min, *s.kl.p001);
  EXPECT_LE(*s.kl.p999, s.kl.max);
  EXPECT_LE(s.delta_p.min, *s.delta_p.p01);
  EXPECT_LE(*s.delta_p.p99, s.delta_p.max);
  EXPECT_GT(cl.summarize().delta_p_rms, cs.summarize().delta_p_rms);
  EXPECT_LT(cl.summarize().nll_correlation, cs.summarize().nll_correlation);
}

}  // namespace
}  // namespace quantppl
