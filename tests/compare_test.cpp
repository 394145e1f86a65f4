// The compare pipeline on the tiny fixture model: weight backup/restore,
// layer selection, the Python reference for quantized variants, quantize ->
// compare round trip, and the regression gate.
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>
#include <torch/torch.h>

#include "fixture_support.h"
#include "quantppl/compare.h"
#include "quantppl/contract_model.h"
#include "quantppl/error.h"
#include "quantppl/model_quantizer.h"
#include "quantppl/quantize_model.h"
#include "quantppl/regression_check.h"
#include "quantppl/text_windows.h"

namespace quantppl {
namespace {

using ::testing::HasSubstr;
using testing::fixture;

constexpr double kReferenceRelTol = 1e-4;  // issue: C++ vs Python perplexity

std::string temp_path(const std::string& name) {
  return (std::filesystem::temp_directory_path() / ("quantppl_compare_test_" + std::to_string(::getpid()) + "_" + name)).string();
}

CompareOptions tiny_options(const std::string& variants) {
  CompareOptions o;
  o.model_path = fixture("tiny.pt");
  o.variants = parse_variant_list(variants);
  o.batch_size = 8;
  return o;
}

TEST(ModelQuantizerTest, BackupRestoresWeightsBitForBit) {
  ContractModel model = ContractModel::load(fixture("tiny.pt"));
  std::vector<LinearLayer> layers = model.linear_layers();
  std::vector<torch::Tensor> before;
  for (const auto& l : layers) before.push_back(l.weight.clone());
  WeightBackup backup(layers);
  for (const char* spec : {"absmax:2", "zeropoint:3:group32:mse", "absmax:8:channel:p99"}) {
    apply_variant(backup, parse_variant(spec).config);
    EXPECT_FALSE(torch::equal(layers[0].weight, before[0])) << spec;
    backup.restore();
    for (size_t i = 0; i < layers.size(); ++i) EXPECT_TRUE(torch::equal(layers[i].weight, before[i])) << layers[i].name;
  }
}

TEST(ModelQuantizerTest, EachVariantQuantizesTheOriginalsInPlace) {
  ContractModel model = ContractModel::load(fixture("tiny.pt"));
  std::vector<LinearLayer> layers = model.linear_layers();
  WeightBackup backup(layers);
  const QuantConfig coarse = parse_variant("absmax:2").config;
  const QuantConfig fine = parse_variant("zeropoint:8:channel").config;
  apply_variant(backup, coarse);
  const ModelQuantization q = apply_variant(backup, fine);  // must start again from the originals
  ErrorMetrics total;
  for (size_t i = 0; i < layers.size(); ++i) {
    const torch::Tensor expected = fake_quantize(backup.original(i), fine);
    EXPECT_TRUE(torch::equal(layers[i].weight, expected)) << layers[i].name;
    total.merge(error_metrics(backup.original(i), expected));
  }
  EXPECT_EQ(q.layers.size(), layers.size());
  EXPECT_DOUBLE_EQ(q.total.mse(), total.mse());
  // The live module sees the change: its named parameter holds the same values.
  const auto params = model.module().named_parameters();
  for (const auto& p : params) {
    if (p.name == layers[0].name + ".weight") {
      EXPECT_TRUE(torch::equal(p.value, layers[0].weight));
    }
  }
}

TEST(ModelQuantizerTest, SelectionByRegex) {
  ContractModel model = ContractModel::load(fixture("tiny.pt"));
  const auto all = model.linear_layers();
  const auto decoder = select_layers(all, "^decoder\\.", "");
  ASSERT_FALSE(decoder.empty());
  for (const auto& l : decoder) EXPECT_EQ(l.name.rfind("decoder.", 0), 0u) << l.name;
  const auto no_head = select_layers(all, "", "lm_head");
  EXPECT_EQ(no_head.size(), all.size() - 1);
  for (const auto& l : no_head) EXPECT_NE(l.name, "lm_head");
  try {
    select_layers(all, "(unclosed", "");
    FAIL();
  } catch (const UsageError& e) {
    EXPECT_THAT(e.what(), HasSubstr("--include '(unclosed' is not a valid regular expression"));
  }
  EXPECT_THROW(select_layers(all, "no_such_layer", ""), UsageError);
}

TEST(CompareTest, FirstFp32EqualsFp32AfterVariants) {
  const CompareReport r = run_compare(tiny_options("fp32,absmax:2,zeropoint:4:group64,fp32"));
  ASSERT_EQ(r.results.size(), 4u);
  EXPECT_EQ(r.results[0].ppl, r.results[3].ppl);
  EXPECT_EQ(r.results[0].nll, r.results[3].nll);
  EXPECT_GT(r.results[1].ppl, r.results[0].ppl);  // 2 bits per tensor must hurt
  EXPECT_EQ(*r.results[0].delta_ppl_pct, 0.0);
  EXPECT_NEAR(*r.results[1].delta_ppl_pct, 100 * (r.results[1].ppl / r.results[0].ppl - 1), 1e-9);
  EXPECT_FALSE(r.results[0].weight_mse.has_value());
  EXPECT_GT(*r.results[2].weight_mse, 0.0);
  EXPECT_EQ(r.provenance.text_tokens, r.results[0].tokens);  // reconstruct mode predicts every token
  EXPECT_EQ(r.provenance.model_sha256.size(), 64u);
}

TEST(CompareTest, Fp32IsAlwaysTheReference) {
  // Without an fp32 row, deltas and KL are still against fp32, and equal to a run that lists it.
  const CompareReport without = run_compare(tiny_options("absmax:4"));
  const CompareReport with = run_compare(tiny_options("fp32,absmax:4"));
  EXPECT_DOUBLE_EQ(*without.results[0].delta_ppl_pct, *with.results[1].delta_ppl_pct);
  EXPECT_DOUBLE_EQ(without.results[0].kl_mean, with.results[1].kl_mean);
  EXPECT_GT(without.results[0].kl_mean, 0.0);
  // fp32 against itself: exactly zero divergence, full agreement.
  EXPECT_EQ(with.results[0].kl_mean, 0.0);
  EXPECT_EQ(with.results[0].kl_max, 0.0);
  EXPECT_EQ(with.results[0].top1_agreement, 1.0);
  EXPECT_EQ(with.results[0].delta_nll_mean, 0.0);
}

TEST(CompareTest, PairedIntervalIsTighterThanPerplexityError) {
  const CompareReport r = run_compare(tiny_options("fp32,absmax:8"));
  // The paired per-token difference cancels token difficulty.
  const double ppl_error_in_nll = r.results[1].ppl_stderr / r.results[1].ppl;
  EXPECT_LT(r.results[1].delta_nll_ci95, 0.2 * 1.96 * ppl_error_in_nll);
  EXPECT_GT(r.results[1].delta_nll_ci95, 0.0);
}

TEST(CompareTest, Fp32AloneMakesNoBackup) {
  CompareOptions o = tiny_options("fp32");
  o.backup = BackupStorage::kFile;  // would create a file if a backup were made
  const CompareReport r = run_compare(o);
  EXPECT_EQ(r.backup, "none");
  EXPECT_GT(r.layers_quantized, 0);  // still reported: what a variant would quantize
  EXPECT_EQ(r.results[0].fp32_bytes, 4 * r.parameters_quantized);
  // With a quantized variant there is a backup: auto reads the originals from the model file.
  EXPECT_EQ(run_compare(tiny_options("fp32,absmax:8")).backup, "model");
}

CompareOptions early_options(const std::string& variants, double pct, uint64_t seed) {
  CompareOptions o = tiny_options(variants);
  o.batch_size = 1;
  o.ci_target_pct = pct;
  o.seed = seed;
  return o;
}

TEST(CompareEarlyStoppingTest, StoppedRowsEvaluateFewerTokensAndSaySo) {
  const CompareReport full = run_compare(tiny_options("fp32,absmax:8,absmax:2"));
  const int64_t total = full.results[0].tokens;
  const CompareReport r = run_compare(early_options("fp32,absmax:8,absmax:2", 2.0, 11));
  ASSERT_EQ(r.results.size(), 3u);
  EXPECT_GT(r.looks, 0);
  EXPECT_GT(r.stop_z, 1.96);  // Bonferroni over the looks
  EXPECT_EQ(r.provenance.window_order, "shuffled");
  EXPECT_EQ(r.provenance.seed, std::optional<uint64_t>(11));
  const VariantResult& a8 = r.results[1];
  // 8 bits barely move the tiny model: well within 2% at the first look.
  EXPECT_TRUE(a8.stopped_early);
  EXPECT_LT(a8.tokens, total);
  EXPECT_NEAR(*a8.delta_ppl_pct, 100.0 * std::expm1(a8.delta_nll_mean), 1e-12);
  // Its estimate agrees with the full run within the interval it stopped with (z / 1.96 wider).
  const double h = a8.delta_nll_ci95 / 1.959963984540054 * r.stop_z;
  EXPECT_NEAR(a8.delta_nll_mean, full.results[1].delta_nll_mean, h);
  for (const VariantResult& v : r.results) EXPECT_EQ(v.stopped_early, v.tokens < total) << v.variant;
  // fp32 ran exactly as long as the longest variant.
  EXPECT_EQ(r.results[0].tokens, std::max(r.results[1].tokens, r.results[2].tokens));
}

TEST(CompareEarlyStoppingTest, TheSeedFixesTheOrderAndIsTheSameForEveryVariant) {
  const CompareReport a = run_compare(early_options("fp32,absmax:8", 2.0, 3));
  const CompareReport b = run_compare(early_options("absmax:8,fp32", 2.0, 3));
  EXPECT_EQ(a.results[1].tokens, b.results[0].tokens);
  EXPECT_EQ(a.results[1].ppl, b.results[0].ppl);
  EXPECT_EQ(a.results[1].delta_nll_mean, b.results[0].delta_nll_mean);
  // Another seed: another sample of windows, so (almost surely) another estimate.
  const CompareReport c = run_compare(early_options("fp32,absmax:8", 2.0, 4));
  EXPECT_NE(a.results[1].ppl, c.results[0 + 1].ppl);
}

TEST(CompareEarlyStoppingTest, WithoutTheFlagNothingChanges) {
  const CompareReport r = run_compare(tiny_options("fp32,absmax:8"));
  EXPECT_EQ(r.provenance.window_order, "text");
  EXPECT_FALSE(r.provenance.seed.has_value());
  for (const VariantResult& v : r.results) {
    EXPECT_FALSE(v.stopped_early);
    EXPECT_EQ(v.tokens, r.provenance.text_tokens);
  }
}

TEST(CompareEarlyStoppingTest, GateBandsStopAVariantWhoseFailureIsSettled) {
  // absmax:2 wrecks the tiny model; an expected perplexity 1% above fp32's cannot be met.
  const CompareReport full = run_compare(tiny_options("fp32,absmax:2"));
  CompareOptions o = early_options("fp32,absmax:2", 0.001, 5);  // a target no variant meets
  const double fp32_ppl = full.results[0].ppl;
  o.gate_bands = gate_bands({{"absmax:2", 1.01 * fp32_ppl, 0.5}, {"fp32", fp32_ppl, 50.0}});
  const CompareReport r = run_compare(o);
  EXPECT_TRUE(r.results[1].stopped_early);
  EXPECT_GT(r.results[1].ppl, 1.01 * fp32_ppl * 1.005);  // and the check then fails, as on the full text
  EXPECT_GT(full.results[1].ppl, 1.01 * fp32_ppl * 1.005);
  EXPECT_FALSE(check_regressions(r, std::vector<ExpectedPerplexity>{{"absmax:2", 1.01 * fp32_ppl, 0.5}}).empty());
}

TEST(CompareEarlyStoppingTest, CiTargetOutsideZeroToHundredIsAUsageError) {
  for (const double bad : {0.0, -1.0, 100.0}) {
    EXPECT_THROW(run_compare(early_options("fp32,absmax:8", bad, 1)), UsageError) << bad;
  }
}

TEST(CompareTest, MaxLengthAboveTheModelsIsAUsageError) {
  CompareOptions o = tiny_options("fp32");
  o.max_length = 100000;
  EXPECT_THROW(run_compare(o), UsageError);
}

// C++ perplexity (library quantizer, batched) against Python (the seeds' own
// formulas, one window at a time) on the same token ids.
TEST(CompareTest, MatchesPythonReferenceForFp32AndSeedVariants) {
  ContractModel model = ContractModel::load(fixture("tiny.pt"));
  const EvalText text = load_eval_text(default_text_path(), model.tokenizer(), model.metadata().eos_token_id,
                                       model.metadata().max_length);
  const std::string windows_path = temp_path("windows.json");
  {
    std::ofstream out(windows_path);
    out << nlohmann::json(text.windows).dump();
  }
  const std::vector<std::pair<std::string, std::string>> pairs = {
      {"fp32", "fp32"},
      {"absmax:8", "tutorial-absmax8"},
      {"zeropoint:8", "tutorial-zeropoint8"},
      {"absmax:4", "numpy-absmax:4"},
      {"zeropoint:4", "numpy-zeropoint:4"}};
  std::string variants;
  for (const auto& [ours, theirs] : pairs) variants += (variants.empty() ? "" : ",") + ours;
  const CompareReport r = run_compare(tiny_options(variants));
  for (size_t i = 0; i < pairs.size(); ++i) {
    const std::string out = testing::run_command(
        testing::python() + " " + testing::shell_quote(std::string(QUANTPPL_SOURCE_DIR) + "/tests/reference/quantized_perplexity.py") +
        " " + testing::shell_quote(fixture("tiny.pt")) + " " + testing::shell_quote(windows_path) + " " + pairs[i].second);
    const auto j = nlohmann::json::parse(out);
    EXPECT_EQ(j["tokens"].get<int64_t>(), r.results[i].tokens);
    const double expected = j["ppl"].get<double>();
    EXPECT_NEAR(r.results[i].ppl / expected - 1.0, 0.0, kReferenceRelTol) << pairs[i].first << " vs " << pairs[i].second;
    if (i > 0) {
      EXPECT_EQ(j["layers"].get<int64_t>(), r.layers_quantized);
    }
  }
  std::remove(windows_path.c_str());
}

TEST(QuantizeModelTest, QuantizedFileEvaluatesLikeTheVariant) {
  const std::string out = temp_path("q.pt");
  std::remove(out.c_str());
  QuantizeModelOptions q;
  q.model_path = fixture("tiny.pt");
  q.variant = parse_variant("zeropoint:4:group64");
  q.output_path = out;
  const QuantizeModelSummary s = quantize_model_file(q);
  EXPECT_GT(s.layers, 0);
  const CompareReport on_original = run_compare(tiny_options("zeropoint:4:group64"));
  CompareOptions o = tiny_options("fp32");
  o.model_path = out;
  const CompareReport on_quantized = run_compare(o);
  EXPECT_DOUBLE_EQ(on_quantized.results[0].ppl, on_original.results[0].ppl);
  EXPECT_EQ(ContractModel::load(out).metadata().variant, "zeropoint:4:group64:minmax");
  // Refuses to clobber without force, leaves no temporary file behind.
  EXPECT_THROW(quantize_model_file(q), IoError);
  for (const auto& entry : std::filesystem::directory_iterator(std::filesystem::path(out).parent_path())) {
    EXPECT_EQ(entry.path().string().find(out + ".tmp"), std::string::npos) << entry.path();
  }
  std::remove(out.c_str());
}

TEST(RegressionCheckTest, FlagsDriftBeyondToleranceInEitherDirection) {
  const std::string path = temp_path("expected.json");
  {
    std::ofstream out(path);
    out << R"({"format_version": 1, "tolerance_pct": 1.0, "variants": [
      {"variant": "fp32", "ppl": 100.0}, {"variant": "absmax:8", "ppl": 100.0, "tolerance_pct": 0.1},
      {"variant": "zeropoint:8", "ppl": 100.0}]})";
  }
  const auto expected = read_expected_perplexities(path);
  ASSERT_EQ(expected.size(), 3u);
  EXPECT_EQ(expected_variant_list(expected), "fp32,absmax:8,zeropoint:8");
  CompareReport report;
  VariantResult a;
  a.variant = "fp32";
  a.ppl = 100.9;  // +0.9% within 1%
  VariantResult b;
  b.variant = "absmax:8";
  b.ppl = 99.8;  // -0.2% beyond 0.1%
  report.results = {a, b};
  const auto failures = check_regressions(report, expected);
  ASSERT_EQ(failures.size(), 2u);
  EXPECT_THAT(failures[0], HasSubstr("absmax:8"));
  EXPECT_THAT(failures[0], HasSubstr("99.8"));
  EXPECT_THAT(failures[0], HasSubstr("100"));
  EXPECT_THAT(failures[1], HasSubstr("zeropoint:8: expected in the run but not evaluated"));
  std::remove(path.c_str());
}

TEST(RegressionCheckTest, PinnedInputsMustMatch) {
  const std::string path = temp_path("pinned.json");
  std::ofstream(path) << R"({"model_sha256": "abc", "variants": [{"variant": "fp32", "ppl": 10.0}]})";
  const ExpectedRun expected = read_expected_run(path);
  EXPECT_EQ(expected.model_sha256, "abc");
  EXPECT_TRUE(expected.text_sha256.empty());
  CompareReport report;
  report.provenance.model_sha256 = "def";
  VariantResult r;
  r.variant = "fp32";
  r.ppl = 10.0;
  report.results = {r};
  const auto failures = check_regressions(report, expected);
  ASSERT_EQ(failures.size(), 1u);
  EXPECT_THAT(failures[0], HasSubstr("sha256 def, the baseline was made with abc"));
  report.provenance.model_sha256 = "abc";
  EXPECT_TRUE(check_regressions(report, expected).empty());
  std::remove(path.c_str());
}

TEST(RegressionCheckTest, MalformedExpectedFilesAreDataErrors) {
  const std::string path = temp_path("bad.json");
  for (const char* content : {"not json", "[]", R"({"variants": []})", R"({"variants": [{"variant": "fp32"}]})",
                              R"({"variants": [{"variant": "fp32", "ppl": -1}]})"}) {
    std::ofstream(path) << content;
    EXPECT_THROW(read_expected_perplexities(path), DataError) << content;
  }
  std::remove(path.c_str());
  EXPECT_THROW(read_expected_perplexities(path), IoError);
}

}  // namespace
}  // namespace quantppl
