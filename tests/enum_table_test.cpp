// EnumTable (enum_table.h) and every name table of the library: each name
// parses to its value and prints back, names are unique, and an unknown name
// is a UsageError that names the flag and lists the choices.
#include "quantppl/enum_table.h"

#include <set>
#include <string>
#include <vector>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "quantppl/error.h"
#include "quantppl/model_quantizer.h"
#include "quantppl/perplexity.h"
#include "quantppl/quantize.h"

namespace quantppl {
namespace {

using ::testing::HasSubstr;

enum class Fruit { kApple, kPear, kPlum };
constexpr EnumTable<Fruit, 3> kFruitNames{"fruit", {{
    {Fruit::kApple, "apple", "round"},
    {Fruit::kPear, "pear", "pear-shaped"},
    {Fruit::kPlum, "plum", "small"},
}}};

// The table is usable in constant expressions (constant-initialised tables).
static_assert(kFruitNames.name(Fruit::kPear) == "pear");
static_assert(*kFruitNames.find("plum") == Fruit::kPlum);
static_assert(!kFruitNames.find("Plum").has_value());

TEST(EnumTableTest, LooksUpBothWays) {
  EXPECT_EQ(kFruitNames.name(Fruit::kApple), "apple");
  EXPECT_EQ(kFruitNames.help(Fruit::kPlum), "small");
  EXPECT_EQ(kFruitNames.find("pear"), Fruit::kPear);
  EXPECT_FALSE(kFruitNames.find("").has_value());
  EXPECT_FALSE(kFruitNames.find("apple ").has_value());
  EXPECT_EQ(kFruitNames.parse("plum", "--fruit"), Fruit::kPlum);
}

TEST(EnumTableTest, ListsTheChoices) {
  EXPECT_EQ(kFruitNames.choices(), "apple, pear, plum");
  EXPECT_EQ(kFruitNames.choices("|"), "apple|pear|plum");
  EXPECT_EQ(kFruitNames.choices_in_words(), "apple, pear or plum");
  EXPECT_EQ(kFruitNames.described(), "apple: round; pear: pear-shaped; plum: small");
  EXPECT_EQ(kFruitNames.names(), (std::vector<std::string>{"apple", "pear", "plum"}));
}

TEST(EnumTableTest, UnknownNameIsAUsageErrorNamingTheContextAndTheChoices) {
  try {
    kFruitNames.parse("kiwi", "--fruit");
    FAIL() << "accepted kiwi";
  } catch (const UsageError& e) {
    EXPECT_STREQ(e.what(), "--fruit: unknown fruit 'kiwi'; expected apple, pear or plum");
  }
  EXPECT_EQ(kFruitNames.unknown_message("kiwi", ""), "unknown fruit 'kiwi'; expected apple, pear or plum");
}

// Every value of the enum (listed by hand: C++ cannot enumerate an enum) has
// exactly one row; its name parses back to it; names are unique, non-empty
// and free of the characters specs and CSV use as separators.
template <typename E, std::size_t N>
void expect_complete_round_trip(const EnumTable<E, N>& table, const std::vector<E>& all_values) {
  ASSERT_EQ(all_values.size(), N) << table.what;
  std::set<std::string> names;
  for (const E value : all_values) {
    const std::string name(table.name(value));
    EXPECT_NE(name, "?") << table.what << " has no row for value " << static_cast<int>(value);
    EXPECT_FALSE(name.empty());
    EXPECT_EQ(name.find_first_of(":, \t"), std::string::npos) << name;
    EXPECT_EQ(table.find(name), value) << name;
    EXPECT_EQ(table.parse(name, "--flag"), value) << name;
    EXPECT_FALSE(table.help(value).empty()) << name;
    names.insert(name);
  }
  EXPECT_EQ(names.size(), N) << table.what << " repeats a name";
  EXPECT_THROW(table.parse("no-such-name", "--flag"), UsageError);
}

TEST(EnumTableTest, EveryLibraryTableRoundTrips) {
  expect_complete_round_trip(kSchemeNames, {Scheme::kAbsmax, Scheme::kZeroPoint});
  expect_complete_round_trip(kGranularityNames,
                             {Granularity::kPerTensor, Granularity::kPerChannel, Granularity::kPerGroup});
  expect_complete_round_trip(kRangeMethodNames, {RangeMethod::kMinMax, RangeMethod::kPercentile, RangeMethod::kMse});
  expect_complete_round_trip(kScaleFormNames, {ScaleForm::kStep, ScaleForm::kInverseStep});
  expect_complete_round_trip(kZeroPointCodesNames, {ZeroPointCodes::kUnsigned, ZeroPointCodes::kSigned});
  expect_complete_round_trip(kArithmeticNames, {Arithmetic::kNumpy, Arithmetic::kTutorial});
  expect_complete_round_trip(kPerplexityModeNames, {PerplexityMode::kReconstruct, PerplexityMode::kPrefix,
                                                     PerplexityMode::kCausal, PerplexityMode::kLlamaCpp});
  expect_complete_round_trip(kBackupStorageNames, {BackupStorage::kAuto, BackupStorage::kMemory, BackupStorage::kFile,
                                                  BackupStorage::kModel});
}

// The names files and reports already carry must not change: .qpack headers
// (docs/qpack-format.md), report JSON ("mode", "backup") and variant specs.
TEST(EnumTableTest, StoredNamesAreTheHistoricalOnes) {
  EXPECT_EQ(kSchemeNames.choices(), "absmax, zeropoint");
  EXPECT_EQ(kGranularityNames.choices(), "tensor, channel, group");
  EXPECT_EQ(kRangeMethodNames.choices(), "minmax, percentile, mse");
  EXPECT_EQ(kScaleFormNames.choices(), "step, inverse_step");
  EXPECT_EQ(kZeroPointCodesNames.choices(), "unsigned, signed");
  EXPECT_EQ(kPerplexityModeNames.choices(), "reconstruct, prefix, causal, llamacpp");  // causal models added two
  EXPECT_EQ(kBackupStorageNames.choices(), "auto, memory, file, model");
  // The default arithmetic comes first and is what a spec without ARITH gets.
  EXPECT_EQ(kArithmeticNames.entries[0].value, Arithmetic::kNumpy);
}

TEST(EnumTableTest, ParseFunctionsNameTheirFlag) {
  try {
    parse_perplexity_mode("both");
    FAIL();
  } catch (const UsageError& e) {
    EXPECT_STREQ(e.what(), "--mode: unknown perplexity mode 'both'; expected reconstruct, prefix, causal or llamacpp");
  }
  try {
    parse_backup_storage("disk");
    FAIL();
  } catch (const UsageError& e) {
    EXPECT_STREQ(e.what(), "--backup: unknown weight backup 'disk'; expected auto, memory, file or model");
  }
  EXPECT_EQ(to_string(PerplexityMode::kPrefix), "prefix");
  EXPECT_EQ(to_string(BackupStorage::kFile), "file");
  EXPECT_EQ(to_string(Granularity::kPerGroup, 64), "group64");
  EXPECT_EQ(to_string(RangeMethod::kPercentile, 99.9), "p99.9");
  EXPECT_EQ(to_string(RangeMethod::kMse, 99.9), "mse");
}

TEST(ArithmeticTest, SetAndRecogniseThePairs) {
  for (const Scheme scheme : {Scheme::kAbsmax, Scheme::kZeroPoint}) {
    QuantConfig c = numpy_seed_config(scheme, 4);
    EXPECT_EQ(arithmetic_of(c), Arithmetic::kNumpy);
    EXPECT_EQ(c.scale_form, ScaleForm::kStep);
    EXPECT_EQ(c.zero_point_codes, ZeroPointCodes::kUnsigned);
    set_arithmetic(c, Arithmetic::kTutorial);
    EXPECT_EQ(c.scale_form, ScaleForm::kInverseStep);
    EXPECT_EQ(c.zero_point_codes, ZeroPointCodes::kSigned);
    EXPECT_EQ(arithmetic_of(c), Arithmetic::kTutorial);
    for (const int bits : {2, 4, 8}) {
      const QuantConfig t = torch_tutorial_config(scheme, bits);
      EXPECT_EQ(t.bits, bits);
      EXPECT_EQ(arithmetic_of(t), Arithmetic::kTutorial);
    }
    EXPECT_EQ(torch_tutorial_config(scheme).bits, 8);
  }
  // Pairs no spec names: only zero point's codes make them distinct.
  QuantConfig mixed = numpy_seed_config(Scheme::kZeroPoint, 8);
  mixed.zero_point_codes = ZeroPointCodes::kSigned;
  EXPECT_FALSE(arithmetic_of(mixed).has_value());
  mixed.scheme = Scheme::kAbsmax;
  EXPECT_EQ(arithmetic_of(mixed), Arithmetic::kNumpy);
  QuantConfig inverse_unsigned = numpy_seed_config(Scheme::kZeroPoint, 8);
  inverse_unsigned.scale_form = ScaleForm::kInverseStep;
  EXPECT_FALSE(arithmetic_of(inverse_unsigned).has_value());
}

}  // namespace
}  // namespace quantppl
