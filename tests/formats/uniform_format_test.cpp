// The uniform format (formats/uniform_format.h) against quantize.h's functions,
// which the seed and reference tests pin: bit-identical on every fixture
// weight; its sizes against the formula written out by hand.
#include "quantppl/formats/uniform_format.h"

#include <gtest/gtest.h>
#include <torch/torch.h>

#include "../fixture_support.h"
#include "quantppl/contract_model.h"
#include "quantppl/error.h"
#include "quantppl/formats/packed_sections.h"
#include "quantppl/variant_spec.h"

namespace quantppl {
namespace {

const char* const kSpecs[] = {"absmax:8", "absmax:4:group64", "absmax:2:channel", "zeropoint:4:group32:mse",
                              "zeropoint:8:tensor:p99.9", "zeropoint:3:channel:minmax:tutorial",
                              "absmax:5:group16:p99:tutorial", "absmax:6:channel:mse"};

TEST(UniformFormatTest, BitIdenticalWithQuantizeOnEveryFixtureWeight) {
  torch::NoGradGuard no_grad;
  ContractModel model = ContractModel::load(testing::fixture("tiny.pt"));
  for (const char* spec : kSpecs) {
    const QuantConfig config = parse_variant(spec).config;
    const UniformFormat format(config);
    for (const LinearLayer& layer : model.linear_layers()) {
      const torch::Tensor w = layer.weight.contiguous();
      const torch::Tensor expected = fake_quantize(w, config, layer.name);
      torch::Tensor got = torch::empty_like(w);
      format.fake_quantize_into(w, got, layer.name);
      EXPECT_TRUE(torch::equal(got, expected)) << spec << " " << layer.name;
      const auto prepared = format.prepare(w, layer.name);
      const QParams reference = choose_qparams(w, config, layer.name);
      const QParams& params = static_cast<const UniformPreparedWeight&>(*prepared).params();
      EXPECT_TRUE(torch::equal(params.scale, reference.scale)) << spec << " " << layer.name;
      EXPECT_TRUE(torch::equal(params.zero_point, reference.zero_point)) << spec << " " << layer.name;
      // The stored codes are quantize()'s.
      const QuantizedTensor q = format.unpack_codes(prepared->pack(w), layer.name);
      EXPECT_TRUE(torch::equal(q.codes, quantize(w, config, layer.name).codes)) << spec << " " << layer.name;
    }
  }
}

TEST(UniformFormatTest, BitsPerWeightAreCodesPlusScalesOverWeights) {
  // b + 32/G for absmax, + 16/G more for the int16 zero points.
  EXPECT_DOUBLE_EQ(parse_variant("absmax:4:group64").format->bits_per_weight(512, 512), 4.5);
  EXPECT_DOUBLE_EQ(parse_variant("zeropoint:4:group64").format->bits_per_weight(512, 512), 4.75);
  EXPECT_DOUBLE_EQ(parse_variant("absmax:8:channel").format->bits_per_weight(10, 20), 8.0 + 32.0 / 20.0);
  EXPECT_DOUBLE_EQ(parse_variant("absmax:8").format->bits_per_weight(512, 512), 8.0 + 32.0 / (512.0 * 512.0));
  EXPECT_DOUBLE_EQ(parse_variant("zeropoint:3:group32").format->bits_per_weight(4, 64), 3.0 + 48.0 / 32.0);
  EXPECT_EQ(parse_variant("absmax:3:channel").format->packed_bytes(3, 5), (15 * 3 + 7) / 8 + 4 * 3);
  EXPECT_THROW(parse_variant("absmax:4:group64").format->packed_bytes(4, 96), UsageError);
}

TEST(UniformFormatTest, WideZeroPointsAreStoredAsFloat32AndCounted) {
  // A group whose values all lie in [100, 100.01]: z = -round(lo / s) is far outside int16.
  torch::Tensor w = torch::linspace(100.0, 100.01, 64, torch::kFloat32).reshape({2, 32}).contiguous();
  const UniformFormat format(parse_variant("zeropoint:8:group32").config);
  const auto prepared = format.prepare(w, "w");
  const PackedWeight packed = prepared->pack(w);
  ASSERT_EQ(packed.sections.size(), 3u);
  EXPECT_EQ(packed.sections[2].dtype, "f32");
  EXPECT_EQ(*prepared->packed_bytes(), 64 + 4 * 2 + 4 * 2);
  torch::Tensor expected = torch::empty_like(w);
  format.fake_quantize_into(w, expected, "w");
  EXPECT_TRUE(torch::equal(format.unpack(packed, "w"), expected));
}

TEST(UniformFormatTest, SectionsAreCodesScalesAndZeroPoints) {
  const torch::Tensor w = torch::tensor({{-1.0f, 0.3f, 0.6f, 1.0f}});
  const PackedWeight a = parse_variant("absmax:4:channel").format->prepare(w, "w")->pack(w);
  ASSERT_EQ(a.sections.size(), 2u);
  EXPECT_EQ(a.sections[0].name, "codes");
  EXPECT_EQ(a.sections[0].dtype, "u4");
  // s = 1/7: codes -7, 2.1 -> 2, 4.2 -> 4, 7; stored as q + 7.
  EXPECT_EQ(unpack_codes(a.sections[0].bytes, 4, 4), (std::vector<int32_t>{0, 9, 11, 14}));
  EXPECT_EQ(a.sections[1].dtype, "f32");
  const PackedWeight z = parse_variant("zeropoint:8").format->prepare(w, "w")->pack(w);
  ASSERT_EQ(z.sections.size(), 3u);
  EXPECT_EQ(z.sections[2].name, "zero_points");
  EXPECT_EQ(z.sections[2].dtype, "i16");
}

}  // namespace
}  // namespace quantppl
