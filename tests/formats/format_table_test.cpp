// Every row of the format table (formats/format_table.h), generically: each
// example spec parses, spells itself canonically, and on every Linear weight
// of the fixture model packs and unpacks bit-exactly to its fake-quantize, in
// exactly the bytes its size functions state; GPTQ's column-group view
// without error feedback reproduces the fake-quantize. A new row is covered
// by these tests without edits.
#include "quantppl/formats/format_table.h"

#include <cmath>
#include <cstring>
#include <set>

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "../fixture_support.h"
#include "quantppl/contract_model.h"
#include "quantppl/error.h"
#include "quantppl/formats/packed_sections.h"
#include "quantppl/formats/spec_fields.h"
#include "quantppl/variant_spec.h"

namespace quantppl {
namespace {

using ::testing::HasSubstr;

std::vector<std::string> all_examples() {
  std::vector<std::string> out;
  for (const FormatFamily& family : format_families()) {
    for (const std::string& example : family.examples) out.push_back(example);
  }
  return out;
}

const std::vector<LinearLayer>& fixture_layers() {
  static ContractModel model = ContractModel::load(testing::fixture("tiny.pt"));
  static const std::vector<LinearLayer> layers = model.linear_layers();
  return layers;
}

TEST(FormatTableTest, RowsAreCompleteAndNamesUnique) {
  std::set<std::string> names;
  for (const FormatFamily& family : format_families()) {
    EXPECT_FALSE(family.names.empty());
    for (const std::string& name : family.names) EXPECT_TRUE(names.insert(name).second) << "duplicate " << name;
    EXPECT_FALSE(family.syntax.empty());
    EXPECT_FALSE(family.meaning.empty()) << family.syntax;
    EXPECT_FALSE(family.bits_per_weight.empty()) << family.syntax;
    EXPECT_NE(family.parse, nullptr) << family.syntax;
    EXPECT_FALSE(family.examples.empty()) << family.syntax;
    EXPECT_THAT(format_table_text(), HasSubstr(family.syntax));
    for (const std::string& example : family.examples) {
      EXPECT_EQ(find_format_family(split_spec_fields(example)[0]), &family) << example;
    }
  }
}

TEST(FormatTableTest, UnknownFamilyListsTheKnownOnes) {
  try {
    parse_format("int3:4");
    FAIL();
  } catch (const UsageError& e) {
    for (const FormatFamily& family : format_families()) {
      for (const std::string& name : family.names) EXPECT_THAT(e.what(), HasSubstr(name));
    }
  }
  EXPECT_THROW(parse_variant("nosuch"), UsageError);
}

class FormatExampleTest : public ::testing::TestWithParam<std::string> {};

TEST_P(FormatExampleTest, CanonicalSpecRoundTrips) {
  const auto format = parse_format(GetParam());
  const std::string canonical = format->spec();
  EXPECT_EQ(parse_format(canonical)->spec(), canonical);
  const Variant v = parse_variant(GetParam());
  EXPECT_EQ(canonical_spec(v), canonical);
  EXPECT_EQ(canonical_spec(parse_variant(GetParam() + "+rtn")), canonical);
}

TEST_P(FormatExampleTest, PackUnpackIsBitExactOnEveryFixtureWeight) {
  torch::NoGradGuard no_grad;
  const auto format = parse_format(GetParam());
  std::vector<torch::Tensor> weights;
  std::vector<std::string> names;
  for (const LinearLayer& layer : fixture_layers()) {
    weights.push_back(layer.weight.contiguous());
    names.push_back(layer.name);
  }
  const auto many = format->prepare_many(weights, names);
  ASSERT_EQ(many.size(), weights.size());
  for (size_t i = 0; i < weights.size(); ++i) {
    const torch::Tensor& w = weights[i];
    const int64_t out = w.size(0), in = w.size(1);
    torch::Tensor expected = torch::empty_like(w);
    format->fake_quantize_into(w, expected, names[i]);
    const auto prepared = format->prepare(w, names[i]);
    torch::Tensor x_hat = torch::empty_like(w);
    prepared->fake_quantize_into(w, x_hat);
    EXPECT_TRUE(torch::equal(x_hat, expected)) << GetParam() << " " << names[i];
    torch::Tensor from_many = torch::empty_like(w);
    many[i]->fake_quantize_into(w, from_many);
    EXPECT_TRUE(torch::equal(from_many, expected)) << GetParam() << " " << names[i];
    // In place gives the same.
    torch::Tensor in_place = w.clone();
    format->fake_quantize_into(in_place, in_place, names[i]);
    EXPECT_TRUE(torch::equal(in_place, expected)) << GetParam() << " " << names[i];

    const PackedWeight packed = prepared->pack(w);
    EXPECT_EQ(packed.out_features, out);
    EXPECT_EQ(packed.in_features, in);
    int64_t bytes = 0;
    for (const PackedSection& s : packed.sections) {
      EXPECT_GT(dtype_bits(s.dtype), 0) << s.dtype;
      EXPECT_EQ(static_cast<int64_t>(s.bytes.size()), section_bytes(s.dtype, s.count)) << GetParam() << " " << s.name;
      bytes += static_cast<int64_t>(s.bytes.size());
    }
    const std::optional<int64_t> exact = prepared->packed_bytes();
    EXPECT_EQ(bytes, exact ? *exact : format->packed_bytes(out, in)) << GetParam() << " " << names[i];
    if (!exact) {
      EXPECT_DOUBLE_EQ(format->bits_per_weight(out, in), 8.0 * static_cast<double>(bytes) / (out * in));
    }
    const torch::Tensor unpacked = format->unpack(packed, names[i]);
    EXPECT_TRUE(torch::equal(unpacked, expected)) << GetParam() << " " << names[i];
    // Idempotent: the reconstruction is on the grid (the fixed-grid and per-block-scale formats
    // keep it; this checks the weaker property that unpack(pack) of it is itself).
    EXPECT_EQ(unpacked.scalar_type(), torch::kFloat32);
  }
}

// prepare_known (what compare's variants use, with the backup's summaries)
// skips a read of the weight; it must give prepare()'s bits and errors: on a
// plain weight, one too large for the q*_* lazy path (amax > 60000), a tiny
// per-tensor weight (lazy with one block), and NaN / Inf (DataError naming it).
TEST_P(FormatExampleTest, PrepareKnownEqualsPrepare) {
  torch::NoGradGuard no_grad;
  const auto format = parse_format(GetParam());
  torch::manual_seed(3);
  std::vector<torch::Tensor> weights{torch::randn({16, 128}) * 0.05, torch::randn({4, 128}) * 0.02,
                                     torch::randn({8, 256}) * 1000.0};
  weights[2][5][77] = 70000.0f;
  weights[1][3].zero_();
  for (size_t k = 0; k < weights.size(); ++k) {
    const torch::Tensor& w = weights[k];
    const WeightSummary known = summarize_weight(w);
    EXPECT_EQ(known.amax, w.abs().max().item<float>());
    EXPECT_EQ(known.min, w.min().item<float>());
    EXPECT_EQ(known.max, w.max().item<float>());
    EXPECT_TRUE(known.finite);
    torch::Tensor a = torch::full_like(w, 7.0f), b = torch::full_like(w, 7.0f);
    bool threw_a = false, threw_b = false;
    try {
      format->prepare(w, "w")->fake_quantize_into(w, a);
    } catch (const DataError&) {
      threw_a = true;
    }
    try {
      format->prepare_known(w, "w", known)->fake_quantize_into(w, b);
    } catch (const DataError&) {
      threw_b = true;
    }
    EXPECT_EQ(threw_a, threw_b) << GetParam() << " weight " << k;
    EXPECT_EQ(std::memcmp(a.data_ptr<float>(), b.data_ptr<float>(), w.numel() * 4), 0) << GetParam() << " weight " << k;
  }
  for (const float bad : {NAN, INFINITY}) {
    torch::Tensor w = weights[0].clone();
    w[2][9] = bad;
    const WeightSummary known = summarize_weight(w);
    EXPECT_FALSE(known.finite);
    try {
      format->prepare_known(w, "layer.bad", known)->fake_quantize_into(w, w);
      ADD_FAILURE() << GetParam() << ": expected a DataError";
    } catch (const DataError& e) {
      EXPECT_THAT(e.what(), HasSubstr("layer.bad")) << GetParam();
    }
  }
}

TEST_P(FormatExampleTest, ColumnGroupsWithoutErrorFeedbackReproduceTheFakeQuantize) {
  torch::NoGradGuard no_grad;
  const auto format = parse_format(GetParam());
  const auto& layers = fixture_layers();
  for (size_t l = 0; l < std::min<size_t>(layers.size(), 3); ++l) {
    const torch::Tensor w = layers[l].weight.contiguous();
    torch::Tensor expected = torch::empty_like(w);
    format->fake_quantize_into(w, expected, layers[l].name);
    const int64_t in = w.size(1);
    const int64_t g = format->group_columns(in, layers[l].name);
    const int64_t width = g == 0 ? in : g;
    torch::Tensor got = torch::empty_like(w);
    for (int64_t c0 = 0; c0 < in; c0 += width) {
      const torch::Tensor group = w.narrow(1, c0, width);
      const auto quantizer = format->begin_group(w, g == 0 ? w : group, layers[l].name);
      for (int64_t j = 0; j < width; ++j) got.select(1, c0 + j).copy_(quantizer->fake_quantize_column(w.select(1, c0 + j), j));
    }
    EXPECT_TRUE(torch::equal(got, expected)) << GetParam() << " " << layers[l].name;
  }
}

TEST_P(FormatExampleTest, UnpackRejectsMismatchedSectionsWithDataError) {
  const auto format = parse_format(GetParam());
  const torch::Tensor w = fixture_layers().front().weight.contiguous();
  const PackedWeight good = format->prepare(w, "w")->pack(w);
  PackedWeight bad = good;
  bad.sections.pop_back();
  EXPECT_THROW(format->unpack(bad, "w"), DataError);
  bad = good;
  bad.sections.front().bytes.pop_back();
  EXPECT_THROW(format->unpack(bad, "w"), DataError);
  bad = good;
  bad.sections.front().dtype = "f64";
  EXPECT_THROW(format->unpack(bad, "w"), DataError);
  bad = good;
  bad.out_features += 1;
  EXPECT_THROW(format->unpack(bad, "w"), DataError);
}

INSTANTIATE_TEST_SUITE_P(EveryRow, FormatExampleTest, ::testing::ValuesIn(all_examples()),
                         [](const auto& info) {
                           std::string name = info.param;
                           for (char& c : name) if (!isalnum(static_cast<unsigned char>(c))) c = '_';
                           return name;
                         });

}  // namespace
}  // namespace quantppl
