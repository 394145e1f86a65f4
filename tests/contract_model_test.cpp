#include "quantppl/contract_model.h"

#include <dirent.h>
#include <sys/stat.h>

#include <fstream>
#include <limits>

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>
#include <torch/torch.h>

#include "fixture_support.h"
#include "quantppl/error.h"

namespace quantppl {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;
using testing::fixture;

std::string fresh_dir(const std::string& name) {
  const std::string dir = ::testing::TempDir() + "contract_model_test_" + name;
  testing::run_command("rm -rf " + testing::shell_quote(dir) + " && mkdir -p " + testing::shell_quote(dir));
  return dir;
}

std::vector<std::string> list_dir(const std::string& dir) {
  std::vector<std::string> names;
  DIR* d = opendir(dir.c_str());
  while (const dirent* e = d ? readdir(d) : nullptr) {
    const std::string n = e->d_name;
    if (n != "." && n != "..") names.push_back(n);
  }
  if (d) closedir(d);
  std::sort(names.begin(), names.end());
  return names;
}

// Loads `name` from the fixtures expecting an exception of type E; returns its message.
template <typename E>
std::string load_error(const std::string& path) {
  try {
    ContractModel::load(path);
  } catch (const E& e) {
    EXPECT_EQ(std::string(e.what()).find('\n'), std::string::npos) << e.what();
    return e.what();
  } catch (const std::exception& e) {
    ADD_FAILURE() << "wrong exception type for " << path << ": " << e.what();
    return {};
  }
  ADD_FAILURE() << "no exception for " << path;
  return {};
}

torch::Tensor small_batch_ids(int64_t rows, int64_t cols, int64_t offset) {
  return (torch::arange(rows * cols, torch::kInt64).reshape({rows, cols}) * 7 + offset) % 300;
}

TEST(ContractModelTest, LoadsTheExportedTinyModel) {
  ContractModel model = ContractModel::load(fixture("tiny.pt"));
  EXPECT_EQ(model.path(), fixture("tiny.pt"));
  // make_tiny_model.py: VOCAB 384, MAX_LENGTH 64, 300 sentencepiece pieces.
  EXPECT_EQ(model.metadata().vocab_size, 384);
  EXPECT_EQ(model.metadata().max_length, 64);
  EXPECT_EQ(model.metadata().eos_token_id, 1);
  EXPECT_EQ(model.tokenizer().piece_count(), 300);
  EXPECT_THAT(model.metadata().source, HasSubstr("scripts/export_t5.py"));
  EXPECT_FALSE(model.module().is_training());
}

TEST(ContractModelTest, DemanglesTorchScriptTypeNames) {
  EXPECT_EQ(demangle_torchscript_type("__torch__.torch.nn.modules.linear.___torch_mangle_13.Linear"),
            "__torch__.torch.nn.modules.linear.Linear");
  EXPECT_EQ(demangle_torchscript_type("__torch__.torch.nn.modules.linear.Linear"),
            "__torch__.torch.nn.modules.linear.Linear");
  EXPECT_EQ(demangle_torchscript_type("__torch__.t5.___torch_mangle_1.___torch_mangle_22.Foo"), "__torch__.t5.Foo");
  // What the pattern ___torch_mangle_\d+\. does not match stays (no digits, no dot, one
  // underscore more in front: the match starts one later, as a regex search would).
  EXPECT_EQ(demangle_torchscript_type("a.___torch_mangle_.B"), "a.___torch_mangle_.B");
  EXPECT_EQ(demangle_torchscript_type("a.___torch_mangle_12"), "a.___torch_mangle_12");
  EXPECT_EQ(demangle_torchscript_type("a.____torch_mangle_3.B"), "a._B");
  // Issue 20: a hostile type name with a digit run of a million characters is scanned, not
  // matched by a recursive regex executor (which overflowed the stack).
  const std::string hostile = "x.___torch_mangle_" + std::string(1000000, '7') + ".Linear";
  EXPECT_EQ(demangle_torchscript_type(hostile), "x.Linear");
  EXPECT_EQ(demangle_torchscript_type(hostile.substr(0, hostile.size() - 7)), hostile.substr(0, hostile.size() - 7));
}

TEST(ContractModelTest, LinearLayersMatchPythonsNamedModulesOrder) {
  ContractModel model = ContractModel::load(fixture("tiny.pt"));
  // Reference: the scripted modules whose original Python class is Linear.
  const std::string script =
      "import json, sys, torch\n"
      "m = torch.jit.load(sys.argv[1])\n"
      "print(json.dumps([[n, list(mod.weight.shape)] for n, mod in m.named_modules() if mod.original_name == 'Linear']))\n";
  const auto expected = nlohmann::json::parse(testing::run_command(
      testing::python() + " -c " + testing::shell_quote(script) + " " + testing::shell_quote(fixture("tiny.pt"))));
  const std::vector<LinearLayer> layers = model.linear_layers();
  ASSERT_EQ(layers.size(), expected.size());
  // 2 encoder blocks x (q,k,v,o + wi_0,wi_1,wo) + 2 decoder blocks x (2 x 4 attention + 3 ff) + lm_head.
  EXPECT_EQ(layers.size(), 2u * 7 + 2u * 11 + 1);
  for (size_t i = 0; i < layers.size(); ++i) {
    EXPECT_EQ(layers[i].name, expected[i][0].get<std::string>());
    EXPECT_EQ(layers[i].weight.sizes().vec(), expected[i][1].get<std::vector<int64_t>>());
    EXPECT_EQ(layers[i].weight.scalar_type(), torch::kFloat32);
  }
  EXPECT_EQ(layers.front().name, "encoder.block.0.layer.0.SelfAttention.q");
  EXPECT_EQ(layers.back().name, "lm_head");
}

TEST(ContractModelTest, LinearWeightsAliasTheModuleParameters) {
  ContractModel model = ContractModel::load(fixture("tiny.pt"));
  std::vector<LinearLayer> layers = model.linear_layers();
  {
    torch::NoGradGuard no_grad;
    layers[3].weight.fill_(0.25f);
  }
  for (const auto& p : model.module().named_parameters()) {
    if (p.name == layers[3].name + ".weight") {
      EXPECT_TRUE(torch::all(p.value == 0.25f).item<bool>());
      return;
    }
  }
  FAIL() << "parameter " << layers[3].name << ".weight not found";
}

TEST(ContractModelTest, ForwardReturnsBatchByLengthByVocab) {
  ContractModel model = ContractModel::load(fixture("tiny.pt"));
  const torch::Tensor ids = small_batch_ids(2, 5, 3);
  const torch::Tensor mask = torch::ones({2, 5}, torch::kInt64);
  const torch::Tensor logits = model.forward(ids, mask, small_batch_ids(2, 4, 0));
  EXPECT_EQ(logits.sizes().vec(), (std::vector<int64_t>{2, 4, 384}));
  EXPECT_EQ(logits.scalar_type(), torch::kFloat32);
  EXPECT_TRUE(torch::isfinite(logits).all().item<bool>());
}

// forward() runs under InferenceMode; the weights must stay editable in place
// afterwards (the whole compare loop depends on it).
TEST(ContractModelTest, InPlaceWeightEditAfterForward) {
  ContractModel model = ContractModel::load(fixture("tiny.pt"));
  const torch::Tensor ids = small_batch_ids(1, 6, 5);
  const torch::Tensor mask = torch::ones({1, 6}, torch::kInt64);
  const torch::Tensor dec = small_batch_ids(1, 6, 1);
  const torch::Tensor before = model.forward(ids, mask, dec).clone();
  LinearLayer lm_head = model.linear_layers().back();
  const torch::Tensor original = lm_head.weight.clone();
  {
    torch::NoGradGuard no_grad;
    ASSERT_NO_THROW(lm_head.weight.mul_(2.0f));
  }
  const torch::Tensor doubled = model.forward(ids, mask, dec);
  EXPECT_TRUE(torch::allclose(doubled, before * 2, 1e-5, 1e-5));  // lm_head is linear in its weight
  {
    torch::NoGradGuard no_grad;
    lm_head.weight.copy_(original);
  }
  EXPECT_TRUE(torch::equal(model.forward(ids, mask, dec), before));
}

TEST(ContractModelTest, MissingPathAndDirectoryAreIoErrors) {
  EXPECT_THAT(load_error<IoError>("/nonexistent/model.pt"), HasSubstr("model '/nonexistent/model.pt'"));
  EXPECT_THAT(load_error<IoError>(testing::fixtures_dir()), HasSubstr("is a directory"));
}

TEST(ContractModelTest, FilesThatAreNotContractModelsAreDataErrors) {
  const std::string empty = fresh_dir("empty") + "/empty.pt";
  std::ofstream{empty};
  EXPECT_THAT(load_error<DataError>(empty), HasSubstr("is empty (0 bytes)"));
  const std::string junk = load_error<DataError>(fixture("not_torchscript.pt"));
  EXPECT_THAT(junk, HasSubstr("not_torchscript.pt' is not a TorchScript archive"));
  EXPECT_THAT(junk, Not(HasSubstr("Exception raised from")));  // no LibTorch backtrace
  EXPECT_THAT(load_error<DataError>(fixture("no_metadata.pt")), HasSubstr("has no quantppl.json"));
  EXPECT_THAT(load_error<DataError>(fixture("no_tokenizer.pt")), HasSubstr("has no tokenizer.model"));
  EXPECT_THAT(load_error<DataError>(fixture("bad_json.pt")), HasSubstr("bad_json.pt': quantppl.json: not valid JSON"));
  EXPECT_THAT(load_error<DataError>(fixture("bad_vocab.pt")),
              HasSubstr("quantppl.json: field 'vocab_size' must be a positive integer, got -3"));
  EXPECT_THAT(load_error<DataError>(fixture("small_vocab.pt")),
              HasSubstr("tokenizer.model has 300 pieces, more than the vocab_size 64"));
  EXPECT_THAT(load_error<DataError>(fixture("no_linear.pt")), HasSubstr("has no torch.nn.Linear layer"));
  EXPECT_THAT(load_error<DataError>(fixture("nan_weight.pt")),
              HasSubstr("Linear layer 'encoder.block.1.layer.1.DenseReluDense.wo' has NaN or Inf weights"));
  EXPECT_THAT(load_error<DataError>(fixture("double_weight.pt")),
              HasSubstr("Linear layer 'proj' has a Double weight of shape [384, 8], expected a float32 matrix"));
}

// The finiteness check sums each weight in float32 first; a sum that
// overflows although every weight is finite must not be reported.
TEST(ContractModelTest, FiniteWeightsWithOverflowingSumLoadAndInfDoesNot) {
  const std::string dir = fresh_dir("finite");
  ContractModel model = ContractModel::load(fixture("tiny.pt"));
  LinearLayer lm_head = model.linear_layers().back();
  {
    torch::NoGradGuard no_grad;
    lm_head.weight.fill_(3e38f);
  }
  model.save(dir + "/huge.pt", model.metadata().json_text);
  EXPECT_NO_THROW(ContractModel::load(dir + "/huge.pt"));
  {
    torch::NoGradGuard no_grad;
    lm_head.weight.fill_(0.5f);
    lm_head.weight[7][3] = -std::numeric_limits<float>::infinity();
  }
  model.save(dir + "/inf.pt", model.metadata().json_text);
  EXPECT_THAT(load_error<DataError>(dir + "/inf.pt"), HasSubstr("Linear layer 'lm_head' has NaN or Inf weights"));
}

TEST(ContractModelTest, ForwardContractViolationsAreOneLineDataErrors) {
  const torch::Tensor ids = small_batch_ids(1, 3, 0);
  const torch::Tensor mask = torch::ones({1, 3}, torch::kInt64);
  ContractModel wrong_output = ContractModel::load(fixture("wrong_output.pt"));
  try {
    wrong_output.forward(ids, mask, ids);
    FAIL() << "expected DataError";
  } catch (const DataError& e) {
    EXPECT_THAT(e.what(), HasSubstr("forward returned Float [1, 3, 385], expected float32 [1, 3, 384]"));
  }
  ContractModel wrong_signature = ContractModel::load(fixture("wrong_signature.pt"));
  try {
    wrong_signature.forward(ids, mask, ids);
    FAIL() << "expected DataError";
  } catch (const DataError& e) {
    EXPECT_THAT(e.what(), HasSubstr("wrong_signature.pt': forward failed: "));
    EXPECT_EQ(std::string(e.what()).find('\n'), std::string::npos) << e.what();
  }
  // An error inside the TorchScript interpreter (an id outside the embedding)
  // comes out as its last line, without the two tracebacks.
  ContractModel tiny = ContractModel::load(fixture("tiny.pt"));
  try {
    tiny.forward(ids, mask, torch::full({1, 3}, 1000, torch::kInt64));
    FAIL() << "expected DataError";
  } catch (const DataError& e) {
    EXPECT_THAT(e.what(), HasSubstr("tiny.pt': forward failed: RuntimeError: index out of range in self"));
    EXPECT_EQ(std::string(e.what()).find('\n'), std::string::npos) << e.what();
  }
  EXPECT_THROW(tiny.forward(ids, mask, torch::zeros({2, 3}, torch::kInt64)), UsageError);
  EXPECT_THROW(tiny.forward(ids, mask.to(torch::kFloat32), ids), UsageError);
}

TEST(ContractModelTest, TokenizerOverride) {
  ContractModel model = ContractModel::load(fixture("tiny.pt"), fixture("tiny.model"));
  EXPECT_EQ(model.tokenizer().source_name(), "tokenizer '" + fixture("tiny.model") + "'");
  EXPECT_THROW(ContractModel::load(fixture("tiny.pt"), "/nonexistent/spiece.model"), IoError);
  // The override is checked against vocab_size like the embedded tokenizer.
  try {
    ContractModel::load(fixture("small_vocab.pt"), fixture("tiny.model"));
    FAIL() << "expected DataError";
  } catch (const DataError& e) {
    EXPECT_THAT(e.what(), HasSubstr("tokenizer '" + fixture("tiny.model") + "' has 300 pieces"));
  }
}

TEST(ContractModelTest, SaveRoundTripsWeightsMetadataAndTokenizer) {
  const std::string dir = fresh_dir("save");
  const std::string out = dir + "/variant.pt";
  ContractModel model = ContractModel::load(fixture("tiny.pt"));
  LinearLayer q = model.linear_layers().front();
  {
    torch::NoGradGuard no_grad;
    q.weight.mul_(0.5f);
  }
  model.save(out, metadata_with_variant(model.metadata().json_text, "absmax:8"));
  EXPECT_EQ(list_dir(dir), std::vector<std::string>{"variant.pt"});  // no temporary file left
  struct stat st {};
  ASSERT_EQ(::stat(out.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0644u);

  ContractModel reloaded = ContractModel::load(out);
  EXPECT_EQ(reloaded.metadata().variant, "absmax:8");
  EXPECT_EQ(reloaded.metadata().vocab_size, model.metadata().vocab_size);
  EXPECT_EQ(reloaded.tokenizer().serialized_model(), model.tokenizer().serialized_model());
  const auto a = model.linear_layers();
  const auto b = reloaded.linear_layers();
  ASSERT_EQ(a.size(), b.size());
  for (size_t i = 0; i < a.size(); ++i) EXPECT_TRUE(torch::equal(a[i].weight, b[i].weight)) << a[i].name;

  // Overwriting an existing file is atomic too.
  model.save(out, model.metadata().json_text);
  EXPECT_EQ(ContractModel::load(out).metadata().variant, "");
  EXPECT_EQ(list_dir(dir), std::vector<std::string>{"variant.pt"});
}

TEST(ContractModelTest, SaveErrorsLeaveNothingBehind) {
  const std::string dir = fresh_dir("save_errors");
  ContractModel model = ContractModel::load(fixture("tiny.pt"));
  EXPECT_THROW(model.save(dir + "/no/such/dir/out.pt", model.metadata().json_text), IoError);
  EXPECT_THROW(model.save(dir + "/out.pt", "{\"format_version\": 2}"), DataError);
  EXPECT_THROW(model.save(dir, model.metadata().json_text), IoError);
  EXPECT_TRUE(list_dir(dir).empty());
}

}  // namespace
}  // namespace quantppl
