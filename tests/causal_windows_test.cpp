// Window cutting of the three causal perplexity modes (eval/causal_windows.h):
// the exact tokens each window feeds and the exact stream positions it scores,
// written out by hand from the definitions (the Hugging Face guide's loop and
// llama-perplexity's chunks), not produced by the code under test.
#include "quantppl/eval/causal_windows.h"

#include <set>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "quantppl/error.h"

namespace quantppl {
namespace {

constexpr int64_t kBos = 1;

// Text ids 100, 101, ...: id - 100 is the text position (0-based), BOS is 1.
std::vector<int64_t> text(int64_t n) {
  std::vector<int64_t> ids;
  for (int64_t i = 0; i < n; ++i) ids.push_back(100 + i);
  return ids;
}

CausalWindowOptions options(PerplexityMode mode, int64_t max_length, bool add_bos, int64_t stride = 0) {
  CausalWindowOptions o;
  o.mode = mode;
  o.max_length = max_length;
  o.add_bos = add_bos;
  o.bos_token_id = add_bos ? kBos : kNoToken;
  o.stride = stride;
  return o;
}

// The scored tokens of all windows, as a multiset of ids.
std::multiset<int64_t> scored(const std::vector<ScoredWindow>& windows) {
  std::multiset<int64_t> out;
  for (const ScoredWindow& w : windows) {
    for (size_t i = static_cast<size_t>(w.first_scored); i < w.tokens.size(); ++i) out.insert(w.tokens[i]);
  }
  return out;
}

std::multiset<int64_t> range_ids(int64_t first, int64_t last) {  // text ids 100+first .. 100+last inclusive
  std::multiset<int64_t> out;
  for (int64_t i = first; i <= last; ++i) out.insert(100 + i);
  return out;
}

TEST(CausalWindowsTest, CausalWithBosPrependsBosAndScoresEveryTextToken) {
  // L = 4: chunks of 3 text tokens, each window BOS + chunk; 7 tokens -> 3 windows.
  const auto w = causal_windows(text(7), options(PerplexityMode::kCausal, 4, true));
  ASSERT_EQ(w.size(), 3u);
  EXPECT_EQ(w[0].tokens, (std::vector<int64_t>{kBos, 100, 101, 102}));
  EXPECT_EQ(w[1].tokens, (std::vector<int64_t>{kBos, 103, 104, 105}));
  EXPECT_EQ(w[2].tokens, (std::vector<int64_t>{kBos, 106}));
  for (const auto& x : w) EXPECT_EQ(x.first_scored, 1);
  EXPECT_EQ(scored(w), range_ids(0, 6));
  EXPECT_EQ(count_scored_tokens(w), 7);
}

TEST(CausalWindowsTest, CausalWithoutBosLeavesEachWindowsFirstTokenAsContext) {
  // L = 4: chunks of 4; 10 tokens -> [0..3], [4..7], [8, 9]; positions 0, 4, 8 are not scored.
  const auto w = causal_windows(text(10), options(PerplexityMode::kCausal, 4, false));
  ASSERT_EQ(w.size(), 3u);
  EXPECT_EQ(w[0].tokens, (std::vector<int64_t>{100, 101, 102, 103}));
  EXPECT_EQ(w[2].tokens, (std::vector<int64_t>{108, 109}));
  std::multiset<int64_t> expected = range_ids(0, 9);
  for (const int64_t not_scored : {100, 104, 108}) expected.erase(not_scored);
  EXPECT_EQ(scored(w), expected);
  // A trailing single token has nothing before it in its window: no window.
  EXPECT_EQ(causal_windows(text(9), options(PerplexityMode::kCausal, 4, false)).size(), 2u);
}

TEST(CausalWindowsTest, StrideFollowsTheHuggingFaceGuidesLoop) {
  // Stream without BOS, M = 10, L = 4, S = 2:
  //   begin 0: end 4, trg 4 -> window [0,4), scored positions 1..3 (position 0 has no logits)
  //   begin 2: end 6, trg 2 -> window [2,6), scored 4, 5
  //   begin 4: end 8, trg 2 -> window [4,8), scored 6, 7
  //   begin 6: end 10, trg 2 -> window [6,10), scored 8, 9; end == M: stop
  const auto w = causal_windows(text(10), options(PerplexityMode::kCausal, 4, false, 2));
  ASSERT_EQ(w.size(), 4u);
  EXPECT_EQ(w[1].tokens, (std::vector<int64_t>{102, 103, 104, 105}));
  EXPECT_EQ(w[0].first_scored, 1);
  EXPECT_EQ(w[1].first_scored, 2);
  EXPECT_EQ(w[3].first_scored, 2);
  EXPECT_EQ(scored(w), range_ids(1, 9));  // every position but the first, once each
}

TEST(CausalWindowsTest, StrideWithBosStartsTheStreamWithOneBos) {
  // Stream [BOS, x0..x6], M = 8, L = 5, S = 3:
  //   begin 0: end 5, trg 5 -> [BOS, x0..x3], scored x0..x3
  //   begin 3: end 8, trg 3 -> [x2..x6], scored x4..x6 (positions 2..4 of the window)
  const auto w = causal_windows(text(7), options(PerplexityMode::kCausal, 5, true, 3));
  ASSERT_EQ(w.size(), 2u);
  EXPECT_EQ(w[0].tokens, (std::vector<int64_t>{kBos, 100, 101, 102, 103}));
  EXPECT_EQ(w[1].tokens, (std::vector<int64_t>{102, 103, 104, 105, 106}));
  EXPECT_EQ(w[1].first_scored, 2);
  EXPECT_EQ(scored(w), range_ids(0, 6));
}

TEST(CausalWindowsTest, StrideWithAShortLastStep) {
  // M = 9, L = 4, S = 3: begin 0 -> [0,4) scored 1..3; begin 3 -> [3,7) trg 3 scored 4..6;
  // begin 6 -> [6,9) trg 2 scored 7, 8 (f = 3 - 2 = 1).
  const auto w = causal_windows(text(9), options(PerplexityMode::kCausal, 4, false, 3));
  ASSERT_EQ(w.size(), 3u);
  EXPECT_EQ(w[2].tokens, (std::vector<int64_t>{106, 107, 108}));
  EXPECT_EQ(w[2].first_scored, 1);
  EXPECT_EQ(scored(w), range_ids(1, 8));
}

TEST(CausalWindowsTest, StrideEqualToLengthIsNonOverlapping) {
  // S = L: the guide's windows do not overlap and each window's first label is lost to the shift.
  const auto w = causal_windows(text(8), options(PerplexityMode::kCausal, 4, false, 4));
  ASSERT_EQ(w.size(), 2u);
  std::multiset<int64_t> expected = range_ids(0, 7);
  expected.erase(100);
  expected.erase(104);
  EXPECT_EQ(scored(w), expected);
}

TEST(CausalWindowsTest, LlamaCppScoresTheSecondHalfOfEachFullChunk) {
  // add_bos: stream [BOS, x0..x20], M = 22, n_ctx = 8: n_chunk = 2 (6 tokens dropped),
  // first = 4, scored chunk positions 5..7.
  const auto w = causal_windows(text(21), options(PerplexityMode::kLlamaCpp, 8, true));
  ASSERT_EQ(w.size(), 2u);
  EXPECT_EQ(w[0].tokens, (std::vector<int64_t>{kBos, 100, 101, 102, 103, 104, 105, 106}));
  // Chunk 1 is stream[8, 16) = x7..x14 with its first token replaced by BOS.
  EXPECT_EQ(w[1].tokens, (std::vector<int64_t>{kBos, 108, 109, 110, 111, 112, 113, 114}));
  for (const auto& x : w) EXPECT_EQ(x.first_scored, 5);
  std::multiset<int64_t> expected = {104, 105, 106, 112, 113, 114};
  EXPECT_EQ(scored(w), expected);
  EXPECT_EQ(count_scored_tokens(w), 2 * (8 - 4 - 1));
}

TEST(CausalWindowsTest, LlamaCppWithoutBosKeepsTheChunksTokens) {
  // n_ctx = 5 (odd): first = 2, scored positions 3, 4; M = 11 -> 2 chunks.
  const auto w = causal_windows(text(11), options(PerplexityMode::kLlamaCpp, 5, false));
  ASSERT_EQ(w.size(), 2u);
  EXPECT_EQ(w[1].tokens, (std::vector<int64_t>{105, 106, 107, 108, 109}));
  std::multiset<int64_t> expected = {103, 104, 108, 109};
  EXPECT_EQ(scored(w), expected);
}

TEST(CausalWindowsTest, LlamaCppNeedsTwoContexts) {
  // add_bos: 15 text tokens + BOS = 16 = 2 x 8 is enough; 14 + BOS = 15 is not.
  EXPECT_EQ(causal_windows(text(15), options(PerplexityMode::kLlamaCpp, 8, true)).size(), 2u);
  try {
    causal_windows(text(14), options(PerplexityMode::kLlamaCpp, 8, true));
    ADD_FAILURE() << "no DataError";
  } catch (const DataError& e) {
    EXPECT_THAT(e.what(), ::testing::HasSubstr("at least 2 x --max-length = 16 tokens"));
  }
}

TEST(CausalWindowsTest, Errors) {
  EXPECT_THROW(causal_windows(text(10), options(PerplexityMode::kReconstruct, 4, true)), UsageError);
  EXPECT_THROW(causal_windows(text(10), options(PerplexityMode::kCausal, 4, false, 5)), UsageError);  // S > L
  EXPECT_THROW(causal_windows(text(10), options(PerplexityMode::kLlamaCpp, 4, false, 2)), UsageError);
  EXPECT_THROW(causal_windows(text(10), options(PerplexityMode::kLlamaCpp, 2, false)), UsageError);
  EXPECT_THROW(causal_windows(text(10), options(PerplexityMode::kCausal, 1, true)), UsageError);
  EXPECT_THROW(causal_windows(text(1), options(PerplexityMode::kCausal, 4, false)), DataError);
  CausalWindowOptions no_bos_id = options(PerplexityMode::kCausal, 4, true);
  no_bos_id.bos_token_id = kNoToken;
  EXPECT_THROW(causal_windows(text(10), no_bos_id), UsageError);
}

ModelMetadata causal_metadata() {
  ModelMetadata m;
  m.format_version = 2;
  m.architecture = "causal";
  m.vocab_size = 320;
  m.max_length = 8;
  m.bos_token_id = kBos;
  m.add_bos = true;
  m.pad_token_id = kNoToken;
  return m;
}

TEST(CausalWindowsTest, BatchesShiftLabelsAndMaskTheUnscored) {
  std::vector<ScoredWindow> windows{{{kBos, 10, 11}, 1}, {{20, 21, 22, 23, 24}, 3}};
  const auto batches = make_causal_batches(windows, 2, causal_metadata());
  ASSERT_EQ(batches.size(), 1u);
  const EvalBatch& b = batches[0];
  EXPECT_FALSE(b.decoder_input_ids.defined());
  // Longest first: row 0 is window 1. Inputs drop each window's last token.
  EXPECT_EQ(b.window_indices, (std::vector<size_t>{1, 0}));
  const auto matrix = [](std::vector<int64_t> v) { return torch::tensor(v, torch::kInt64).reshape({2, 4}); };
  EXPECT_TRUE(b.input_ids.equal(matrix({20, 21, 22, 23, kBos, 10, 0, 0})));
  EXPECT_TRUE(b.attention_mask.equal(matrix({1, 1, 1, 1, 1, 1, 0, 0})));
  EXPECT_TRUE(b.labels.select(0, 1).slice(0, 0, 2).equal(torch::tensor(std::vector<int64_t>{10, 11}, torch::kInt64)));
  EXPECT_TRUE(b.labels.select(0, 0).equal(torch::tensor(std::vector<int64_t>{21, 22, 23, 24}, torch::kInt64)));
  // Window 1 scores positions 3, 4 (labels at logits 2, 3); window 0 its two text tokens.
  EXPECT_TRUE(b.label_mask.equal(matrix({0, 0, 1, 1, 1, 1, 0, 0}).to(torch::kBool)));
  EXPECT_EQ(count_label_tokens(batches), 4);
}

TEST(CausalWindowsTest, BatchErrors) {
  const ModelMetadata m = causal_metadata();
  EXPECT_THROW(make_causal_batches({{{1, 2, 3}, 1}}, 0, m), UsageError);
  EXPECT_THROW(make_causal_batches({{{1, 320}, 1}}, 1, m), UsageError);
  EXPECT_THROW(make_causal_batches({{{1, 2, 3, 4, 5, 6, 7, 8, 9}, 1}}, 1, m), UsageError);  // > max_length 8
  EXPECT_THROW(make_causal_batches({{{1}, 1}}, 1, m), DataError);
}

}  // namespace
}  // namespace quantppl
