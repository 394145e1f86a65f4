// Contract format_version 2 and causal models: metadata parsing (every field's
// type and range), loading the causal fixtures (tests/fixtures/make_causal_model.py),
// forward_causal against the module run by Python, and the engine on a causal model.
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "fixture_support.h"
#include "quantppl/contract_model.h"
#include "quantppl/engine.h"
#include "quantppl/error.h"
#include "quantppl/eval/causal_windows.h"
#include "quantppl/model_metadata.h"
#include "quantppl/output_file.h"

namespace quantppl {
namespace {

using ::testing::HasSubstr;
using nlohmann::json;
using testing::fixture;

json causal() {
  return json::parse(R"({
    "format_version": 2, "architecture": "causal", "vocab_size": 320, "max_length": 32,
    "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": null, "add_bos": true,
    "tokenizer": {"kind": "sentencepiece", "file": "tokenizer.model"},
    "source": {"checkpoint": "x"}, "config": {"hidden_size": 32}})");
}

std::string error_for(const json& j) {
  try {
    parse_model_metadata(j.dump(), "model 'm.pt': quantppl.json");
  } catch (const DataError& e) {
    EXPECT_THAT(e.what(), HasSubstr("model 'm.pt': quantppl.json: "));
    return e.what();
  }
  ADD_FAILURE() << "no DataError for " << j.dump();
  return {};
}

std::string error_with(json j, const std::string& key, const json& value) {
  j[key] = value;
  return error_for(j);
}

TEST(CausalMetadataTest, ParsesVersion2CausalFields) {
  const ModelMetadata m = parse_model_metadata(causal().dump(), "m");
  EXPECT_EQ(m.format_version, 2);
  EXPECT_TRUE(m.is_causal());
  EXPECT_EQ(m.bos_token_id, 1);
  EXPECT_EQ(m.eos_token_id, 2);
  EXPECT_EQ(m.pad_token_id, kNoToken);
  EXPECT_EQ(m.padding_id(), 0);
  EXPECT_TRUE(m.add_bos);
  EXPECT_EQ(m.tokenizer_kind, "sentencepiece");
  EXPECT_EQ(m.tokenizer_file, "tokenizer.model");
  json nulls = causal();
  nulls["bos_token_id"] = nullptr;
  nulls["eos_token_id"] = nullptr;
  nulls["pad_token_id"] = 7;
  nulls["add_bos"] = false;
  nulls["tokenizer"] = {{"kind", "bpe"}, {"file", "tokenizer.json"}};
  const ModelMetadata n = parse_model_metadata(nulls.dump(), "m");
  EXPECT_EQ(n.bos_token_id, kNoToken);
  EXPECT_EQ(n.eos_token_id, kNoToken);
  EXPECT_EQ(n.padding_id(), 7);
  EXPECT_EQ(n.tokenizer_kind, "bpe");
  EXPECT_EQ(n.tokenizer_file, "tokenizer.json");
}

TEST(CausalMetadataTest, Version2T5KeepsVersion1Meaning) {
  json t5 = json::parse(R"({"format_version": 2, "architecture": "t5", "vocab_size": 384, "pad_token_id": 0,
    "eos_token_id": 1, "decoder_start_token_id": 0, "max_length": 64, "source": {}})");
  const ModelMetadata m = parse_model_metadata(t5.dump(), "m");
  EXPECT_FALSE(m.is_causal());
  EXPECT_EQ(m.eos_token_id, 1);
  EXPECT_EQ(m.tokenizer_file, "tokenizer.model");
  t5["pad_token_id"] = nullptr;  // null is for causal models only
  EXPECT_THAT(error_for(t5), HasSubstr("field 'pad_token_id' must be an integer, got null"));
}

TEST(CausalMetadataTest, EveryFieldIsChecked) {
  const json c = causal();
  for (const char* key : {"bos_token_id", "eos_token_id", "pad_token_id", "add_bos", "vocab_size", "max_length"}) {
    json j = c;
    j.erase(key);
    EXPECT_THAT(error_for(j), HasSubstr(std::string("missing field '") + key + "'"));
  }
  EXPECT_THAT(error_with(c, "bos_token_id", "1"), HasSubstr("field 'bos_token_id' must be an integer or null, got \"1\""));
  EXPECT_THAT(error_with(c, "eos_token_id", 1.0), HasSubstr("field 'eos_token_id' must be an integer or null"));
  EXPECT_THAT(error_with(c, "pad_token_id", 320), HasSubstr("field 'pad_token_id' must be in [0, vocab_size = 320), got 320"));
  EXPECT_THAT(error_with(c, "bos_token_id", -1), HasSubstr("got -1"));
  EXPECT_THAT(error_with(c, "add_bos", 1), HasSubstr("field 'add_bos' must be true or false, got 1"));
  EXPECT_THAT(error_with(c, "bos_token_id", nullptr), HasSubstr("field 'add_bos' is true but bos_token_id is null"));
  EXPECT_THAT(error_with(c, "tokenizer", "sentencepiece"), HasSubstr("field 'tokenizer' must be an object"));
  EXPECT_THAT(error_with(c, "tokenizer", json{{"kind", "wordpiece"}, {"file", "vocab.txt"}}),
              HasSubstr("field 'tokenizer.kind' must be \"sentencepiece\" or \"bpe\", got \"wordpiece\""));
  EXPECT_THAT(error_with(c, "tokenizer", json{{"kind", "bpe"}, {"file", "quantppl.json"}}),
              HasSubstr("field 'tokenizer.file' must be \"tokenizer.json\" for kind \"bpe\", got \"quantppl.json\""));
  EXPECT_THAT(error_with(c, "tokenizer", json{{"kind", "bpe"}}), HasSubstr("missing field 'tokenizer.file'"));
  EXPECT_THAT(error_with(c, "config", json::array()), HasSubstr("field 'config' must be an object"));
  EXPECT_THAT(error_with(c, "architecture", "llama"),
              HasSubstr("architecture 'llama' is not supported (expected \"t5\" or \"causal\")"));
  EXPECT_THAT(error_with(c, "format_version", 1), HasSubstr("architecture 'causal' needs format_version 2"));
}

TEST(CausalModelTest, LoadsTheCausalFixture) {
  ContractModel model = ContractModel::load(fixture("tiny_causal.pt"));
  EXPECT_TRUE(model.metadata().is_causal());
  EXPECT_EQ(model.metadata().vocab_size, 320);
  EXPECT_EQ(model.tokenizer().piece_count(), 300);
  const auto layers = model.linear_layers();
  ASSERT_EQ(layers.size(), 2u * 7u + 1u);
  EXPECT_EQ(layers.front().name, "model.layers.0.self_attn.q_proj");
  EXPECT_EQ(layers.back().name, "lm_head");
}

TEST(CausalModelTest, ForwardCausalMatchesTheModuleRunInPython) {
  ContractModel model = ContractModel::load(fixture("tiny_causal.pt"));
  const torch::Tensor ids = (torch::arange(3 * 9, torch::kInt64).reshape({3, 9}) * 11 + 5) % 320;
  torch::Tensor mask = torch::ones({3, 9}, torch::kInt64);
  mask.index_put_({1, torch::indexing::Slice(5, torch::indexing::None)}, 0);
  const torch::Tensor logits = model.forward_causal(ids, mask);
  ASSERT_EQ(logits.sizes(), (std::vector<int64_t>{3, 9, 320}));
  const std::string script =
      "import sys, torch\n"
      "m = torch.jit.load(sys.argv[1])\n"
      "ids = (torch.arange(27).reshape(3, 9) * 11 + 5) % 320\n"
      "mask = torch.ones(3, 9, dtype=torch.long); mask[1, 5:] = 0\n"
      "with torch.no_grad(): l = m(ids, mask)\n"
      "print(' '.join(repr(float(x)) for x in [l[0, 0, 0], l[2, 8, 319], l[1, 4, 17], l.sum()]))\n";
  const std::string out = testing::run_command(testing::python() + " -c " + testing::shell_quote(script) + " " +
                                               testing::shell_quote(fixture("tiny_causal.pt")));
  std::istringstream in(out);
  double a, b, c, sum;
  in >> a >> b >> c >> sum;
  EXPECT_NEAR(logits[0][0][0].item<double>(), a, 1e-5);
  EXPECT_NEAR(logits[2][8][319].item<double>(), b, 1e-5);
  EXPECT_NEAR(logits[1][4][17].item<double>(), c, 1e-5);
  EXPECT_NEAR(logits.sum().item<double>(), sum, 1e-2);
}

TEST(CausalModelTest, WrongCallsAndShapes) {
  ContractModel model = ContractModel::load(fixture("tiny_causal.pt"));
  const torch::Tensor ids = torch::ones({1, 4}, torch::kInt64);
  EXPECT_THROW(model.forward(ids, ids, ids), UsageError);
  EXPECT_THROW(model.forward_causal(torch::ones({1, 33}, torch::kInt64), torch::ones({1, 33}, torch::kInt64)),
               UsageError);  // longer than max_length 32
  EXPECT_THROW(model.forward_causal(ids, torch::ones({1, 3}, torch::kInt64)), UsageError);
  ContractModel t5 = ContractModel::load(fixture("tiny.pt"));
  EXPECT_THROW(t5.forward_causal(ids, ids), UsageError);
  ContractModel wrong = ContractModel::load(fixture("causal_wrong_output.pt"));
  try {
    wrong.forward_causal(ids, ids);
    ADD_FAILURE() << "no DataError";
  } catch (const DataError& e) {
    EXPECT_THAT(e.what(), HasSubstr("expected float32 [1, 4, 320] (batch, sequence length, vocab_size)"));
  }
}

template <typename E>
std::string load_error(const std::string& path) {
  try {
    ContractModel::load(path);
  } catch (const E& e) {
    return e.what();
  }
  ADD_FAILURE() << "no exception of the expected type for " << path;
  return {};
}

TEST(CausalModelTest, BadCausalFilesAreDataErrors) {
  // A "bpe" tokenizer.json without vocab and merges (tiny_causal_bpe.pt is a valid one).
  EXPECT_THAT(load_error<DataError>(fixture("causal_bpe.pt")), HasSubstr("tokenizer.json: missing field 'model.vocab'"));
  EXPECT_THAT(load_error<DataError>(fixture("causal_v1.pt")), HasSubstr("architecture 'causal' needs format_version 2"));
  EXPECT_THAT(load_error<DataError>(fixture("causal_bad_bos.pt")), HasSubstr("add_bos"));
}

TEST(CausalModelTest, SaveKeepsTheMetadataAndTokenizer) {
  ContractModel model = ContractModel::load(fixture("tiny_causal.pt"));
  const std::string out = ::testing::TempDir() + "causal_model_test_saved.pt";
  model.save(out, model.metadata().json_text);
  ContractModel again = ContractModel::load(out);
  EXPECT_TRUE(again.metadata().is_causal());
  EXPECT_EQ(again.metadata().bos_token_id, 1);
  EXPECT_EQ(again.tokenizer().serialized_model(), model.tokenizer().serialized_model());
  std::remove(out.c_str());
}

TEST(CausalEngineTest, PrepareEvaluationBuildsCausalBatchesAndRejectsT5Modes) {
  EvalSetupOptions o;
  o.model_path = fixture("tiny_causal.pt");
  o.max_length = 16;
  o.batch_size = 4;
  const EvalSetup setup = prepare_evaluation(o);
  EXPECT_EQ(setup.provenance.mode, "causal");
  ASSERT_FALSE(setup.batches.empty());
  EXPECT_FALSE(setup.batches[0].decoder_input_ids.defined());
  // add_bos: every text token is scored once.
  EXPECT_EQ(count_label_tokens(setup.batches), setup.provenance.text_tokens);

  o.mode = PerplexityMode::kReconstruct;
  try {
    prepare_evaluation(o);
    ADD_FAILURE() << "no UsageError";
  } catch (const UsageError& e) {
    EXPECT_THAT(e.what(), HasSubstr("--mode reconstruct is for T5 models"));
    EXPECT_THAT(e.what(), HasSubstr("is a causal model"));
  }
  EvalSetupOptions t5;
  t5.model_path = fixture("tiny.pt");
  t5.mode = PerplexityMode::kLlamaCpp;
  EXPECT_THROW(prepare_evaluation(t5), UsageError);
  t5.mode = PerplexityMode::kReconstruct;
  t5.stride = 4;
  EXPECT_THROW(prepare_evaluation(t5), UsageError);
}

}  // namespace
}  // namespace quantppl
