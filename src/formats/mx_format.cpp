// OCP MX formats; the math is in the header. Compiled with -ffp-contract=off.
#include "quantppl/formats/mx_format.h"

#include <cmath>

#include "block_format.h"
#include "quantppl/formats/float_formats.h"

namespace quantppl::formats {
namespace {

const MiniFloat& minifloat_of(MxElement e) {
  switch (e) {
    case MxElement::kFp4E2M1: return kE2M1;
    case MxElement::kFp6E2M3: return kE2M3;
    case MxElement::kFp6E3M2: return kE3M2;
    case MxElement::kFp8E4M3: return kE4M3;
    default: return kE5M2;
  }
}

int element_bits(MxElement e) { return e == MxElement::kInt8 ? 8 : minifloat_of(e).bits(); }

struct MxCodec {
  struct Params {
    int32_t k = -127;  // X = 2^k
  };
  struct Context {};

  MxElement element;

  std::string spec() const { return mx_name(element); }
  int64_t block_len(int64_t in, const std::string& name) const {
    if (in % kMxBlock != 0) {
      throw UsageError(spec() + " needs in_features divisible by its block of 32, weight '" + name + "' has " +
                       std::to_string(in));
    }
    return kMxBlock;
  }
  int code_bits() const { return element_bits(element); }
  std::vector<SectionLayout> layout(int64_t blocks) const { return {{"scales", "e8m0", blocks, 8}}; }
  bool needs_signed_max() const { return false; }
  bool needs_min_max() const { return false; }
  Context context(const BlockStats&) const { return {}; }
  bool local() const { return true; }
  bool needs_context() const { return false; }
  bool lazy_safe(const BlockStats&) const { return true; }  // choose_local never throws

  Params choose_local(const BlockStats& st, const Context&, const std::string&) const {
    if (st.amax == 0) return {-127};
    const int k = floor_log2(st.amax) - mx_emax(element);
    return {k < -127 ? -127 : (k > 127 ? 127 : k)};
  }
  void choose(const torch::Tensor& blocks, const std::vector<BlockStats>& stats, const Context& ctx,
              std::vector<Params>& params, const std::string& name) const {
    params.resize(blocks.size(0));
    for (size_t b = 0; b < params.size(); ++b) params[b] = choose_local(stats[b], ctx, name);
  }

  void fake_blocks(const float* x, float* y, int64_t nblocks, int64_t L, const Params* p, const Context&) const {
    static_assert(sizeof(Params) == sizeof(int32_t), "Params is read as an array of exponents");
    if (element == MxElement::kInt8) {
      fake_quantize_mxint8(x, y, nblocks, L, &p->k, 1);
    } else {
      fake_quantize_minifloat_pow2(x, y, nblocks, L, minifloat_of(element), &p->k, 1);
    }
  }
  void encode(const float* x, int32_t* codes, int64_t n, const Params& p, const Context&) const {
    const float inverse = pow2(-p.k);
    for (int64_t i = 0; i < n; ++i) {
      if (element == MxElement::kInt8) {
        const auto q = static_cast<int>(mxint8_code(x[i], inverse));
        codes[i] = static_cast<uint8_t>(static_cast<int8_t>(q));
      } else {
        const MiniFloat& f = minifloat_of(element);
        codes[i] = encode_minifloat(round_to_minifloat(x[i] * inverse, f), f);
      }
    }
  }
  void decode(const int32_t* codes, float* y, int64_t n, const Params& p, const Context&) const {
    const float scale = pow2(p.k);
    for (int64_t i = 0; i < n; ++i) {
      if (element == MxElement::kInt8) {
        const int q = static_cast<int8_t>(static_cast<uint8_t>(codes[i]));
        y[i] = (static_cast<float>(q) * 0.015625f) * scale;
      } else {
        y[i] = decode_minifloat(static_cast<uint8_t>(codes[i]), minifloat_of(element)) * scale;
      }
    }
  }
  void write_params(const std::vector<Params>& params, const Context&, std::vector<PackedSection>& out) const {
    std::string bytes(params.size(), '\0');
    for (size_t b = 0; b < params.size(); ++b) bytes[b] = static_cast<char>(encode_e8m0(params[b].k));
    out.push_back({"scales", "e8m0", static_cast<int64_t>(params.size()), bytes});
  }
  void read_params(const std::vector<const PackedSection*>& sections, int64_t blocks, std::vector<Params>& params,
                   Context&, const std::string& name) const {
    params.resize(blocks);
    for (int64_t b = 0; b < blocks; ++b) {
      const auto code = static_cast<uint8_t>(sections[0]->bytes[b]);
      if (code == 0xFF) {
        throw DataError("packed weight '" + name + "': E8M0 scale " + std::to_string(b) + " is 0xFF (NaN)");
      }
      params[b].k = static_cast<int>(code) - 127;
    }
  }
};

constexpr MxElement kAll[] = {MxElement::kFp4E2M1, MxElement::kFp6E2M3, MxElement::kFp6E3M2,
                              MxElement::kFp8E4M3, MxElement::kFp8E5M2, MxElement::kInt8};

}  // namespace

std::string mx_name(MxElement e) {
  switch (e) {
    case MxElement::kFp4E2M1: return "mxfp4";
    case MxElement::kFp6E2M3: return "mxfp6e2m3";
    case MxElement::kFp6E3M2: return "mxfp6e3m2";
    case MxElement::kFp8E4M3: return "mxfp8e4m3";
    case MxElement::kFp8E5M2: return "mxfp8e5m2";
    default: return "mxint8";
  }
}

int mx_emax(MxElement e) {
  switch (e) {
    case MxElement::kFp4E2M1: return 2;
    case MxElement::kFp6E2M3: return 2;
    case MxElement::kFp6E3M2: return 4;
    case MxElement::kFp8E4M3: return 8;
    case MxElement::kFp8E5M2: return 15;
    default: return 0;
  }
}

std::unique_ptr<WeightFormat> make_mx_format(MxElement element) {
  return std::make_unique<BlockFormat<MxCodec>>(MxCodec{element});
}

std::unique_ptr<WeightFormat> parse_mx_format(const std::string& spec) {
  const std::string head = spec.substr(0, spec.find(':'));
  for (MxElement e : kAll) {
    if (head == mx_name(e)) {
      if (head != spec) {
        throw UsageError("invalid format '" + spec + "': " + head + " has no fields (its block is 32 inputs, its scale E8M0)");
      }
      return make_mx_format(e);
    }
  }
  return nullptr;
}

}  // namespace quantppl::formats
