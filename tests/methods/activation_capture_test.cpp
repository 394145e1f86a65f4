#include "quantppl/methods/activation_capture.h"

#include <unistd.h>

#include <fstream>
#include <map>
#include <set>

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "../fixture_support.h"
#include "quantppl/error.h"
#include "quantppl/perplexity.h"
#include "quantppl/text_windows.h"

namespace quantppl {
namespace {

using ::testing::HasSubstr;
using testing::fixture;

const std::string kDefaultText = QUANTPPL_SOURCE_DIR "/data/default_eval.txt";
const std::string kDefaultModel = QUANTPPL_SOURCE_DIR "/models/default.pt";

std::vector<std::string> all_layer_names(ContractModel& model) {
  std::vector<std::string> names;
  for (const LinearLayer& layer : model.linear_layers()) names.push_back(layer.name);
  return names;
}

std::vector<EvalBatch> text_batches(ContractModel& model, int64_t max_length, int64_t batch_size, size_t max_windows) {
  auto windows = load_eval_text(kDefaultText, model.tokenizer(), model.metadata().eos_token_id, max_length).windows;
  if (windows.size() > max_windows) windows.erase(windows.begin(), windows.end() - static_cast<long>(max_windows));
  return make_batches(windows, PerplexityMode::kReconstruct, batch_size, model.metadata());
}

const InputGroup& group_of(const ActivationCapture& capture, const std::string& name) {
  for (const CapturedLayer& layer : capture.layers()) {
    if (layer.name == name) return capture.groups()[static_cast<size_t>(layer.group)];
  }
  throw std::runtime_error("no layer " + name);
}

int64_t group_index(const ActivationCapture& capture, const std::string& name) {
  for (const CapturedLayer& layer : capture.layers()) {
    if (layer.name == name) return layer.group;
  }
  return -1;
}

// The capture graph's first output is module.forward's output, bit for bit: the graph is the
// forward graph with extra outputs, so the same kernels run on the same tensors.
TEST(ActivationCaptureTest, OutputEqualsForwardExactly) {
  for (const std::string& path : {fixture("tiny.pt"), kDefaultModel}) {
    ContractModel model = ContractModel::load(path);
    ActivationCapture capture(model, all_layer_names(model));
    // The last two windows: one full, one short, so the batch holds padding.
    for (const EvalBatch& batch : text_batches(model, model.metadata().max_length, 2, 2)) {
      const torch::Tensor expected = model.forward(batch.input_ids, batch.attention_mask, batch.decoder_input_ids);
      const CapturedBatch got = capture.run({batch.input_ids, batch.attention_mask, batch.decoder_input_ids});
      ASSERT_TRUE(got.output.defined()) << path;
      EXPECT_TRUE(torch::equal(got.output, expected)) << path;
      ASSERT_EQ(got.inputs.size(), capture.groups().size());
    }
  }
}

// Every Linear layer of the tiny T5 is found once; q/k/v share one input, wi_0/wi_1 one, and the
// cross-attention k/v of every decoder block read the one encoder output.
TEST(ActivationCaptureTest, GroupsLayersThatReadTheSameTensor) {
  ContractModel model = ContractModel::load(fixture("tiny.pt"));
  const auto names = all_layer_names(model);
  ActivationCapture capture(model, names);
  ASSERT_EQ(capture.layers().size(), names.size());
  EXPECT_EQ(capture.argument_count(), 3u);
  const std::string sa = "encoder.block.0.layer.0.SelfAttention.";
  EXPECT_EQ(group_index(capture, sa + "q"), group_index(capture, sa + "k"));
  EXPECT_EQ(group_index(capture, sa + "q"), group_index(capture, sa + "v"));
  EXPECT_NE(group_index(capture, sa + "q"), group_index(capture, sa + "o"));
  const std::string ff = "encoder.block.1.layer.1.DenseReluDense.";
  EXPECT_EQ(group_index(capture, ff + "wi_0"), group_index(capture, ff + "wi_1"));
  EXPECT_NE(group_index(capture, ff + "wi_0"), group_index(capture, ff + "wo"));
  const int64_t cross = group_index(capture, "decoder.block.0.layer.1.EncDecAttention.k");
  EXPECT_EQ(cross, group_index(capture, "decoder.block.0.layer.1.EncDecAttention.v"));
  EXPECT_EQ(cross, group_index(capture, "decoder.block.1.layer.1.EncDecAttention.k"));
  EXPECT_NE(cross, group_index(capture, "decoder.block.0.layer.1.EncDecAttention.q"));
  // Distinct inputs of the tiny model (2 encoder + 2 decoder blocks): encoder 4 per block
  // (qkv, o, wi, wo), decoder 6 per block (self qkv, self o, cross q, cross o, wi, wo),
  // the shared cross k/v, lm_head.
  EXPECT_EQ(capture.groups().size(), 2u * 4 + 2u * 6 + 1 + 1);
}

// Which forward arguments each input depends on: the encoder's only on input_ids and the mask,
// the decoder's on decoder_input_ids too; the cross-attention k/v only on the encoder side.
TEST(ActivationCaptureTest, DependenciesSeparateEncoderAndDecoder) {
  ContractModel model = ContractModel::load(fixture("tiny.pt"));
  ActivationCapture capture(model, all_layer_names(model));
  // Block 0's q/k/v read the embedded tokens only: the mask enters at the attention scores.
  EXPECT_EQ(group_of(capture, "encoder.block.0.layer.0.SelfAttention.q").depends_on, 0b001u);
  EXPECT_EQ(group_of(capture, "encoder.block.0.layer.0.SelfAttention.o").depends_on, 0b011u);
  EXPECT_EQ(group_of(capture, "encoder.block.1.layer.1.DenseReluDense.wo").depends_on, 0b011u);
  EXPECT_EQ(group_of(capture, "decoder.block.0.layer.1.EncDecAttention.k").depends_on, 0b011u);
  EXPECT_EQ(group_of(capture, "decoder.block.0.layer.0.SelfAttention.q").depends_on & 0b100u, 0b100u);
  EXPECT_EQ(group_of(capture, "decoder.block.1.layer.1.EncDecAttention.q").depends_on & 0b100u, 0b100u);
  EXPECT_EQ(group_of(capture, "lm_head").depends_on & 0b100u, 0b100u);
}

TEST(ActivationCaptureTest, InputsHaveTheLayersShapes) {
  ContractModel model = ContractModel::load(fixture("tiny.pt"));
  ActivationCapture capture(model, {"encoder.block.0.layer.1.DenseReluDense.wo", "lm_head",
                                    "decoder.block.1.layer.1.EncDecAttention.v"},
                            /*keep_output=*/false);
  const auto batches = text_batches(model, 16, 3, 3);
  const EvalBatch& b = batches.front();
  const CapturedBatch got = capture.run({b.input_ids, b.attention_mask, b.decoder_input_ids});
  EXPECT_FALSE(got.output.defined());
  ASSERT_EQ(got.inputs.size(), 3u);
  EXPECT_EQ(got.inputs[0].sizes(), torch::IntArrayRef({3, b.input_ids.size(1), 256}));        // d_ff
  EXPECT_EQ(got.inputs[1].sizes(), torch::IntArrayRef({3, b.decoder_input_ids.size(1), 128}));  // d_model
  EXPECT_EQ(got.inputs[2].sizes(), torch::IntArrayRef({3, b.input_ids.size(1), 128}));        // encoder output
}

// The capture reads the module's weights when it runs: an in-place edit after construction is seen.
TEST(ActivationCaptureTest, SeesWeightEditsMadeAfterConstruction) {
  ContractModel model = ContractModel::load(fixture("tiny.pt"));
  ActivationCapture capture(model, all_layer_names(model));
  const EvalBatch b = text_batches(model, 16, 1, 1).front();
  const CapturedBatch before = capture.run({b.input_ids, b.attention_mask, b.decoder_input_ids});
  {
    torch::NoGradGuard no_grad;
    model.linear_layers().front().weight.mul_(0.5);
  }
  const CapturedBatch after = capture.run({b.input_ids, b.attention_mask, b.decoder_input_ids});
  EXPECT_TRUE(torch::equal(after.output, model.forward(b.input_ids, b.attention_mask, b.decoder_input_ids)));
  EXPECT_FALSE(torch::equal(after.output, before.output));
}

TEST(ActivationCaptureTest, RejectsBadSelections) {
  ContractModel model = ContractModel::load(fixture("tiny.pt"));
  EXPECT_THROW(ActivationCapture(model, {}), UsageError);
  try {
    ActivationCapture(model, {"lm_head", "lm_head"});
    FAIL();
  } catch (const UsageError& e) {
    EXPECT_THAT(e.what(), HasSubstr("'lm_head' selected twice"));
  }
  try {
    ActivationCapture(model, {"encoder.block.9.nothing"});
    FAIL();
  } catch (const UsageError& e) {
    EXPECT_THAT(e.what(), HasSubstr("no Linear layer 'encoder.block.9.nothing'"));
  }
  ActivationCapture capture(model, {"lm_head"});
  EXPECT_THROW(capture.run({torch::zeros({1, 2}, torch::kLong)}), UsageError);
}

// Scripted modules that break the capture's assumptions, built by Python with the tiny
// fixture's metadata and tokenizer: a Linear called twice, and one called inside an `if`.
std::string write_module(const std::string& name, const std::string& body) {
  char dir_template[] = "/tmp/quantppl_capture_XXXXXX";
  const std::string dir = ::mkdtemp(dir_template);
  const std::string out = dir + "/" + name + ".pt";
  const std::string script = dir + "/make.py";
  std::ofstream(script) << R"(
import json, sys, zipfile, torch
from torch import nn, Tensor
src = sys.argv[1]
z = zipfile.ZipFile(src)
meta = [n for n in z.namelist() if n.endswith("extra/quantppl.json")][0]
tok = [n for n in z.namelist() if n.endswith("extra/tokenizer.model")][0]
class M(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(384, 8)
        self.fc = nn.Linear(8, 8)
        self.out = nn.Linear(8, 384)
    def forward(self, input_ids: Tensor, attention_mask: Tensor, decoder_input_ids: Tensor) -> Tensor:
)" + body + R"(
torch.manual_seed(0)
m = torch.jit.script(M().eval())
torch.jit.save(m, sys.argv[2], _extra_files={"quantppl.json": z.read(meta), "tokenizer.model": z.read(tok)})
)";
  testing::run_command(testing::python() + " " + testing::shell_quote(script) + " " +
                       testing::shell_quote(fixture("tiny.pt")) + " " + testing::shell_quote(out));
  return out;
}

TEST(ActivationCaptureTest, LayerCalledTwiceIsAnError) {
  ContractModel model = ContractModel::load(write_module("twice", R"(
        h = self.emb(decoder_input_ids)
        h = self.fc(self.fc(h))
        return self.out(h)
)"));
  try {
    ActivationCapture(model, {"fc"});
    FAIL();
  } catch (const DataError& e) {
    EXPECT_THAT(e.what(), HasSubstr("'fc' is called 2 times"));
  }
  ActivationCapture ok(model, {"out"});  // the other layer is fine
  EXPECT_EQ(ok.groups().size(), 1u);
}

TEST(ActivationCaptureTest, LayerInsideControlFlowIsAnError) {
  ContractModel model = ContractModel::load(write_module("branch", R"(
        h = self.emb(decoder_input_ids)
        if bool(attention_mask.sum() > 0):
            h = self.fc(h)
        return self.out(h)
)"));
  try {
    ActivationCapture(model, {"fc", "out"});
    FAIL();
  } catch (const DataError& e) {
    EXPECT_THAT(e.what(), HasSubstr("'fc' is called inside control flow"));
  }
}

}  // namespace
}  // namespace quantppl
