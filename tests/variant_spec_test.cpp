#include <string>

#include <fmt/format.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "quantppl/error.h"
#include "quantppl/variant_spec.h"

namespace quantppl {
namespace {

using ::testing::HasSubstr;

TEST(VariantSpecTest, ParsesTheIssueExamples) {
  const Variant a = parse_variant("absmax:8");
  EXPECT_FALSE(a.is_fp32);
  EXPECT_EQ(a.config.scheme, Scheme::kAbsmax);
  EXPECT_EQ(a.config.bits, 8);
  EXPECT_EQ(a.config.granularity, Granularity::kPerTensor);
  EXPECT_EQ(a.config.range, RangeMethod::kMinMax);

  const Variant z = parse_variant("zeropoint:4:group64");
  EXPECT_EQ(z.config.scheme, Scheme::kZeroPoint);
  EXPECT_EQ(z.config.bits, 4);
  EXPECT_EQ(z.config.granularity, Granularity::kPerGroup);
  EXPECT_EQ(z.config.group_size, 64);

  const Variant m = parse_variant("absmax:4:channel:mse");
  EXPECT_EQ(m.config.granularity, Granularity::kPerChannel);
  EXPECT_EQ(m.config.range, RangeMethod::kMse);

  const Variant p = parse_variant("zeropoint:8:tensor:p99.99");
  EXPECT_EQ(p.config.range, RangeMethod::kPercentile);
  EXPECT_DOUBLE_EQ(p.config.percentile, 99.99);
  EXPECT_EQ(parse_variant("absmax:2:tensor:p100").config.percentile, 100.0);

  EXPECT_TRUE(parse_variant("fp32").is_fp32);
  EXPECT_EQ(parse_variant(" absmax:8 ").name, "absmax:8");
}

TEST(VariantSpecTest, CanonicalSpellingIsExplicit) {
  EXPECT_EQ(canonical_spec(parse_variant("absmax:8")), "absmax:8:tensor:minmax");
  EXPECT_EQ(canonical_spec(parse_variant("zeropoint:4:group128:p99.9")), "zeropoint:4:group128:p99.9");
  EXPECT_EQ(canonical_spec(parse_variant("fp32")), "fp32");
}

TEST(VariantSpecTest, ListsSplitOnCommas) {
  const auto list = parse_variant_list("fp32,absmax:8,zeropoint:8");
  ASSERT_EQ(list.size(), 3u);
  EXPECT_EQ(list[2].name, "zeropoint:8");
  EXPECT_THROW(parse_variant_list(""), UsageError);
  EXPECT_THROW(parse_variant_list("fp32,,absmax:8"), UsageError);
  EXPECT_THROW(parse_variant_list("fp32,"), UsageError);
}

class MalformedSpecTest : public ::testing::TestWithParam<std::pair<std::string, std::string>> {};

TEST_P(MalformedSpecTest, IsAUsageErrorThatNamesTheSpecAndShowsTheGrammar) {
  const auto& [spec, reason] = GetParam();
  try {
    parse_variant(spec);
    FAIL() << "accepted '" << spec << "'";
  } catch (const UsageError& e) {
    EXPECT_THAT(e.what(), HasSubstr("invalid variant '" + spec + "'"));
    EXPECT_THAT(e.what(), HasSubstr(reason));
    EXPECT_THAT(e.what(), HasSubstr("SCHEME:BITS[:GRANULARITY[:RANGE[:ARITH]]]"));
  }
}

INSTANTIATE_TEST_SUITE_P(
    Catalogue, MalformedSpecTest,
    ::testing::Values(std::make_pair("", "empty"), std::make_pair("fp16", "unknown scheme 'fp16'"),
                      std::make_pair("int8:8", "unknown scheme 'int8'"), std::make_pair("absmax", "fields"),
                      std::make_pair("absmax:0", "bits"), std::make_pair("absmax:1", "bits"),
                      std::make_pair("absmax:9", "bits"), std::make_pair("absmax:-1", "bits"),
                      std::make_pair("absmax:abc", "bits"), std::make_pair("absmax:8.0", "bits"),
                      std::make_pair("absmax:", "bits"), std::make_pair("absmax:8:group0", "group size"),
                      std::make_pair("absmax:8:group", "group size"), std::make_pair("absmax:8:groupx", "group size"),
                      std::make_pair("absmax:8:group-4", "group size"), std::make_pair("absmax:8:row", "unknown granularity"),
                      std::make_pair("absmax:8:tensor:p0", "percentile"), std::make_pair("absmax:8:tensor:p100.5", "percentile"),
                      std::make_pair("absmax:8:tensor:p-3", "percentile"), std::make_pair("absmax:8:tensor:p", "unknown range"),
                      std::make_pair("absmax:8:tensor:pabc", "percentile"), std::make_pair("absmax:8:tensor:p1e2", "percentile"),
                      std::make_pair("absmax:8:tensor:median", "unknown range"),
                      std::make_pair("absmax:8:tensor:mse:extra", "unknown arithmetic 'extra' (expected numpy or tutorial)"),
                      std::make_pair("absmax:8:tensor:mse:tutorial:x", "fields"),
                      std::make_pair("absmax:8:tensor:minmax:", "unknown arithmetic"),
                      std::make_pair("absmax:8:tensor:minmax:Tutorial", "unknown arithmetic"),
                      std::make_pair("absmax:8:tensor:percentile", "p followed by P"),
                      std::make_pair("ABSMAX:8", "unknown scheme 'ABSMAX' (expected absmax or zeropoint)")));

// ---- the ARITH field ----

TEST(VariantSpecTest, TutorialFieldSelectsTheTutorialArithmetic) {
  for (const std::string scheme : {"absmax", "zeropoint"}) {
    const Variant v = parse_variant(scheme + ":4:tensor:minmax:tutorial");
    const QuantConfig expected = torch_tutorial_config(v.config.scheme, 4);
    EXPECT_EQ(v.config.scale_form, ScaleForm::kInverseStep);
    EXPECT_EQ(v.config.zero_point_codes, ZeroPointCodes::kSigned);
    EXPECT_EQ(v.config.scale_form, expected.scale_form);
    EXPECT_EQ(v.config.zero_point_codes, expected.zero_point_codes);
    EXPECT_EQ(v.config.bits, 4);
    EXPECT_EQ(canonical_spec(v), scheme + ":4:tensor:minmax:tutorial");
  }
  EXPECT_EQ(canonical_spec(parse_variant("zeropoint:3:group32:mse:tutorial")), "zeropoint:3:group32:mse:tutorial");
}

TEST(VariantSpecTest, DefaultArithmeticIsOmittedFromTheCanonicalSpelling) {
  const Variant explicit_numpy = parse_variant("absmax:8:tensor:minmax:numpy");
  EXPECT_EQ(explicit_numpy.name, "absmax:8:tensor:minmax:numpy");
  EXPECT_EQ(canonical_spec(explicit_numpy), "absmax:8:tensor:minmax");
  EXPECT_EQ(explicit_numpy.config.scale_form, ScaleForm::kStep);
  EXPECT_EQ(explicit_numpy.config.zero_point_codes, ZeroPointCodes::kUnsigned);
}

// Specs written before the ARITH field get exactly the config they got then:
// the numpy seed's, so their weights are bit-identical.
TEST(VariantSpecTest, OldSpecsKeepTheNumpyArithmetic) {
  torch::manual_seed(7);
  const torch::Tensor w = torch::randn({16, 64});
  for (const std::string spec : {"absmax:8", "zeropoint:8", "absmax:4:channel", "zeropoint:3:group32:p99.9",
                                 "zeropoint:2:tensor:mse"}) {
    const Variant v = parse_variant(spec);
    EXPECT_EQ(v.config.scale_form, ScaleForm::kStep) << spec;
    EXPECT_EQ(v.config.zero_point_codes, ZeroPointCodes::kUnsigned) << spec;
    QuantConfig seed = numpy_seed_config(v.config.scheme, v.config.bits);
    seed.granularity = v.config.granularity;
    seed.group_size = v.config.group_size;
    seed.range = v.config.range;
    seed.percentile = v.config.percentile;
    EXPECT_TRUE(torch::equal(fake_quantize(w, v.config), fake_quantize(w, seed))) << spec;
  }
}

// Every combination of table names: the spec parses, its canonical spelling
// parses to the same config, and spelling it again is stable.
TEST(VariantSpecTest, CanonicalSpellingRoundTripsEveryTableName) {
  for (const auto& scheme : kSchemeNames.entries) {
    for (const auto& granularity : kGranularityNames.entries) {
      for (const auto& range : kRangeMethodNames.entries) {
        for (const auto& arithmetic : kArithmeticNames.entries) {
          const std::string g = std::string(granularity.name) + (granularity.value == Granularity::kPerGroup ? "32" : "");
          const std::string r = range.value == RangeMethod::kPercentile ? "p99.5" : std::string(range.name);
          const std::string spec = fmt::format("{}:5:{}:{}:{}", scheme.name, g, r, arithmetic.name);
          const Variant v = parse_variant(spec);
          EXPECT_EQ(v.config.scheme, scheme.value) << spec;
          EXPECT_EQ(v.config.granularity, granularity.value) << spec;
          EXPECT_EQ(v.config.range, range.value) << spec;
          EXPECT_EQ(arithmetic_of(v.config), arithmetic.value) << spec;
          const std::string canonical = canonical_spec(v);
          const Variant again = parse_variant(canonical);
          EXPECT_EQ(canonical_spec(again), canonical) << spec;
          EXPECT_EQ(again.config.scale_form, v.config.scale_form) << spec;
          EXPECT_EQ(again.config.zero_point_codes, v.config.zero_point_codes) << spec;
          EXPECT_EQ(again.config.group_size, v.config.group_size) << spec;
          EXPECT_EQ(again.config.percentile, v.config.percentile) << spec;
          const std::string tail = ":tutorial";
          const bool ends_with_tutorial =
              canonical.size() > tail.size() && canonical.compare(canonical.size() - tail.size(), tail.size(), tail) == 0;
          EXPECT_EQ(ends_with_tutorial, arithmetic.value == Arithmetic::kTutorial) << canonical;
        }
      }
    }
  }
}

TEST(VariantSpecTest, GrammarListsEveryTableName) {
  for (const auto& e : kSchemeNames.entries) EXPECT_THAT(kVariantGrammar, HasSubstr(std::string(e.name)));
  for (const auto& e : kGranularityNames.entries) EXPECT_THAT(kVariantGrammar, HasSubstr(std::string(e.name)));
  for (const auto& e : kArithmeticNames.entries) EXPECT_THAT(kVariantGrammar, HasSubstr(std::string(e.name)));
  EXPECT_THAT(kVariantGrammar, HasSubstr("RANGE minmax|pP|mse"));
  EXPECT_THAT(kVariantGrammar, HasSubstr("GRANULARITY tensor|channel|groupN"));
  EXPECT_THAT(kVariantGrammar, HasSubstr("ARITH numpy|tutorial"));
}

TEST(VariantSpecTest, ConfigWithoutASpecSpellingIsAUsageError) {
  QuantConfig config = parse_variant("zeropoint:8").config;
  config.zero_point_codes = ZeroPointCodes::kSigned;  // step with signed codes: no ARITH names it
  try {
    canonical_spec(make_variant(config));
    FAIL();
  } catch (const UsageError& e) {
    EXPECT_THAT(e.what(), HasSubstr("step with signed zero-point codes"));
  }
}

}  // namespace
}  // namespace quantppl
