#include "quantppl/methods/calibration.h"

#include <unistd.h>

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "../fixture_support.h"
#include "quantppl/error.h"
#include "quantppl/methods/activation_capture.h"
#include "quantppl/methods/calibration_file.h"
#include "quantppl/text_windows.h"

namespace quantppl {
namespace {

using ::testing::HasSubstr;
using testing::fixture;

const std::string kDefaultText = QUANTPPL_SOURCE_DIR "/data/default_eval.txt";
const std::string kCalibrationText = QUANTPPL_SOURCE_DIR "/data/calibration.txt";
// Same math, different batching: BLAS blocking and the float32 GEMM per batch (bound (4) of
// calibration.h is ~n_b * 6e-8 at worst; observed ~1e-6).
constexpr double kBatchingRelTol = 2e-5;

std::vector<std::string> all_layer_names(ContractModel& model) {
  std::vector<std::string> names;
  for (const LinearLayer& layer : model.linear_layers()) names.push_back(layer.name);
  return names;
}

std::vector<CalibrationBatch> batches_of(ContractModel& model, const std::vector<std::vector<int64_t>>& windows,
                                         int64_t batch_size) {
  std::vector<CalibrationBatch> out;
  for (const EvalBatch& b : make_batches(windows, PerplexityMode::kReconstruct, batch_size, model.metadata())) {
    out.push_back(t5_calibration_batch(b));
  }
  return out;
}

// 5 windows of 16 tokens and one short one: batches of 4 pad the short window.
std::vector<std::vector<int64_t>> small_windows(ContractModel& model) {
  auto ids = load_eval_text(kDefaultText, model.tokenizer(), model.metadata().eos_token_id, 64).token_ids;
  ids.resize(16 * 5 + 7);
  return cut_windows(ids, 16);
}

double max_rel_diff(const torch::Tensor& a, const torch::Tensor& b) {
  const torch::Tensor da = a.to(torch::kFloat64), db = b.to(torch::kFloat64);
  return ((da - db).abs().max() / db.abs().max().clamp_min(1e-30)).item<double>();
}

// (1)-(3) from the captured inputs, computed directly in float64 over the real positions only
// (an independent computation of the same definitions: mask, scale, sums).
TEST(CalibrationTest, StatisticsMatchDirectFloat64Computation) {
  ContractModel model = ContractModel::load(fixture("tiny.pt"));
  const auto names = all_layer_names(model);
  const auto windows = small_windows(model);
  const auto batches = batches_of(model, windows, 4);
  const CalibrationStats stats = collect_calibration_stats(model, names, batches);
  ASSERT_EQ(stats.layers.size(), names.size());
  EXPECT_EQ(stats.model_sha256, model.file_sha256());

  ActivationCapture capture(model, names);
  for (size_t i = 0; i < names.size(); ++i) {
    const LayerActivationStats& s = stats.layers[i];
    EXPECT_EQ(s.name, names[i]);
    // Decoder-side positions (label_mask): decoder layers except the cross-attention k/v, and lm_head.
    const bool cross_kv = names[i].find("EncDecAttention.k") != std::string::npos ||
                          names[i].find("EncDecAttention.v") != std::string::npos;
    const bool decoder = (names[i].rfind("decoder.", 0) == 0 && !cross_kv) || names[i] == "lm_head";
    torch::Tensor xtx = torch::zeros({s.in_features, s.in_features}, torch::kFloat64);
    torch::Tensor sum_abs = torch::zeros({s.in_features}, torch::kFloat64);
    torch::Tensor max_abs = torch::zeros({s.in_features}, torch::kFloat64);
    int64_t n = 0;
    for (const CalibrationBatch& b : batches) {
      const CapturedBatch got = capture.run(b.arguments);
      const torch::Tensor x = got.inputs[static_cast<size_t>(capture.layers()[i].group)].to(torch::kFloat64);
      const torch::Tensor mask = decoder ? b.position_masks[2] : b.position_masks[0];
      for (int64_t r = 0; r < x.size(0); ++r) {
        for (int64_t t = 0; t < x.size(1); ++t) {
          if (!mask[r][t].item<bool>()) continue;
          const torch::Tensor v = x[r][t];
          xtx += torch::outer(v, v);
          sum_abs += v.abs();
          max_abs = torch::maximum(max_abs, v.abs());
          ++n;
        }
      }
    }
    EXPECT_EQ(s.tokens, n) << names[i];
    EXPECT_EQ(n, 16 * 5 + 7) << names[i];
    EXPECT_LT(max_rel_diff(s.hessian, xtx * (2.0 / n)), kBatchingRelTol) << names[i];
    EXPECT_LT(max_rel_diff(s.mean_abs, sum_abs / n), 1e-6) << names[i];
    EXPECT_TRUE(torch::equal(s.max_abs, max_abs.to(torch::kFloat32))) << names[i];
  }
}

// Padding never counts: batches of 4 (one padded row) and of 1 (no padding) agree.
TEST(CalibrationTest, PaddingPositionsAreExcluded) {
  ContractModel model = ContractModel::load(fixture("tiny.pt"));
  const auto names = all_layer_names(model);
  const auto windows = small_windows(model);
  const CalibrationStats padded = collect_calibration_stats(model, names, batches_of(model, windows, 4));
  const CalibrationStats single = collect_calibration_stats(model, names, batches_of(model, windows, 1));
  for (size_t i = 0; i < names.size(); ++i) {
    EXPECT_EQ(padded.layers[i].tokens, single.layers[i].tokens);
    EXPECT_LT(max_rel_diff(padded.layers[i].hessian, single.layers[i].hessian), kBatchingRelTol) << names[i];
    EXPECT_LT(max_rel_diff(padded.layers[i].mean_abs, single.layers[i].mean_abs), kBatchingRelTol) << names[i];
    EXPECT_LT(max_rel_diff(padded.layers[i].max_abs, single.layers[i].max_abs), kBatchingRelTol) << names[i];
  }
}

TEST(CalibrationTest, HessianIsSymmetricPositiveSemidefinite) {
  ContractModel model = ContractModel::load(fixture("tiny.pt"));
  const auto names = all_layer_names(model);
  const CalibrationStats stats = collect_calibration_stats(model, names, batches_of(model, small_windows(model), 4));
  for (const LayerActivationStats& s : stats.layers) {
    EXPECT_EQ(s.hessian.scalar_type(), torch::kFloat32);
    EXPECT_TRUE(torch::equal(s.hessian, s.hessian.t())) << s.name;
    // torch::linalg_eigvalsh (ATen), not torch::linalg::eigvalsh: LibTorch 2.x dropped the C++ API's torch/linalg.h.
    const torch::Tensor eig = torch::linalg_eigvalsh(s.hessian.to(torch::kFloat64), "L");
    // PSD up to the float32 rounding of the entries (bound (4)): relative to the largest eigenvalue.
    EXPECT_GE(eig.min().item<double>(), -1e-5 * eig.max().item<double>()) << s.name;
    EXPECT_TRUE((s.hessian.diagonal() >= 0).all().item<bool>()) << s.name;
  }
}

// Layers of one input group alias one set of tensors; a subset of layers gives the same numbers
// as the full set (GPTQ's sequential mode collects a block at a time).
TEST(CalibrationTest, SharedInputsAndSubsets) {
  ContractModel model = ContractModel::load(fixture("tiny.pt"));
  const auto batches = batches_of(model, small_windows(model), 4);
  const CalibrationStats all = collect_calibration_stats(model, all_layer_names(model), batches);
  const LayerActivationStats* q = find_layer_stats(all, "encoder.block.0.layer.0.SelfAttention.q");
  const LayerActivationStats* v = find_layer_stats(all, "encoder.block.0.layer.0.SelfAttention.v");
  const LayerActivationStats* o = find_layer_stats(all, "encoder.block.0.layer.0.SelfAttention.o");
  ASSERT_TRUE(q && v && o);
  EXPECT_EQ(q->shared_input, v->shared_input);
  EXPECT_NE(q->shared_input, o->shared_input);
  EXPECT_TRUE(q->hessian.is_same(v->hessian));
  EXPECT_EQ(find_layer_stats(all, "no.such.layer"), nullptr);

  const CalibrationStats part = collect_calibration_stats(model, {"decoder.block.1.layer.2.DenseReluDense.wo"}, batches);
  ASSERT_EQ(part.layers.size(), 1u);
  EXPECT_TRUE(torch::equal(part.layers[0].hessian,
                           find_layer_stats(all, "decoder.block.1.layer.2.DenseReluDense.wo")->hessian));
}

TEST(CalibrationTest, CalibrationTextIsCutToTokens) {
  ContractModel model = ContractModel::load(fixture("tiny.pt"));
  const CalibrationText text = load_calibration_text(kCalibrationText, model.tokenizer(), 1, 64, 1000);
  EXPECT_EQ(text.tokens, 1000);
  ASSERT_EQ(text.windows.size(), 16u);  // 15 x 64 + 40
  EXPECT_EQ(text.windows.back().size(), 40u);
  EXPECT_EQ(text.sha256.size(), 64u);
  const CalibrationText whole = load_calibration_text(kDefaultText, model.tokenizer(), 1, 64, 100000000);
  const auto all = load_eval_text(kDefaultText, model.tokenizer(), 1, 64);
  EXPECT_EQ(whole.tokens, static_cast<int64_t>(all.token_ids.size()));  // shorter text: all of it, EOS included
  EXPECT_THROW(load_calibration_text(kDefaultText, model.tokenizer(), 1, 64, -1), UsageError);
}

std::string temp_path(const std::string& name) {
  return ::testing::TempDir() + "/calib_" + std::to_string(::getpid()) + "_" + name;
}

// calibration_stats_for_run: computed, then written, then read back for the same model; a file of
// another model is an error naming both hashes; the same text as the evaluation text warns.
TEST(CalibrationTest, StatsForRunFromTextAndFromFile) {
  ContractModel model = ContractModel::load(fixture("tiny.pt"));
  const std::vector<LinearLayer> layers = model.linear_layers();
  CalibrationRequest request;
  request.text_path = kDefaultText;
  request.tokens = 200;
  request.eval_text_path = kDefaultText;
  std::vector<std::string> warnings;
  const CalibrationStats computed =
      calibration_stats_for_run(model, layers, request, [&](const std::string& w) { warnings.push_back(w); });
  ASSERT_EQ(warnings.size(), 1u);
  EXPECT_THAT(warnings[0], HasSubstr("is the evaluation text"));
  EXPECT_EQ(computed.tokens, 200);
  EXPECT_EQ(computed.text_path, kDefaultText);
  EXPECT_EQ(computed.layers.size(), layers.size());

  const std::string path = temp_path("run.qcal");
  write_calibration_stats(path, computed, /*force=*/true);
  CalibrationRequest from_file;
  from_file.stats_path = path;
  from_file.eval_text_path = kCalibrationText;  // another text: no warning
  warnings.clear();
  const CalibrationStats read = calibration_stats_for_run(model, {layers[3], layers[0]}, from_file,
                                                          [&](const std::string& w) { warnings.push_back(w); });
  EXPECT_TRUE(warnings.empty());
  ASSERT_EQ(read.layers.size(), 2u);
  EXPECT_EQ(read.layers[0].name, layers[3].name);
  EXPECT_TRUE(torch::equal(read.layers[0].hessian, computed.layers[3].hessian));

  ContractModel other = ContractModel::load(QUANTPPL_SOURCE_DIR "/models/default.pt");
  try {
    calibration_stats_for_run(other, other.linear_layers(), from_file);
    FAIL();
  } catch (const DataError& e) {
    EXPECT_THAT(e.what(), HasSubstr(model.file_sha256()));
    EXPECT_THAT(e.what(), HasSubstr(other.file_sha256()));
  }
  ::unlink(path.c_str());
}

}  // namespace
}  // namespace quantppl
