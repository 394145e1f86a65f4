// Sensitivity against runs done directly: one layer quantized through
// apply_variant on a WeightBackup of that layer alone, keep-K subsets through
// --exclude, parts through --include, and run_compare for all layers.
#include <cmath>
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
#include "quantppl/sensitivity.h"
#include "quantppl/text_windows.h"

namespace quantppl {
namespace {

using ::testing::HasSubstr;
using testing::fixture;

constexpr int64_t kTokens = 200;          // keeps the 40+ runs of the tiny model fast
constexpr double kBatchingRelTol = 1e-5;  // perplexity.h: different batching, float rounding

std::vector<EvalBatch> first_tokens_batches(const ContractModel& model, int64_t tokens) {
  EvalText text = load_eval_text(default_text_path(), model.tokenizer(), model.metadata().eos_token_id,
                                 model.metadata().max_length);
  text.token_ids.resize(static_cast<size_t>(tokens));
  return make_batches(cut_windows(text.token_ids, model.metadata().max_length), PerplexityMode::kReconstruct,
                      /*batch_size=*/8, model.metadata());
}

std::string escape_regex(const std::string& s) {
  std::string out;
  for (const char c : s) {
    if (std::string("\\^$.|?*+()[]{}").find(c) != std::string::npos) out += '\\';
    out += c;
  }
  return out;
}

// Perplexity with exactly the layers matching include/exclude quantized, done the plain way.
double direct_ppl(ContractModel& model, const std::vector<EvalBatch>& batches, const QuantConfig& config,
                  const std::string& include, const std::string& exclude) {
  WeightBackup backup(select_layers(model.linear_layers(), include, exclude));
  apply_variant(backup, config);
  const double ppl = evaluate_perplexity(model, batches).ppl();
  backup.restore();
  return ppl;
}

class SensitivityTest : public ::testing::Test {
 protected:
  void SetUp() override {
    batches = first_tokens_batches(model, kTokens);
    layers = model.linear_layers();
    for (const LinearLayer& l : layers) before.push_back(l.weight.clone());
    report = measure_sensitivity(model, batches, layers, config, {0, 1, 2, 1000});
  }
  ContractModel model = ContractModel::load(fixture("tiny.pt"));
  QuantConfig config = parse_variant("absmax:4").config;
  std::vector<EvalBatch> batches;
  std::vector<LinearLayer> layers;
  std::vector<torch::Tensor> before;
  SensitivityReport report;
};

TEST_F(SensitivityTest, WeightsAreRestoredBitForBit) {
  for (size_t i = 0; i < layers.size(); ++i) EXPECT_TRUE(torch::equal(layers[i].weight, before[i])) << layers[i].name;
}

TEST_F(SensitivityTest, SingleLayerRunsMatchApplyVariantOnThatLayerAlone) {
  ASSERT_EQ(report.layers.size(), layers.size());
  EXPECT_EQ(report.tokens, kTokens);
  const double fp32 = evaluate_perplexity(model, batches).ppl();
  EXPECT_EQ(report.fp32_ppl, fp32);
  for (const LayerSensitivity& l : report.layers) {
    const double direct = direct_ppl(model, batches, config, "^" + escape_regex(l.name) + "$", "");
    EXPECT_DOUBLE_EQ(l.ppl, direct) << l.name;
    EXPECT_DOUBLE_EQ(l.delta_ppl_pct, 100.0 * (direct / fp32 - 1.0)) << l.name;
    EXPECT_GE(l.kl_mean, -1e-6) << l.name;
  }
  for (size_t r = 0; r < report.layers.size(); ++r) {
    EXPECT_EQ(report.layers[r].rank, static_cast<int64_t>(r + 1));
    if (r > 0) EXPECT_GE(report.layers[r - 1].ppl, report.layers[r].ppl);
  }
}

TEST_F(SensitivityTest, KeepZeroIsAllQuantizedAndKeepAllIsFp32) {
  ASSERT_EQ(report.keep.size(), 4u);
  EXPECT_EQ(report.keep[0].keep, 0);
  EXPECT_EQ(report.keep[0].ppl, report.all_quantized_ppl);
  EXPECT_DOUBLE_EQ(report.all_quantized_ppl, direct_ppl(model, batches, config, "", ""));
  // 1000 is clipped to the number of layers: everything stays fp32.
  EXPECT_EQ(report.keep[3].keep, static_cast<int64_t>(layers.size()));
  EXPECT_EQ(report.keep[3].ppl, report.fp32_ppl);
  EXPECT_EQ(report.keep[3].kl_mean, 0.0);
  EXPECT_EQ(report.keep[3].kept_layers.size(), layers.size());
}

TEST_F(SensitivityTest, KeepKKeepsTheKMostDamagingLayers) {
  const KeepResult& k2 = report.keep[2];
  ASSERT_EQ(k2.kept_layers.size(), 2u);
  EXPECT_EQ(k2.kept_layers[0], report.layers[0].name);
  EXPECT_EQ(k2.kept_layers[1], report.layers[1].name);
  const std::string exclude = "^(" + escape_regex(k2.kept_layers[0]) + "|" + escape_regex(k2.kept_layers[1]) + ")$";
  EXPECT_DOUBLE_EQ(k2.ppl, direct_ppl(model, batches, config, "", exclude));
}

TEST_F(SensitivityTest, PartsMatchIncludeByPrefix) {
  ASSERT_EQ(report.parts.size(), 3u);
  const std::vector<std::pair<std::string, std::string>> parts{
      {"encoder", "^encoder\\."}, {"decoder", "^decoder\\."}, {"lm_head", "^lm_head"}};
  int64_t total = 0;
  for (size_t p = 0; p < parts.size(); ++p) {
    EXPECT_EQ(report.parts[p].part, parts[p].first);
    ASSERT_TRUE(report.parts[p].ppl.has_value());
    EXPECT_DOUBLE_EQ(*report.parts[p].ppl, direct_ppl(model, batches, config, parts[p].second, "")) << parts[p].first;
    total += report.parts[p].layers;
  }
  EXPECT_EQ(total, static_cast<int64_t>(layers.size()));
}

TEST(SensitivityRunTest, AllQuantizedAndFp32EqualRunCompare) {
  // A whole (short) text, so that run_compare sees the same tokens.
  const std::string path = (std::filesystem::temp_directory_path() /
                            ("quantppl_sensitivity_test_" + std::to_string(::getpid()) + ".txt")).string();
  {
    std::ofstream out(path);
    out << "The quick brown fox jumps over the lazy dog. Quantization maps weights onto a small grid of levels.\n"
           "Perplexity is the exponential of the mean negative log-likelihood of the predicted tokens.\n";
  }
  SensitivityOptions options;
  options.model_path = fixture("tiny.pt");
  options.text_path = path;
  options.variant = parse_variant("zeropoint:4:group32");
  options.keep = {0};
  const SensitivityReport s = run_sensitivity(options);
  CompareOptions c;
  c.model_path = fixture("tiny.pt");
  c.text_path = path;
  c.variants = parse_variant_list("fp32,zeropoint:4:group32");
  const CompareReport r = run_compare(c);
  std::filesystem::remove(path);
  EXPECT_NEAR(s.fp32_ppl, r.results[0].ppl, kBatchingRelTol * r.results[0].ppl);
  EXPECT_NEAR(s.all_quantized_ppl, r.results[1].ppl, kBatchingRelTol * r.results[1].ppl);
  EXPECT_NEAR(s.keep[0].ppl, r.results[1].ppl, kBatchingRelTol * r.results[1].ppl);
  EXPECT_NEAR(s.all_quantized_kl_mean, r.results[1].kl_mean, 1e-4 * r.results[1].kl_mean + 1e-9);
  EXPECT_EQ(s.tokens, r.results[1].tokens);
}

TEST(SensitivityRunTest, MaxTokensCapsTheText) {
  SensitivityOptions options;
  options.model_path = fixture("tiny.pt");
  options.variant = parse_variant("absmax:8");
  options.include = "lm_head|decoder\\.block\\.0\\.layer\\.0";
  options.max_tokens = 100;
  const SensitivityReport s = run_sensitivity(options);
  EXPECT_EQ(s.text_tokens, 100);
  EXPECT_EQ(s.tokens, 100);
  EXPECT_EQ(s.layers.size(), 5u);
  EXPECT_FALSE(s.parts[0].ppl.has_value());  // no encoder layer selected
  EXPECT_EQ(s.parts[0].layers, 0);
  const nlohmann::json j = nlohmann::json::parse(format_sensitivity_json(s));
  for (const char* key : {"model", "model_sha256", "text", "text_sha256", "tokens", "variant", "fp32_ppl",
                          "all_quantized_ppl", "layers", "keep", "parts"}) {
    EXPECT_TRUE(j.contains(key)) << key;
  }
  for (const char* key : {"name", "rank", "ppl", "delta_ppl_pct", "kl_mean"}) EXPECT_TRUE(j["layers"][0].contains(key));
  for (const char* key : {"keep", "kept_layers", "ppl", "delta_ppl_pct"}) EXPECT_TRUE(j["keep"][0].contains(key));
  EXPECT_TRUE(j["parts"][0]["ppl"].is_null());
}

TEST(SensitivityRunTest, Fp32VariantIsAUsageError) {
  SensitivityOptions options;
  options.model_path = fixture("tiny.pt");
  options.variant = parse_variant("fp32");
  EXPECT_THROW(run_sensitivity(options), UsageError);
}

TEST(SensitivityKeepTest, ParsesSortsAndDeduplicates) {
  EXPECT_EQ(parse_keep_list("0,1,2,4,8"), (std::vector<int64_t>{0, 1, 2, 4, 8}));
  EXPECT_EQ(parse_keep_list(" 8, 2,2 ,0"), (std::vector<int64_t>{0, 2, 8}));
  EXPECT_EQ(parse_keep_list(kDefaultKeep), (std::vector<int64_t>{0, 1, 2, 4, 8}));
}

TEST(SensitivityKeepTest, RejectsMalformedLists) {
  for (const char* bad : {"", "1,,2", "1,", "-1", "x", "1.5", "99999999999"}) {
    try {
      parse_keep_list(bad);
      ADD_FAILURE() << "accepted '" << bad << "'";
    } catch (const UsageError& e) {
      EXPECT_THAT(e.what(), HasSubstr("--keep")) << bad;
    }
  }
}

}  // namespace
}  // namespace quantppl
