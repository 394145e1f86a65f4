#include "quantppl/perplexity.h"

#include <cmath>
#include <fstream>

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>
#include <torch/torch.h>

#include "fixture_support.h"
#include "quantppl/error.h"
#include "quantppl/text_windows.h"

namespace quantppl {
namespace {

using ::testing::HasSubstr;
using testing::fixture;

constexpr double kBatchingRelTol = 1e-5;  // same math, different BLAS blocking
constexpr double kPythonRelTol = 1e-4;    // independent implementation, same LibTorch kernels

const std::string kDefaultText = QUANTPPL_SOURCE_DIR "/data/default_eval.txt";

ModelMetadata tiny_metadata(int64_t vocab = 384, int64_t max_length = 64) {
  ModelMetadata m;
  m.vocab_size = vocab;
  m.max_length = max_length;
  m.pad_token_id = 0;
  m.eos_token_id = 1;
  m.decoder_start_token_id = 0;
  return m;
}

std::vector<std::vector<int64_t>> default_windows(const ContractModel& model, int64_t max_length = 64) {
  return load_eval_text(kDefaultText, model.tokenizer(), model.metadata().eos_token_id, max_length).windows;
}

void expect_rel_near(double actual, double expected, double rel, const std::string& what) {
  EXPECT_LE(std::abs(actual - expected), rel * std::abs(expected)) << what << ": " << actual << " vs " << expected;
}

TEST(PerplexityTest, UniformLogitsGiveLogVPerTokenAndPerplexityV) {
  const torch::Tensor nll = token_nll(torch::zeros({2, 3, 384}), torch::randint(0, 384, {2, 3}, torch::kInt64));
  EXPECT_TRUE(torch::allclose(nll, torch::full({2, 3}, std::log(384.0f)), 0, 1e-6));

  // uniform.pt's Linear weight is zero, so every logit is 0.
  ContractModel model = ContractModel::load(fixture("uniform.pt"));
  const auto batches = make_batches(default_windows(model), PerplexityMode::kReconstruct, 4, model.metadata());
  const PerplexityResult r = evaluate_perplexity(model, batches);
  expect_rel_near(r.ppl(), 384.0, 1e-6, "ppl");
  expect_rel_near(r.mean_nll(), std::log(384.0), 1e-6, "mean nll");
}

TEST(PerplexityTest, HandComputedTokenNll) {
  // One position, logits (1, 2, 3): nll(label) = log(e + e^2 + e^3) - z[label].
  const torch::Tensor logits = torch::tensor({1.0f, 2.0f, 3.0f}).reshape({1, 1, 3}).expand({1, 3, 3}).contiguous();
  const torch::Tensor labels = torch::tensor({0, 1, 2}, torch::kInt64).reshape({1, 3});
  const double lse = std::log(std::exp(1.0) + std::exp(2.0) + std::exp(3.0));
  const torch::Tensor nll = token_nll(logits, labels);
  EXPECT_NEAR(nll[0][0].item<double>(), lse - 1, 1e-6);
  EXPECT_NEAR(nll[0][1].item<double>(), lse - 2, 1e-6);
  EXPECT_NEAR(nll[0][2].item<double>(), lse - 3, 1e-6);
  PerplexityResult r{/*nll_sum=*/3 * lse - 6, /*tokens=*/3, /*seconds=*/0};
  EXPECT_NEAR(r.ppl(), std::exp(lse - 2), 1e-12);
  EXPECT_TRUE(std::isnan(PerplexityResult{}.ppl()));
}

TEST(PerplexityTest, StandardErrorOfTheMeanNll) {
  // nll = {1, 2, 3, 6}: mean 3, sample variance ((4 + 1 + 0 + 9) / 3) = 14/3, se = sqrt(14/3 / 4).
  PerplexityResult r{/*nll_sum=*/12, /*tokens=*/4, /*seconds=*/0, /*nll_sq_sum=*/1 + 4 + 9 + 36};
  EXPECT_NEAR(r.mean_nll_stderr(), std::sqrt(14.0 / 3 / 4), 1e-12);
  EXPECT_NEAR(r.ppl_stderr(), std::exp(3.0) * std::sqrt(14.0 / 3 / 4), 1e-9);
  EXPECT_TRUE(std::isnan(PerplexityResult({1, 1, 0, 1}).mean_nll_stderr()));
  // Uniform logits: every token has the same NLL, so the spread is zero.
  ContractModel model = ContractModel::load(fixture("uniform.pt"));
  const auto batches = make_batches(default_windows(model), PerplexityMode::kReconstruct, 8, model.metadata());
  EXPECT_NEAR(evaluate_perplexity(model, batches).mean_nll_stderr(), 0.0, 1e-6);
}

TEST(PerplexityTest, TokenNllChunksAgreeWithOneLogSoftmax) {
  // More positions than one chunk (512), to cross the chunk boundary.
  torch::manual_seed(3);
  const torch::Tensor logits = torch::randn({3, 300, 50}) * 4;
  const torch::Tensor labels = torch::randint(0, 50, {3, 300}, torch::kInt64);
  const torch::Tensor reference = -torch::log_softmax(logits.to(torch::kFloat64), -1).gather(-1, labels.unsqueeze(-1)).squeeze(-1);
  EXPECT_TRUE(torch::allclose(token_nll(logits, labels).to(torch::kFloat64), reference, 1e-5, 1e-5));
}

TEST(PerplexityTest, ReconstructBatchesShiftLabelsAndPad) {
  const auto batches = make_batches({{5, 6, 7}, {8, 9, 10, 11, 12}, {13}}, PerplexityMode::kReconstruct, 2,
                                    tiny_metadata());
  ASSERT_EQ(batches.size(), 2u);
  const EvalBatch& b = batches[0];  // the two longest windows, longest first
  EXPECT_EQ(b.window_indices, (std::vector<size_t>{1, 0}));
  EXPECT_TRUE(torch::equal(b.input_ids, torch::tensor({8, 9, 10, 11, 12, 5, 6, 7, 0, 0}, torch::kInt64).reshape({2, 5})));
  EXPECT_TRUE(torch::equal(b.attention_mask, torch::tensor({1, 1, 1, 1, 1, 1, 1, 1, 0, 0}, torch::kInt64).reshape({2, 5})));
  EXPECT_TRUE(torch::equal(b.labels, b.input_ids));
  EXPECT_TRUE(torch::equal(b.decoder_input_ids, torch::tensor({0, 8, 9, 10, 11, 0, 5, 6, 0, 0}, torch::kInt64).reshape({2, 5})));
  EXPECT_TRUE(torch::equal(b.label_mask, b.attention_mask.to(torch::kBool)));
  EXPECT_EQ(count_label_tokens(batches), 9);
}

TEST(PerplexityTest, PrefixBatchesSplitEachWindowInHalves) {
  const auto batches = make_batches({{5, 6, 7}, {8, 9, 10, 11, 12}, {13}}, PerplexityMode::kPrefix, 8, tiny_metadata());
  ASSERT_EQ(batches.size(), 1u);
  const EvalBatch& b = batches[0];
  EXPECT_EQ(b.window_indices, (std::vector<size_t>{1, 0}));  // the 1-token window gives no example
  // n = 5: encoder 2 tokens, labels 3; n = 3: encoder 1, labels 2.
  EXPECT_TRUE(torch::equal(b.input_ids, torch::tensor({8, 9, 5, 0}, torch::kInt64).reshape({2, 2})));
  EXPECT_TRUE(torch::equal(b.attention_mask, torch::tensor({1, 1, 1, 0}, torch::kInt64).reshape({2, 2})));
  EXPECT_TRUE(torch::equal(b.labels, torch::tensor({10, 11, 12, 6, 7, 0}, torch::kInt64).reshape({2, 3})));
  EXPECT_TRUE(torch::equal(b.decoder_input_ids, torch::tensor({0, 10, 11, 0, 6, 0}, torch::kInt64).reshape({2, 3})));
  EXPECT_EQ(count_label_tokens(batches), 5);
  try {
    make_batches({{5}, {6}}, PerplexityMode::kPrefix, 8, tiny_metadata());
    FAIL() << "expected DataError";
  } catch (const DataError& e) {
    EXPECT_THAT(e.what(), HasSubstr("text too short for prefix mode"));
  }
}

TEST(PerplexityTest, MakeBatchesRejectsBadInput) {
  EXPECT_THROW(make_batches({{5, 6}}, PerplexityMode::kReconstruct, 0, tiny_metadata()), UsageError);
  EXPECT_THROW(make_batches({{5, 384}}, PerplexityMode::kReconstruct, 1, tiny_metadata()), UsageError);
  EXPECT_THROW(make_batches({{5, -1}}, PerplexityMode::kReconstruct, 1, tiny_metadata()), UsageError);
  EXPECT_THROW(make_batches({std::vector<int64_t>(65, 3)}, PerplexityMode::kReconstruct, 1, tiny_metadata()), UsageError);
  EXPECT_THROW(make_batches({}, PerplexityMode::kReconstruct, 1, tiny_metadata()), DataError);
  EXPECT_EQ(parse_perplexity_mode("prefix"), PerplexityMode::kPrefix);
  EXPECT_EQ(to_string(PerplexityMode::kReconstruct), "reconstruct");
  EXPECT_THROW(parse_perplexity_mode("both"), UsageError);
}

TEST(PerplexityTest, BatchSizeDoesNotChangeTheResult) {
  ContractModel model = ContractModel::load(fixture("tiny.pt"));
  const auto windows = default_windows(model);
  ASSERT_GT(windows.size(), 8u);
  for (const PerplexityMode mode : {PerplexityMode::kReconstruct, PerplexityMode::kPrefix}) {
    const PerplexityResult one = evaluate_perplexity(model, make_batches(windows, mode, 1, model.metadata()));
    for (const int64_t batch_size : {3, 8}) {
      const PerplexityResult r = evaluate_perplexity(model, make_batches(windows, mode, batch_size, model.metadata()));
      EXPECT_EQ(r.tokens, one.tokens);
      expect_rel_near(r.nll_sum, one.nll_sum, kBatchingRelTol, to_string(mode) + " batch " + std::to_string(batch_size));
    }
  }
}

TEST(PerplexityTest, TokenCountsPerMode) {
  ContractModel model = ContractModel::load(fixture("tiny.pt"));
  const auto windows = default_windows(model);
  int64_t all = 0, second_halves = 0;
  for (const auto& w : windows) {
    const auto n = static_cast<int64_t>(w.size());
    all += n;
    if (n >= 2) second_halves += n - n / 2;
  }
  EXPECT_EQ(evaluate_perplexity(model, make_batches(windows, PerplexityMode::kReconstruct, 8, model.metadata())).tokens, all);
  EXPECT_EQ(evaluate_perplexity(model, make_batches(windows, PerplexityMode::kPrefix, 8, model.metadata())).tokens,
            second_halves);
}

TEST(PerplexityTest, HooksSeeEveryBatch) {
  ContractModel model = ContractModel::load(fixture("tiny.pt"));
  const auto batches = make_batches(default_windows(model), PerplexityMode::kReconstruct, 8, model.metadata());
  size_t calls = 0, last_done = 0;
  int64_t rows = 0;
  const PerplexityResult r = evaluate_perplexity(
      model, batches,
      [&](size_t done, size_t total) {
        EXPECT_EQ(done, last_done + 1);
        EXPECT_EQ(total, batches.size());
        last_done = done;
      },
      [&](const EvalBatch& b, const torch::Tensor& logits) {
        ++calls;
        rows += logits.size(0);
        EXPECT_EQ(logits.size(1), b.labels.size(1));
        EXPECT_EQ(logits.size(2), 384);
      });
  EXPECT_EQ(calls, batches.size());
  EXPECT_EQ(last_done, batches.size());
  EXPECT_EQ(rows, static_cast<int64_t>(default_windows(model).size()));
  EXPECT_GT(r.seconds, 0.0);
}

// The reference: tests/fixtures/reference_perplexity.py runs every window alone
// through torch.jit.load in Python and sums F.cross_entropy(reduction="sum").
PerplexityResult python_reference(const std::string& model, const std::vector<std::vector<int64_t>>& windows,
                                  PerplexityMode mode) {
  const std::string windows_path = ::testing::TempDir() + "perplexity_test_windows.json";
  std::ofstream(windows_path) << nlohmann::json(windows).dump();
  const auto out = nlohmann::json::parse(testing::run_command(
      testing::python() + " " + testing::shell_quote(QUANTPPL_SOURCE_DIR "/tests/fixtures/reference_perplexity.py") + " " +
      testing::shell_quote(model) + " " + testing::shell_quote(windows_path) + " " + to_string(mode)));
  return PerplexityResult{out["nll_sum"].get<double>(), out["tokens"].get<int64_t>(), 0};
}

TEST(PerplexityTest, EqualsPythonReference) {
  ContractModel model = ContractModel::load(fixture("tiny.pt"));
  const auto windows = default_windows(model);
  for (const PerplexityMode mode : {PerplexityMode::kReconstruct, PerplexityMode::kPrefix}) {
    const PerplexityResult ours = evaluate_perplexity(model, make_batches(windows, mode, 8, model.metadata()));
    const PerplexityResult ref = python_reference(fixture("tiny.pt"), windows, mode);
    EXPECT_EQ(ours.tokens, ref.tokens) << to_string(mode);
    expect_rel_near(ours.ppl(), ref.ppl(), kPythonRelTol, to_string(mode) + " ppl");
    // A random model is not uniform: the comparison is not trivially 384 vs 384.
    EXPECT_GT(std::abs(ours.ppl() - 384.0), 1.0) << to_string(mode);
  }
}

}  // namespace
}  // namespace quantppl
