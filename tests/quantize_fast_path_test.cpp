// The fused fake-quantize path (src/fake_quantize_kernel.*) against the
// plain tensor-op reference kept in quantize.cpp: bit for bit (compared as
// integers, so even the sign of a zero counts), for every scheme, scale form,
// code convention, granularity, bit width and min-max/percentile range, on
// random data full of ties and on every Linear weight of the shipped model.
#include <ATen/Parallel.h>
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <tuple>

#include "../src/fake_quantize_kernel.h"
#include "fixture_support.h"
#include "quantppl/compare.h"
#include "quantppl/contract_model.h"
#include "quantppl/error.h"
#include "quantppl/packed_model.h"
#include "quantppl/quantize.h"

namespace quantppl {
namespace {

// Bitwise equality of two float tensors (torch::equal treats -0.0 == 0.0).
::testing::AssertionResult bit_identical(const torch::Tensor& a, const torch::Tensor& b) {
  if (a.sizes() != b.sizes() || a.scalar_type() != b.scalar_type()) {
    return ::testing::AssertionFailure() << "shape or dtype differ";
  }
  const auto int_type = a.scalar_type() == torch::kFloat64 ? torch::kInt64 : torch::kInt32;
  const torch::Tensor differ = a.contiguous().view(int_type) != b.contiguous().view(int_type);
  const int64_t n = differ.sum().item<int64_t>();
  if (n == 0) return ::testing::AssertionSuccess();
  const int64_t first = torch::nonzero(differ.reshape({-1}))[0][0].item<int64_t>();
  return ::testing::AssertionFailure() << n << " of " << a.numel() << " elements differ; first at " << first << ": "
                                       << a.reshape({-1})[first].item<double>() << " vs "
                                       << b.reshape({-1})[first].item<double>();
}

// Weights with many exact .5 ties after scaling, zeros of both signs, and outliers.
torch::Tensor tricky_weights(int64_t rows, int64_t cols, torch::ScalarType dtype, uint64_t seed) {
  torch::manual_seed(seed);
  torch::Tensor w = torch::randn({rows, cols}, torch::kFloat64) * 0.05;
  // A fifth of the entries on a coarse grid of multiples of 1/256 (ties for many scales).
  const torch::Tensor grid = torch::round(w * 256) / 256;
  w = torch::where(torch::rand({rows, cols}, torch::kFloat64) < 0.2, grid, w);
  w.index_put_({0, 0}, -0.0);
  w.index_put_({rows - 1, cols - 1}, 0.0);
  w.index_put_({rows / 2, 3}, 0.9);  // an outlier
  return w.to(dtype);
}

struct Case {
  Scheme scheme;
  Granularity granularity;
  int64_t group;
  int bits;
  ScaleForm form;
  ZeroPointCodes codes;
  RangeMethod range;
};

std::string describe(const Case& c) {
  return to_string(c.scheme) + ":" + std::to_string(c.bits) + ":" + to_string(c.granularity, c.group) + ":" +
         to_string(c.range, 99.0) + (c.form == ScaleForm::kInverseStep ? ":inverse" : ":step") +
         (c.codes == ZeroPointCodes::kSigned ? ":signed" : ":unsigned");
}

std::vector<Case> all_cases() {
  std::vector<Case> cases;
  for (Scheme scheme : {Scheme::kAbsmax, Scheme::kZeroPoint}) {
    for (auto [granularity, group] : {std::pair{Granularity::kPerTensor, int64_t{0}},
                                      std::pair{Granularity::kPerChannel, int64_t{0}},
                                      std::pair{Granularity::kPerGroup, int64_t{32}}}) {
      for (int bits : {2, 3, 4, 8}) {
        for (ScaleForm form : {ScaleForm::kStep, ScaleForm::kInverseStep}) {
          for (ZeroPointCodes codes : {ZeroPointCodes::kUnsigned, ZeroPointCodes::kSigned}) {
            if (scheme == Scheme::kAbsmax && codes == ZeroPointCodes::kSigned) continue;  // same codes
            for (RangeMethod range : {RangeMethod::kMinMax, RangeMethod::kPercentile}) {
              cases.push_back({scheme, granularity, group, bits, form, codes, range});
            }
          }
        }
      }
    }
  }
  return cases;
}

QuantConfig config_of(const Case& c) {
  QuantConfig config;
  config.scheme = c.scheme;
  config.bits = c.bits;
  config.granularity = c.granularity;
  config.group_size = c.group;
  config.scale_form = c.form;
  config.zero_point_codes = c.codes;
  config.range = c.range;
  config.percentile = 99.0;
  return config;
}

TEST(FastPath, BitIdenticalWithReferenceOnEveryConfiguration) {
  // 67 columns: rows are not a multiple of 8 long, so the scalar tail runs too (per group uses 32).
  for (torch::ScalarType dtype : {torch::kFloat32, torch::kFloat64}) {
    for (const Case& c : all_cases()) {
      const int64_t cols = c.granularity == Granularity::kPerGroup ? 96 : 67;
      const torch::Tensor w = tricky_weights(40, cols, dtype, 7);
      const QuantConfig config = config_of(c);
      const QParams fast = choose_qparams(w, config);
      const QParams reference = choose_qparams_reference(w, config);
      ASSERT_TRUE(bit_identical(fast.scale, reference.scale)) << describe(c);
      ASSERT_TRUE(torch::equal(fast.zero_point, reference.zero_point)) << describe(c);
      ASSERT_TRUE(bit_identical(fake_quantize(w, config), fake_quantize_reference(w, config))) << describe(c);
    }
  }
}

TEST(FastPath, BitIdenticalOnLargeTensorsAcrossThreadCounts) {
  // Large enough to be split into several parallel pieces, per tensor included.
  const torch::Tensor w = tricky_weights(1024, 384, torch::kFloat32, 11);
  const int threads = at::get_num_threads();
  for (const Case& c : all_cases()) {
    if (c.bits != 4 && c.bits != 8) continue;
    const QuantConfig config = config_of(c);
    const torch::Tensor reference = fake_quantize_reference(w, config);
    for (int t : {1, 2}) {
      at::set_num_threads(t);
      ASSERT_TRUE(bit_identical(fake_quantize(w, config), reference)) << describe(c) << " threads " << t;
    }
  }
  at::set_num_threads(threads);
}

TEST(FastPath, IntoEqualsInPlaceAndLeavesSourceAlone) {
  const torch::Tensor w = tricky_weights(64, 256, torch::kFloat32, 3);
  const torch::Tensor before = w.clone();
  QuantConfig config = numpy_seed_config(Scheme::kZeroPoint, 4);
  config.granularity = Granularity::kPerChannel;
  const QParams params = choose_qparams(w, config);
  torch::Tensor dst = torch::empty_like(w);
  fake_quantize_into(w, dst, params, config);
  torch::Tensor in_place = w.clone();
  fake_quantize_with_(in_place, params, config);
  EXPECT_TRUE(bit_identical(dst, in_place));
  EXPECT_TRUE(bit_identical(w, before));
  torch::Tensor wrong_shape = torch::empty({64, 128});
  EXPECT_THROW(fake_quantize_into(w, wrong_shape, params, config), UsageError);
}

TEST(FastPath, MinMaxKernelMatchesAminmaxAndFindsEveryNonFinite) {
  for (int64_t n : {1, 7, 8, 9, 64, 1000, 1003}) {
    const torch::Tensor x = torch::randn({n});
    float lo = 0, hi = 0;
    ASSERT_TRUE(kernel::min_max(x.data_ptr<float>(), n, &lo, &hi));
    EXPECT_EQ(lo, x.min().item<float>());
    EXPECT_EQ(hi, x.max().item<float>());
    // A NaN or Inf at any position (vector body or scalar tail) is found.
    for (int64_t pos : {int64_t{0}, n / 2, n - 1}) {
      for (float bad : {std::numeric_limits<float>::quiet_NaN(), std::numeric_limits<float>::infinity(),
                        -std::numeric_limits<float>::infinity()}) {
        torch::Tensor y = x.clone();
        y[pos] = bad;
        EXPECT_FALSE(kernel::min_max(y.data_ptr<float>(), n, &lo, &hi)) << "n " << n << " pos " << pos;
      }
    }
  }
}

TEST(FastPath, NonFiniteWeightIsADataErrorNamingTheLayerAndIndex) {
  torch::Tensor w = torch::randn({300, 300});
  w[123][45] = std::numeric_limits<float>::quiet_NaN();
  try {
    fake_quantize(w, numpy_seed_config(Scheme::kAbsmax, 8), "encoder.block.0.layer.0.SelfAttention.q");
    FAIL() << "expected a DataError";
  } catch (const DataError& e) {
    const std::string what = e.what();
    EXPECT_NE(what.find("encoder.block.0.layer.0.SelfAttention.q"), std::string::npos) << what;
    EXPECT_NE(what.find(std::to_string(123 * 300 + 45)), std::string::npos) << what;
  }
}

TEST(FastPath, MseSearchPicksTheReferenceRange) {
  // The fused search sums errors in another order than torch::sum: its choice may only differ
  // where two candidates tie to ~1e-15, which random data does not produce.
  for (Scheme scheme : {Scheme::kAbsmax, Scheme::kZeroPoint}) {
    for (Granularity granularity : {Granularity::kPerTensor, Granularity::kPerChannel, Granularity::kPerGroup}) {
      QuantConfig config = numpy_seed_config(scheme, 4);
      config.granularity = granularity;
      config.group_size = 64;
      config.range = RangeMethod::kMse;
      const torch::Tensor w = tricky_weights(96, 256, torch::kFloat32, 5);
      const QParams fast = choose_qparams(w, config);
      const QParams reference = choose_qparams_reference(w, config);
      EXPECT_TRUE(bit_identical(fast.scale, reference.scale)) << to_string(scheme) << " " << to_string(granularity, 64);
      EXPECT_TRUE(torch::equal(fast.zero_point, reference.zero_point));
    }
  }
}

TEST(FastPath, EveryWeightOfTheDefaultModel) {
  ContractModel model = load_model_file(default_model_path());
  for (const Case& c : all_cases()) {
    if (c.range != RangeMethod::kMinMax || c.form != ScaleForm::kStep || c.codes != ZeroPointCodes::kUnsigned) continue;
    if (c.bits != 4 && c.bits != 8) continue;
    QuantConfig config = config_of(c);
    config.group_size = 64;
    for (const LinearLayer& layer : model.linear_layers()) {
      ASSERT_TRUE(bit_identical(fake_quantize(layer.weight, config, layer.name),
                                fake_quantize_reference(layer.weight, config, layer.name)))
          << describe(c) << " " << layer.name;
    }
  }
}

}  // namespace
}  // namespace quantppl
