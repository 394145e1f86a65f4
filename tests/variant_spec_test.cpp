#include <string>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

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
    EXPECT_THAT(e.what(), HasSubstr("SCHEME:BITS[:GRANULARITY[:RANGE]]"));
  }
}

INSTANTIATE_TEST_SUITE_P(
    Catalogue, MalformedSpecTest,
    ::testing::Values(std::make_pair("", "empty"), std::make_pair("fp16", "fields"),
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
                      std::make_pair("absmax:8:tensor:mse:extra", "fields"), std::make_pair("ABSMAX:8", "unknown scheme")));

}  // namespace
}  // namespace quantppl
