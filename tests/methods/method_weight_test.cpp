// MethodResultWeight (include/quantppl/methods/method_weight.h) holds a method's
// result packed, not as float32: its W_hat must still be the float32 result
// the method computed, bit for bit -- V itself (GPTQ), V / s by one float32
// division (AWQ, computed here with torch directly, the way the object did
// before it packed) -- for every format family, and it must not keep V.
#include <cmath>
#include <cstdint>
#include <limits>
#include <memory>
#include <string>
#include <vector>

#include <gtest/gtest.h>
#include <torch/torch.h>

#include "quantppl/error.h"
#include "quantppl/formats/format_table.h"
#include "quantppl/methods/gptq.h"
#include "quantppl/methods/method_weight.h"

namespace quantppl {
namespace {

constexpr int64_t kOut = 48;
constexpr int64_t kIn = 256;

torch::Tensor random_weight(uint64_t seed) {
  torch::manual_seed(seed);
  torch::Tensor w = torch::randn({kOut, kIn}) * 0.05f;
  w.slice(1, 0, 4).mul_(6.0f);  // a few large inputs, as in real layers
  return w;
}

// H = (2/N) X^T X of correlated activations: GPTQ moves weights off RTN's grid points.
torch::Tensor correlated_hessian(uint64_t seed) {
  torch::manual_seed(seed);
  const torch::Tensor mix = torch::eye(kIn, torch::kFloat64) + 0.3 * torch::randn({kIn, kIn}, torch::kFloat64) / 16.0;
  const torch::Tensor x = torch::randn({512, kIn}, torch::kFloat64).mm(mix);
  return x.t().mm(x) * (2.0 / 512);
}

// Bit patterns equal (== would take -0 for +0).
bool same_bits(const torch::Tensor& a, const torch::Tensor& b) {
  return a.sizes().equals(b.sizes()) && a.contiguous().view(torch::kInt32).equal(b.contiguous().view(torch::kInt32));
}

struct Case {
  std::string spec;
  bool four_bit;
};

const std::vector<Case>& cases() {
  static const std::vector<Case> c = {
      {"absmax:4:group64", true}, {"zeropoint:4:channel", true}, {"zeropoint:3:group32", false},
      {"nf4:group64", true},      {"q4_0", true},                {"q4_1", true},
      {"mxfp4", true},            {"nvfp4", true},               {"fp8e4m3:channel", false},
  };
  return c;
}

struct Result {
  torch::Tensor v;       // V, the method's weight on the format's grid
  torch::Tensor scales;  // s, or undefined
  torch::Tensor w_hat;   // the old way: V, or V / s
  std::unique_ptr<MethodResultWeight> held;
};

// As variant_methods.cpp wraps a GPTQ result: the packer from GPTQ's parameter source.
Result gptq_result(const std::shared_ptr<const WeightFormat>& format, const torch::Tensor& w, const std::string& name) {
  GptqResult g = gptq_quantize(w, correlated_hessian(11), *format, name);
  Result r;
  r.v = g.weight;
  r.w_hat = g.weight.clone();
  auto packer = format->prepare_from_groups(g.group_whole.contiguous(), g.parameter_source.contiguous(), name);
  r.held = std::make_unique<MethodResultWeight>(g.weight, torch::Tensor(), std::move(packer), format, name);
  return r;
}

// As variant_methods.cpp wraps an AWQ result: V = Q(W diag(s)), parameters from W diag(s).
Result awq_result(const std::shared_ptr<const WeightFormat>& format, const torch::Tensor& w, const std::string& name) {
  torch::manual_seed(5);
  Result r;
  r.scales = torch::exp(torch::randn({kIn}) * 0.5f);
  const torch::Tensor scaled = (w * r.scales.unsqueeze(0)).contiguous();
  r.v = torch::empty_like(scaled);
  format->fake_quantize_into(scaled, r.v, name);
  r.w_hat = r.v.div(r.scales.unsqueeze(0));
  auto packer = format->prepare_from_groups(scaled, scaled, name);
  r.held = std::make_unique<MethodResultWeight>(r.v, r.scales, std::move(packer), format, name);
  return r;
}

void expect_rebuilt(const Result& r, const torch::Tensor& w, const WeightFormat& format, const std::string& what) {
  SCOPED_TRACE(what);
  // The case must exercise something: a GPTQ/AWQ result off the original weight.
  EXPECT_FALSE(r.w_hat.equal(w));
  EXPECT_FALSE(r.held->holds_float32());
  torch::Tensor dst = torch::full_like(w, std::numeric_limits<float>::quiet_NaN());
  r.held->fake_quantize_into(w, dst);
  EXPECT_TRUE(same_bits(dst, r.w_hat));
  EXPECT_TRUE(same_bits(r.held->weight(), r.w_hat));
  // In place over the original (compare writes into the live weight).
  torch::Tensor live = w.clone();
  r.held->fake_quantize_into(live, live);
  EXPECT_TRUE(same_bits(live, r.w_hat));
  // The packed layer still loads to the same numbers (a zero may load as +0
  // where the method computed -0: absmax stores no sign for q = 0).
  const torch::Tensor loaded = unpack_method_weight(format, r.scales.defined(), r.held->pack(w), "layer.0");
  EXPECT_TRUE(loaded.equal(r.w_hat));
}

int64_t negative_zeros(const torch::Tensor& x) {
  return x.contiguous().view(torch::kInt32).eq(std::numeric_limits<int32_t>::min()).sum().item<int64_t>();
}

TEST(MethodResultWeightTest, RebuildsTheMethodsWeightsBitForBit) {
  const torch::Tensor w = random_weight(3);
  for (const Case& c : cases()) {
    const auto format = parse_format(c.spec);
    if (c.spec == "absmax:4:group64") {
      // absmax unpacks q = 0 as +0 where GPTQ rounded a small negative weight to -0:
      // the case that the zero-sign mask must restore.
      const Result r = gptq_result(format, w, "layer.0");
      EXPECT_GT(negative_zeros(r.v), 0);
    }
    expect_rebuilt(gptq_result(format, w, "layer.0"), w, *format, c.spec + " gptq");
    expect_rebuilt(awq_result(format, w, "layer.0"), w, *format, c.spec + " awq");
  }
}

TEST(MethodResultWeightTest, HoldsThePackedFormNotAFloat32Copy) {
  const torch::Tensor w = random_weight(4);
  const double float32_bytes = 4.0 * kOut * kIn;
  for (const Case& c : cases()) {
    SCOPED_TRACE(c.spec);
    const auto format = parse_format(c.spec);
    for (const bool awq : {false, true}) {
      Result r = awq ? awq_result(format, w, "layer.0") : gptq_result(format, w, "layer.0");
      // Nothing but this test refers to V's storage any more.
      EXPECT_EQ(r.v.storage().use_count(), 1);
      const int64_t held = r.held->held_bytes();
      // The format's packed size of the shape (its documented bits a weight), s,
      // and at most one bit a weight for the signs of zeros.
      const int64_t packed = format->packed_bytes(kOut, kIn) + (awq ? 4 * kIn : 0);
      EXPECT_GE(held, packed);
      EXPECT_LE(held, packed + kOut * kIn / 8);
      if (c.four_bit) {
        EXPECT_LT(static_cast<double>(held), 0.3 * float32_bytes);
      }
      EXPECT_LT(static_cast<double>(held), 0.35 * float32_bytes);
    }
  }
}

// A format whose unpack does not give back what its pack wrote (one weight one
// ulp off): the object keeps V, so evaluation is still the method's, and
// refuses to pack, naming the layer.
class OffByOneUlpFormat final : public WeightFormat {
 public:
  explicit OffByOneUlpFormat(std::shared_ptr<const WeightFormat> base) : base_(std::move(base)) {}
  std::string spec() const override { return base_->spec(); }
  int64_t group_columns(int64_t in, const std::string& name) const override { return base_->group_columns(in, name); }
  double bits_per_weight(int64_t out, int64_t in) const override { return base_->bits_per_weight(out, in); }
  int64_t packed_bytes(int64_t out, int64_t in) const override { return base_->packed_bytes(out, in); }
  std::unique_ptr<PreparedWeight> prepare(const torch::Tensor& w, const std::string& name) const override {
    return base_->prepare(w, name);
  }
  void fake_quantize_into(const torch::Tensor& src, torch::Tensor& dst, const std::string& name) const override {
    base_->fake_quantize_into(src, dst, name);
  }
  std::unique_ptr<ColumnGroupQuantizer> begin_group(const torch::Tensor& whole, const torch::Tensor& cols,
                                                    const std::string& name) const override {
    return base_->begin_group(whole, cols, name);
  }
  std::unique_ptr<PreparedWeight> prepare_from_groups(const torch::Tensor& whole, const torch::Tensor& source,
                                                      const std::string& name) const override {
    return base_->prepare_from_groups(whole, source, name);
  }
  torch::Tensor unpack(const PackedWeight& packed, const std::string& name) const override {
    torch::Tensor w = base_->unpack(packed, name);
    float* p = w.data_ptr<float>();
    p[7] = std::nextafter(p[7], std::numeric_limits<float>::infinity());
    return w;
  }

 private:
  std::shared_ptr<const WeightFormat> base_;
};

TEST(MethodResultWeightTest, KeepsFloat32AndRefusesToPackWhenTheFormatDoesNotRoundTrip) {
  const torch::Tensor w = random_weight(5);
  const auto format = std::make_shared<const OffByOneUlpFormat>(parse_format("q4_0"));
  const std::string name = "decoder.block.2.layer.0.SelfAttention.q";
  Result r = gptq_result(format, w, name);
  EXPECT_TRUE(r.held->holds_float32());
  EXPECT_EQ(r.held->held_bytes(), 4 * kOut * kIn);
  torch::Tensor dst = torch::empty_like(w);
  r.held->fake_quantize_into(w, dst);
  EXPECT_TRUE(same_bits(dst, r.w_hat));
  EXPECT_EQ(*r.held->packed_bytes(), parse_format("q4_0")->packed_bytes(kOut, kIn));
  try {
    (void)r.held->pack(w);
    FAIL() << "pack() accepted a format that does not round-trip";
  } catch (const DataError& e) {
    EXPECT_NE(std::string(e.what()).find(name), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("bit-for-bit"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace quantppl
