// The shipped default model (models/default.pt) loads from C++ with its
// tokenizer, and reacts to quantization as the model issue requires.
#include <cmath>
#include <filesystem>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "fixture_support.h"
#include "quantppl/compare.h"
#include "quantppl/contract_model.h"

namespace quantppl {
namespace {

TEST(DefaultModelTest, LoadsWithItsTokenizerAndMetadata) {
  ASSERT_TRUE(std::filesystem::exists(default_model_path())) << default_model_path();
  ContractModel model = ContractModel::load(default_model_path());
  const ModelMetadata& m = model.metadata();
  EXPECT_EQ(m.architecture, "t5");
  EXPECT_EQ(m.pad_token_id, 0);
  EXPECT_EQ(m.eos_token_id, 1);
  EXPECT_EQ(m.decoder_start_token_id, 0);
  EXPECT_LE(model.tokenizer().piece_count(), m.vocab_size);
  const auto layers = model.linear_layers();
  EXPECT_GT(layers.size(), 10u);
  for (const auto& l : layers) EXPECT_EQ(l.weight.size(1) % 128, 0) << l.name;  // group32/64/128 apply everywhere
  EXPECT_EQ(layers.back().name, "lm_head");
}

TEST(DefaultModelTest, TokenizerMatchesPythonSentencepieceOnTheArchivesOwnModel) {
  ContractModel model = ContractModel::load(default_model_path());
  const std::string text = "A dictionary maps hashable keys to values; iterating over it yields the keys.";
  const std::string script =
      "import json, sys, torch, sentencepiece as spm\n"
      "extra = {'tokenizer.model': ''}\n"
      "torch.jit.load(sys.argv[1], _extra_files=extra)\n"
      "sp = spm.SentencePieceProcessor(model_proto=extra['tokenizer.model'])\n"
      "print(json.dumps(sp.encode(sys.argv[2])))\n";
  const auto expected = nlohmann::json::parse(testing::run_command(
      testing::python() + " -c " + testing::shell_quote(script) + " " + testing::shell_quote(default_model_path()) + " " +
      testing::shell_quote(text)));
  const std::vector<int64_t> ids = model.tokenizer().encode(text);
  EXPECT_EQ(ids, expected.get<std::vector<int64_t>>());
  EXPECT_GT(ids.size(), 10u);
}

// The model issue: 8-bit absmax per tensor changes perplexity by well under
// 2%; 4-bit per tensor clearly hurts; 4-bit per group hurts less.
TEST(DefaultModelTest, ReactsToQuantizationLikeARealLanguageModel) {
  CompareOptions o;
  o.variants = parse_variant_list("fp32,absmax:8,absmax:4,absmax:4:group64");
  const CompareReport r = run_compare(o);
  const auto delta = [&](size_t i) { return *r.results[i].delta_ppl_pct; };
  EXPECT_LT(std::abs(delta(1)), 1.0);
  EXPECT_GT(delta(2), 10.0);
  EXPECT_LT(delta(3), 0.25 * delta(2));
  EXPECT_GT(r.results[0].ppl, 1.0);
  EXPECT_LT(r.results[0].ppl, 1000.0);  // far from uniform over the 3072-token vocabulary
}

}  // namespace
}  // namespace quantppl
