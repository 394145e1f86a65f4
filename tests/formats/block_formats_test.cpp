// The block formats of issue 14 (NF4/FP4/FP8 grids, OCP MX, NVFP4, GGUF
// q*_*): hand-picked blocks worked out from the specs, NF4 against the
// QLoRA table and its midpoints, the properties every format must have
// (pack/unpack bit-identical with fake-quantize, reconstructed values are
// grid values times the block scale, idempotence of MX, errors), and sizes.
// Bit-exactness against ml_dtypes and gguf-py is in
// tests/python/test_formats_reference.py.
#include <gtest/gtest.h>

#include <torch/torch.h>

#include <cmath>
#include <cstring>
#include <set>

#include "quantppl/error.h"
#include "quantppl/formats/gguf_blocks.h"
#include "quantppl/formats/mx_format.h"
#include "quantppl/formats/nvfp4_format.h"
#include "quantppl/formats/scaled_element_format.h"

namespace quantppl::formats {
namespace {

std::unique_ptr<WeightFormat> parse(const std::string& spec) {
  if (auto f = parse_scaled_element_format(spec)) return f;
  if (auto f = parse_mx_format(spec)) return f;
  if (auto f = parse_nvfp4_format(spec)) return f;
  if (auto f = parse_gguf_format(spec)) return f;
  return nullptr;
}

torch::Tensor fq(const WeightFormat& f, const torch::Tensor& w) {
  torch::Tensor out = torch::empty_like(w);
  f.fake_quantize_into(w, out, "w");
  return out;
}

torch::Tensor row(std::vector<float> v) {
  return torch::from_blob(v.data(), {1, static_cast<int64_t>(v.size())}, torch::kFloat32).clone();
}

bool bit_equal(const torch::Tensor& a, const torch::Tensor& b) {
  return a.sizes() == b.sizes() &&
         std::memcmp(a.contiguous().data_ptr<float>(), b.contiguous().data_ptr<float>(), a.numel() * 4) == 0;
}

const char* const kAllSpecs[] = {
    "nf4", "nf4:channel", "nf4:group64", "nf4:group32:p99", "nf4:group64:mse", "fp4", "fp4:group32",
    "fp4:channel:mse", "fp8e4m3", "fp8e4m3:channel", "fp8e5m2:group64", "fp8e5m2:tensor:p99.9",
    "mxfp4", "mxfp6e2m3", "mxfp6e3m2", "mxfp8e4m3", "mxfp8e5m2", "mxint8", "nvfp4",
    "q8_0", "q4_0", "q4_1", "q5_0", "q5_1"};

// ---- NF4 -------------------------------------------------------------------

// The 16 values exactly as issue 14 lists them (QLoRA / bitsandbytes).
const double kIssueNf4[16] = {-1, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453,
                              -0.28444138169288635, -0.18477343022823334, -0.09105003625154495, 0,
                              0.07958029955625534, 0.16093020141124725, 0.24611230194568634, 0.33791524171829224,
                              0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1};

TEST(Nf4FormatTest, TableIsTheQloraTable) {
  for (int i = 0; i < 16; ++i) EXPECT_EQ(kNf4Values[i], static_cast<float>(kIssueNf4[i])) << i;
}

// Per tensor with a 1.0 in the block, s = 1, so x_hat is the table value the
// decision tree picks. At each midpoint (exact in double): the lower value
// wins a tie, the next float above goes up, the next below goes down.
TEST(Nf4FormatTest, MidpointThresholdsTieToTheLowerValue) {
  const auto f = parse("nf4");
  for (int i = 0; i < 15; ++i) {
    const double lo = static_cast<float>(kIssueNf4[i]), hi = static_cast<float>(kIssueNf4[i + 1]);
    const double mid = (lo + hi) / 2;
    const auto m = static_cast<float>(mid);
    const float below = static_cast<double>(m) < mid ? m : std::nextafter(m, -2.0f);
    const float above = static_cast<double>(m) > mid ? m : std::nextafter(m, 2.0f);
    std::vector<float> xs{1.0f, below, above};
    std::vector<float> want{1.0f, static_cast<float>(lo), static_cast<float>(hi)};
    if (static_cast<double>(m) == mid) {
      xs.push_back(m);
      want.push_back(static_cast<float>(lo));
    }
    // The first 16 go through the 8-lane loop, the rest through the scalar tail.
    const size_t n = xs.size();
    while (xs.size() < 16) {
      xs.push_back(0.0f);
      want.push_back(0.0f);
    }
    for (size_t j = 0; j < n; ++j) {
      xs.push_back(xs[j]);
      want.push_back(want[j]);
    }
    const torch::Tensor got = fq(*f, row(xs));
    for (size_t j = 0; j < xs.size(); ++j) {
      EXPECT_EQ(got[0][j].item<float>(), want[j]) << "pair " << i << " x = " << xs[j];
    }
  }
}

TEST(Nf4FormatTest, ScaleIsTheBlockAbsmax) {
  const auto f = parse("nf4:group4");
  const torch::Tensor got = fq(*f, row({-2.0f, 1.0f, 0.5f, 0.0f, 0.25f, -0.1f, 0.0f, 0.0f}));
  // Block 1: s = 2; 1/2 -> 0.44070983 (nearer than 0.5626), 0.5/2 = 0.25 -> 0.24611230.
  EXPECT_EQ(got[0][0].item<float>(), -2.0f);
  EXPECT_EQ(got[0][1].item<float>(), 0.44070982933044434f * 2.0f);
  EXPECT_EQ(got[0][2].item<float>(), 0.24611230194568634f * 2.0f);
  EXPECT_EQ(got[0][3].item<float>(), 0.0f);
  // Block 2: s = 0.25; -0.1/0.25 = -0.4 -> -0.39491749.
  EXPECT_EQ(got[0][4].item<float>(), 0.25f);
  EXPECT_EQ(got[0][5].item<float>(), -0.39491748809814453f * 0.25f);
}

// ---- FP4 / FP8 grids ------------------------------------------------------------

TEST(ScaledGridTest, Fp4ScaleIsAmaxOverSix) {
  const auto f = parse("fp4:group8");
  // amax 12: s = 2; x/s = -6, 2.5 (tie 2|3 -> 2, even mantissa), 1.25 (tie 1|1.5 -> 1), 0.2 -> 0, 4.9 -> 4 (nearest of 4, 6)
  const torch::Tensor got = fq(*f, row({-12.0f, 5.0f, 2.5f, 0.4f, 9.8f, 11.0f, 0.0f, 1.0f}));
  const std::vector<float> want{-12.0f, 4.0f, 2.0f, 0.0f, 8.0f, 12.0f, 0.0f, 1.0f};
  for (int j = 0; j < 8; ++j) EXPECT_EQ(got[0][j].item<float>(), want[j]) << j;
}

TEST(ScaledGridTest, Fp8E4M3ReachesItsSubnormals) {
  const auto f = parse("fp8e4m3:group4");
  // amax 448: s = 1, so x_hat is the E4M3 value itself: 2^-9 is the smallest
  // subnormal, 2^-10 ties with 0 (even), 3 * 2^-10 ties 2^-9 | 2^-8 -> 2^-8.
  const torch::Tensor got = fq(*f, row({448.0f, std::ldexp(1.0f, -9), std::ldexp(1.0f, -10), 3 * std::ldexp(1.0f, -10)}));
  EXPECT_EQ(got[0][0].item<float>(), 448.0f);
  EXPECT_EQ(got[0][1].item<float>(), std::ldexp(1.0f, -9));
  EXPECT_EQ(got[0][2].item<float>(), 0.0f);
  EXPECT_EQ(got[0][3].item<float>(), std::ldexp(1.0f, -8));
}

TEST(ScaledGridTest, PercentileClipsAndSaturates) {
  const auto f = parse("fp4:tensor:p50");
  // |x| = 1..8, numpy percentile 50 = 4.5: s = 0.75; 8/0.75 saturates at 6.
  const torch::Tensor got = fq(*f, row({1, 2, 3, 4, 5, 6, 7, 8}));
  EXPECT_EQ(got[0][7].item<float>(), 6.0f * 0.75f);
  EXPECT_EQ(got[0][0].item<float>(), 1.5f * 0.75f);  // 1 / 0.75 = 1.33: nearer 1.5 than 1
}

// ---- OCP MX ------------------------------------------------------------------

torch::Tensor block32(std::vector<float> head, float fill = 0.0f) {
  head.resize(32, fill);
  return row(head);
}

TEST(MxFormatTest, AmaxAPowerOfTwoGivesItsOwnExponent) {
  // mxfp4: amax 4 = 2^2, k = 2 - 2 = 0, X = 1: E2M1 values are exact.
  const auto f = parse("mxfp4");
  const torch::Tensor got = fq(*f, block32({4.0f, -3.0f, 1.5f, 0.5f, 0.25f, 0.75f, 5.0f}));
  const std::vector<float> want{4.0f, -3.0f, 1.5f, 0.5f, 0.0f /* tie 0|0.5 -> 0 */, 1.0f /* tie 0.5|1 -> 1 */, 4.0f /* tie 4|6 -> 4 */};
  for (size_t j = 0; j < want.size(); ++j) EXPECT_EQ(got[0][j].item<float>(), want[j]) << j;
}

TEST(MxFormatTest, AmaxJustBelowOneClampsToTheLargestNormal) {
  // amax = 1 - 2^-24: floor(log2) = -1, k = -3, X = 1/8, amax / X = 7.99999 ->
  // clamped to 6: x_hat = 0.75 (the spec clamps; it does not raise X).
  const auto f = parse("mxfp4");
  const float a = std::nextafter(1.0f, 0.0f);
  const torch::Tensor got = fq(*f, block32({a, -a, 0.5f}));
  EXPECT_EQ(got[0][0].item<float>(), 0.75f);
  EXPECT_EQ(got[0][1].item<float>(), -0.75f);
  EXPECT_EQ(got[0][2].item<float>(), 0.5f);
  // mxfp8e4m3: k = -1 - 8 = -9, a / X = 511.99 -> 448 -> 448 / 512.
  const torch::Tensor got8 = fq(*parse("mxfp8e4m3"), block32({a}));
  EXPECT_EQ(got8[0][0].item<float>(), 448.0f / 512.0f);
}

TEST(MxFormatTest, ASingleOutlierSetsTheScaleForTheBlock) {
  // amax 1000: floor(log2) = 9, mxfp4 k = 7, X = 128: 0.01 / 128 is far below
  // E2M1's 0.5 and vanishes; 1000 / 128 = 7.8 -> 6 -> 768.
  const auto f = parse("mxfp4");
  const torch::Tensor got = fq(*f, block32({0.01f, 1000.0f, -64.0f, 100.0f}, 0.01f));
  EXPECT_EQ(got[0][0].item<float>(), 0.0f);
  EXPECT_EQ(got[0][1].item<float>(), 768.0f);
  EXPECT_EQ(got[0][2].item<float>(), -64.0f);   // 0.5 * 128
  EXPECT_EQ(got[0][3].item<float>(), 128.0f);   // 100/128 = 0.78 -> 1 (nearer than 0.5)
  EXPECT_EQ(got[0][31].item<float>(), 0.0f);
}

TEST(MxFormatTest, SubnormalElements) {
  // mxfp8e4m3 with amax 1: k = 0 - 8 = -8, X = 2^-8; E4M3 subnormals are
  // multiples of 2^-9, so the block's smallest step is 2^-17.
  const auto f = parse("mxfp8e4m3");
  const float step = std::ldexp(1.0f, -17);
  const torch::Tensor got = fq(*f, block32({1.0f, step, step / 2, 3 * step / 2, 5 * step / 2}));
  EXPECT_EQ(got[0][0].item<float>(), 1.0f);
  EXPECT_EQ(got[0][1].item<float>(), step);
  EXPECT_EQ(got[0][2].item<float>(), 0.0f);      // tie 0 | 1 step -> 0
  EXPECT_EQ(got[0][3].item<float>(), 2 * step);  // tie 1 | 2 -> 2
  EXPECT_EQ(got[0][4].item<float>(), 2 * step);  // tie 2 | 3 -> 2
}

TEST(MxFormatTest, Int8HasAnImplicitScaleOfTwoToTheMinusSix) {
  // amax 1: k = 0, X = 1, elements q / 64 with q in [-127, 127].
  const auto f = parse("mxint8");
  const torch::Tensor got = fq(*f, block32({1.0f, 1.0f / 128, 3.0f / 128, -0.3f, 1.99f}));
  EXPECT_EQ(got[0][0].item<float>(), 1.0f);
  EXPECT_EQ(got[0][1].item<float>(), 0.0f);          // 0.5 ties to 0
  EXPECT_EQ(got[0][2].item<float>(), 2.0f / 64);     // 1.5 ties to 2
  EXPECT_EQ(got[0][3].item<float>(), -19.0f / 64);   // -19.2 -> -19
  // 1.99: floor(log2) = 0 again, 127.36 clamps to 127.
  EXPECT_EQ(fq(*f, block32({1.99f}))[0][0].item<float>(), 127.0f / 64);
}

TEST(MxFormatTest, AllZeroBlockStaysZeroAndScaleIsTheSmallestE8M0) {
  for (const char* spec : {"mxfp4", "mxint8", "mxfp8e5m2"}) {
    const auto f = parse(spec);
    const torch::Tensor w = torch::zeros({2, 64});
    EXPECT_TRUE(bit_equal(fq(*f, w), w)) << spec;
    const PackedWeight p = f->prepare(w, "w")->pack(w);
    EXPECT_EQ(static_cast<uint8_t>(p.sections[1].bytes[0]), 0) << spec;  // 2^-127
  }
}

TEST(MxFormatTest, IdempotentOnItsOwnOutput) {
  torch::manual_seed(3);
  const torch::Tensor w = torch::randn({16, 128}) * 0.05;
  for (const char* spec : {"mxfp4", "mxfp6e2m3", "mxfp6e3m2", "mxfp8e4m3", "mxfp8e5m2", "mxint8"}) {
    const auto f = parse(spec);
    const torch::Tensor once = fq(*f, w);
    EXPECT_TRUE(bit_equal(fq(*f, once), once)) << spec;
  }
}

// ---- NVFP4 --------------------------------------------------------------------

TEST(Nvfp4FormatTest, TwoLevelScale) {
  // amax_tensor = 2688: g = 1. Block 1 (amax 2688): d = e4m3(448) = 448, 2688 / 448 = 6 exactly.
  // Block 2 amax 1.2: d = e4m3(0.2) = 0.203125 (13 * 2^-6), s = d;
  // 1.2 / s = 5.9 -> 6 -> 1.21875; 0.1 / s = 0.49 -> 0.5 -> 0.1015625.
  std::vector<float> v(32, 0.0f);
  v[0] = 2688.0f;
  v[16] = 1.2f;
  v[17] = 0.1f;
  const auto f = parse("nvfp4");
  const torch::Tensor got = fq(*f, row(v));
  EXPECT_EQ(got[0][0].item<float>(), 2688.0f);
  EXPECT_EQ(got[0][16].item<float>(), 6.0f * 0.203125f);
  EXPECT_EQ(got[0][17].item<float>(), 0.5f * 0.203125f);
  const PackedWeight p = f->prepare(row(v), "w")->pack(row(v));
  ASSERT_EQ(p.sections.size(), 3u);
  EXPECT_EQ(static_cast<uint8_t>(p.sections[1].bytes[0]), 0x7E);  // 448 = S.1111.110
  float g;
  std::memcpy(&g, p.sections[2].bytes.data(), 4);
  EXPECT_EQ(g, 1.0f);
}

TEST(Nvfp4FormatTest, AllZeroTensorStaysZero) {
  const torch::Tensor w = torch::zeros({3, 32});
  const auto f = parse("nvfp4");
  EXPECT_TRUE(bit_equal(fq(*f, w), w));
  EXPECT_TRUE(bit_equal(f->unpack(f->prepare(w, "w")->pack(w), "w"), w));
}

// ---- GGUF ---------------------------------------------------------------------

TEST(GgufBlocksTest, Q4_0UsesTheSignedExtremeAndTruncation) {
  // max = 8 (the largest |x|), d = 8 / -8 = -1, id = -1: x = 8 -> trunc(-8 + 8.5) = 0
  // -> (0 - 8) * -1 = 8; x = -7 -> trunc(7 + 8.5) = 15 -> 7 * -1 = -7;
  // x = 2.5 -> trunc(-2.5 + 8.5) = 6 -> 2 (ggml's +8.5 truncation rounds -2.5 up to -2);
  // x = -0.5 -> trunc(9) = 9 -> -1.
  const auto f = parse("q4_0");
  const torch::Tensor got = fq(*f, block32({8.0f, -7.0f, 2.5f, -0.5f, 3.5f}));
  const std::vector<float> want{8.0f, -7.0f, 2.0f, -1.0f, 3.0f};
  for (size_t j = 0; j < want.size(); ++j) EXPECT_EQ(got[0][j].item<float>(), want[j]) << j;
}

TEST(GgufBlocksTest, Q8_0RoundsHalfAwayFromZeroAndStoresD16) {
  // amax 127: d = 1, id = 1; roundf(2.5) = 3, roundf(-2.5) = -3 (np.round would give 2).
  const auto f = parse("q8_0");
  const torch::Tensor got = fq(*f, block32({127.0f, 2.5f, -2.5f, 0.49f}));
  EXPECT_EQ(got[0][1].item<float>(), 3.0f);
  EXPECT_EQ(got[0][2].item<float>(), -3.0f);
  EXPECT_EQ(got[0][3].item<float>(), 0.0f);
  // d = 1 / 127 is not a float16: x_hat uses the stored f16(d) = 0.0078735352 (0x2008).
  const torch::Tensor small = fq(*f, block32({1.0f}));
  EXPECT_EQ(small[0][0].item<float>(), 127.0f * 0.0078735352f);
}

TEST(GgufBlocksTest, Q4_1UsesMinAndStep) {
  // lo = -1, hi = 14: d = 1, id = 1; x = 3.4 -> trunc(4.4 + 0.5) = 4 -> 4 * 1 + -1 = 3.
  const auto f = parse("q4_1");
  const torch::Tensor got = fq(*f, block32({-1.0f, 14.0f, 3.4f, 3.5f}, 0.0f));
  EXPECT_EQ(got[0][0].item<float>(), -1.0f);
  EXPECT_EQ(got[0][1].item<float>(), 14.0f);
  EXPECT_EQ(got[0][2].item<float>(), 3.0f);
  EXPECT_EQ(got[0][3].item<float>(), 4.0f);  // 4.5 + 0.5 = 5 -> 5 - 1
}

TEST(GgufBlocksTest, ScaleBeyondFloat16IsADataError) {
  const auto f = parse("q8_0");
  const torch::Tensor w = block32({1e8f});
  try {
    fq(*f, w);
    FAIL() << "expected a DataError";
  } catch (const DataError& e) {
    EXPECT_NE(std::string(e.what()).find("'w'"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("65504"), std::string::npos) << e.what();
  }
}

// The fused pass takes eight blocks at a time with their parameters in vector
// lanes; pack()/unpack() take the block-by-block scan, choose_local and the
// scalar code/value formulas. Both must give the same bits on blocks that
// stress the lane arithmetic: ties of +-amax (ggml takes the first), zeros of
// either sign, a subnormal block (d underflows, 1/d is Inf), a constant block
// (q*_1's d = 0), values at the codes' rounding boundaries, and 33 blocks per
// row so that groups of eight end mid-row and a remainder is left over.
TEST(GgufBlocksTest, FusedGroupsOfEightEqualTheBlockByBlockPath) {
  torch::manual_seed(33);
  torch::Tensor w = torch::randn({3, 33 * 32}) * 0.05;
  auto block = [&](int64_t r, int64_t b) { return w[r].slice(0, b * 32, (b + 1) * 32); };
  block(0, 0).zero_();
  block(0, 0)[5] = -3.0f;
  block(0, 0)[9] = 3.0f;
  block(0, 1)[2] = 3.0f;
  block(0, 1)[30] = -3.0f;
  block(0, 2).fill_(-0.0f);
  block(0, 2)[4] = 0.0f;
  block(0, 3).fill_(-0.0f);
  block(0, 4).zero_();
  block(0, 4)[7] = 1e-40f;
  block(0, 5).fill_(0.25f);
  block(0, 6) = torch::arange(32, torch::kFloat32) * 0.5f - 8.0f;  // exact halves: q8_0's roundf ties
  block(1, 8) = torch::arange(32, torch::kFloat32) * 1875.0f;      // up to 58125: large, float16-safe scales
  block(2, 32).fill_(-1.0f);
  for (const char* spec : {"q8_0", "q4_0", "q4_1", "q5_0", "q5_1"}) {
    const auto f = parse(spec);
    const torch::Tensor fused = fq(*f, w);
    const auto prepared = f->prepare(w, "w");
    const torch::Tensor unpacked = f->unpack(prepared->pack(w), "w");
    EXPECT_TRUE(bit_equal(fused, unpacked)) << spec;
  }
  // A group whose lanes cannot hold a block (a float16 scale overflow at block
  // 13, a NaN at block 20) reports it as the block-by-block path does.
  torch::Tensor big = w.clone();
  big[1][13 * 32 + 3] = 1e8f;
  EXPECT_THROW(fq(*parse("q8_0"), big), DataError);
  torch::Tensor nan = w.clone();
  nan[2][20 * 32 + 31] = NAN;
  for (const char* spec : {"q8_0", "q4_0", "q4_1"}) EXPECT_THROW(fq(*parse(spec), nan), DataError) << spec;
}

// ---- every format ----------------------------------------------------------------

TEST(BlockFormatsTest, PackUnpackPreparedAndFusedAreBitIdentical) {
  torch::manual_seed(14);
  torch::Tensor w = torch::randn({24, 128}) * 0.03;
  w[3][5] = 0.9;  // an outlier
  w.slice(0, 7, 8).zero_();  // an all-zero row
  for (const char* spec : kAllSpecs) {
    const auto f = parse(spec);
    ASSERT_TRUE(f) << spec;
    const torch::Tensor fused = fq(*f, w);
    const auto prepared = f->prepare(w, "w");
    torch::Tensor again = torch::empty_like(w);
    prepared->fake_quantize_into(w, again);
    EXPECT_TRUE(bit_equal(fused, again)) << spec;
    const PackedWeight p = prepared->pack(w);
    int64_t bytes = 0;
    for (const auto& s : p.sections) bytes += static_cast<int64_t>(s.bytes.size());
    EXPECT_EQ(bytes, f->packed_bytes(24, 128)) << spec;
    EXPECT_TRUE(bit_equal(f->unpack(p, "w"), fused)) << spec;
    // Zero, possibly -0.0: q4_0 / q5_0 rebuild (8 - 8) * d with d = -0.0, as ggml does.
    EXPECT_TRUE(torch::equal(fused.slice(0, 7, 8), torch::zeros({1, 128}))) << spec << ": all-zero row";
    EXPECT_EQ(parse(f->spec())->spec(), f->spec()) << spec;
  }
}

TEST(BlockFormatsTest, InPlaceEqualsOutOfPlace) {
  torch::manual_seed(5);
  const torch::Tensor w = torch::randn({8, 64});
  for (const char* spec : kAllSpecs) {
    const auto f = parse(spec);
    torch::Tensor inplace = w.clone();
    f->fake_quantize_into(inplace, inplace, "w");
    EXPECT_TRUE(bit_equal(inplace, fq(*f, w))) << spec;
  }
}

// Every reconstructed value is an element of the grid times its block scale,
// read back from the packed scale sections.
TEST(BlockFormatsTest, ReconstructedValuesAreGridValuesTimesTheBlockScale) {
  torch::manual_seed(7);
  const torch::Tensor w = torch::randn({4, 64}) * 0.1;
  struct Case {
    const char* spec;
    std::vector<double> grid;
    int64_t block;
  };
  std::vector<double> e2m1;
  for (double v : {0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0}) {
    e2m1.push_back(v);
    e2m1.push_back(-v);
  }
  std::vector<double> nf4(kIssueNf4, kIssueNf4 + 16);
  for (const Case& c : {Case{"mxfp4", e2m1, 32}, Case{"nf4:group32", nf4, 32}, Case{"fp4:group16", e2m1, 16}}) {
    const auto f = parse(c.spec);
    const torch::Tensor got = fq(*f, w);
    const PackedWeight p = f->prepare(w, "w")->pack(w);
    const std::string& sc = p.sections[1].bytes;
    for (int64_t i = 0; i < w.numel(); ++i) {
      const int64_t b = i / c.block;
      double scale;
      if (p.sections[1].dtype == "e8m0") {
        scale = std::ldexp(1.0, static_cast<uint8_t>(sc[b]) - 127);
      } else {
        float s;
        std::memcpy(&s, sc.data() + 4 * b, 4);
        scale = s;
      }
      const float x = got.view(-1)[i].item<float>();
      bool found = false;
      for (double g : c.grid) found = found || static_cast<float>(g * scale) == x || static_cast<float>(static_cast<float>(g) * static_cast<float>(scale)) == x;
      EXPECT_TRUE(found) << c.spec << " element " << i << " = " << x;
    }
  }
}

TEST(BlockFormatsTest, BitsPerWeight) {
  EXPECT_DOUBLE_EQ(parse("mxfp4")->bits_per_weight(512, 512), 4.25);
  EXPECT_DOUBLE_EQ(parse("mxfp6e2m3")->bits_per_weight(512, 512), 6.25);
  EXPECT_DOUBLE_EQ(parse("mxint8")->bits_per_weight(512, 512), 8.25);
  EXPECT_DOUBLE_EQ(parse("nvfp4")->bits_per_weight(512, 512), 4.5 + 32.0 / (512 * 512));
  EXPECT_DOUBLE_EQ(parse("q8_0")->bits_per_weight(512, 512), 8.5);
  EXPECT_DOUBLE_EQ(parse("q4_0")->bits_per_weight(512, 512), 4.5);
  EXPECT_DOUBLE_EQ(parse("q4_1")->bits_per_weight(512, 512), 5.0);
  EXPECT_DOUBLE_EQ(parse("q5_0")->bits_per_weight(512, 512), 5.5);
  EXPECT_DOUBLE_EQ(parse("q5_1")->bits_per_weight(512, 512), 6.0);
  EXPECT_DOUBLE_EQ(parse("nf4:group64")->bits_per_weight(512, 512), 4.5);
  EXPECT_DOUBLE_EQ(parse("fp8e4m3:channel")->bits_per_weight(512, 512), 8 + 32.0 / 512);
  EXPECT_DOUBLE_EQ(parse("fp4")->bits_per_weight(512, 512), 4 + 32.0 / (512 * 512));
  // ggml's block sizes: 34, 18, 20, 22, 24 bytes per 32 weights.
  EXPECT_EQ(parse("q8_0")->packed_bytes(1, 32), 34);
  EXPECT_EQ(parse("q4_0")->packed_bytes(1, 32), 18);
  EXPECT_EQ(parse("q4_1")->packed_bytes(1, 32), 20);
  EXPECT_EQ(parse("q5_0")->packed_bytes(1, 32), 22);
  EXPECT_EQ(parse("q5_1")->packed_bytes(1, 32), 24);
  EXPECT_EQ(parse("mxfp6e3m2")->packed_bytes(1, 32), 25);
}

TEST(BlockFormatsTest, SpecsAndTheirErrors) {
  EXPECT_EQ(parse("nf4")->spec(), "nf4:tensor:minmax");
  EXPECT_EQ(parse("fp8e4m3:group64:p99.9")->spec(), "fp8e4m3:group64:p99.9");
  EXPECT_EQ(parse("fp8e5m2:channel:mse")->spec(), "fp8e5m2:channel:mse");
  EXPECT_EQ(parse("mxfp6e2m3")->spec(), "mxfp6e2m3");
  EXPECT_EQ(parse("absmax:8"), nullptr);
  for (const char* bad : {"mxfp4:group32", "nvfp4:tensor", "q4_0:x", "nf4:group0", "nf4:group", "nf4:tensor:foo",
                          "fp4:tensor:p0", "fp4:tensor:p101", "nf4:rows", "nf4:tensor:minmax:numpy"}) {
    EXPECT_THROW(parse(bad), UsageError) << bad;
  }
}

TEST(BlockFormatsTest, BlockSizeMustDivideTheRow) {
  const torch::Tensor w = torch::ones({2, 48});
  for (const char* spec : {"mxfp4", "q4_0", "nf4:group32"}) {
    try {
      fq(*parse(spec), w);
      FAIL() << spec;
    } catch (const UsageError& e) {
      EXPECT_NE(std::string(e.what()).find("'w'"), std::string::npos) << e.what();
    }
  }
  EXPECT_NO_THROW(fq(*parse("nvfp4"), w));  // 16 divides 48
}

TEST(BlockFormatsTest, NanOrInfIsADataErrorNamingTheWeight) {
  for (const char* spec : kAllSpecs) {
    for (const float bad : {NAN, INFINITY, -INFINITY}) {
      torch::Tensor w = torch::ones({2, 64});
      w[1][33] = bad;
      try {
        fq(*parse(spec), w);
        FAIL() << spec;
      } catch (const DataError& e) {
        EXPECT_NE(std::string(e.what()).find("'w'"), std::string::npos) << e.what();
      }
      EXPECT_THROW(parse(spec)->prepare(w, "w"), DataError) << spec;
    }
  }
}

TEST(BlockFormatsTest, HostilePackedSectionsAreDataErrors) {
  torch::manual_seed(1);
  const torch::Tensor w = torch::randn({4, 64});
  for (const char* spec : kAllSpecs) {
    const auto f = parse(spec);
    const PackedWeight good = f->prepare(w, "w")->pack(w);
    PackedWeight short_codes = good;
    short_codes.sections[0].bytes.pop_back();
    EXPECT_THROW(f->unpack(short_codes, "w"), DataError) << spec;
    PackedWeight missing = good;
    missing.sections.pop_back();
    EXPECT_THROW(f->unpack(missing, "w"), DataError) << spec;
    PackedWeight renamed = good;
    renamed.sections[1].dtype = "i16";
    EXPECT_THROW(f->unpack(renamed, "w"), DataError) << spec;
    PackedWeight shape = good;
    shape.in_features = 63;
    EXPECT_THROW(f->unpack(shape, "w"), DataError) << spec;
  }
  // Special codes: an E8M0 NaN scale, an E4M3 NaN block scale, an FP8 NaN element.
  {
    const auto f = parse("mxfp4");
    PackedWeight p = f->prepare(w, "w")->pack(w);
    p.sections[1].bytes[0] = static_cast<char>(0xFF);
    EXPECT_THROW(f->unpack(p, "w"), DataError);
  }
  {
    const auto f = parse("nvfp4");
    PackedWeight p = f->prepare(w, "w")->pack(w);
    p.sections[1].bytes[0] = static_cast<char>(0x7F);
    EXPECT_THROW(f->unpack(p, "w"), DataError);
  }
  {
    const auto f = parse("fp8e4m3:channel");
    PackedWeight p = f->prepare(w, "w")->pack(w);
    p.sections[0].bytes[0] = static_cast<char>(0x7F);
    EXPECT_THROW(f->unpack(p, "w"), DataError);
  }
}

// GPTQ's view: with the weight unchanged, quantizing column by column with
// begin_group's quantizer gives the same x_hat as the whole-weight path.
TEST(BlockFormatsTest, BeginGroupMatchesTheWholeWeightPath) {
  torch::manual_seed(9);
  const torch::Tensor w = torch::randn({6, 64}) * 0.2;
  for (const char* spec : kAllSpecs) {
    const auto f = parse(spec);
    const torch::Tensor want = fq(*f, w);
    int64_t G = f->group_columns(64, "w");
    if (G == 0) G = 64;
    for (int64_t c0 = 0; c0 < 64; c0 += G) {
      const torch::Tensor group = f->group_columns(64, "w") == 0 ? w : w.slice(1, c0, c0 + G).contiguous();
      const auto q = f->begin_group(w, group, "w");
      for (int64_t j = 0; j < G; ++j) {
        const torch::Tensor col = q->fake_quantize_column(w.select(1, c0 + j).contiguous(), j);
        EXPECT_TRUE(bit_equal(col.view({-1, 1}), want.slice(1, c0 + j, c0 + j + 1).contiguous())) << spec << " column " << c0 + j;
      }
    }
  }
}

}  // namespace
}  // namespace quantppl::formats
