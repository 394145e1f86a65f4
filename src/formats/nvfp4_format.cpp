// NVFP4; the math is in the header. Compiled with -ffp-contract=off.
#include "quantppl/formats/nvfp4_format.h"

#include <cmath>
#include <cstddef>

#include "block_format.h"
#include "quantppl/formats/float_formats.h"

namespace quantppl::formats {
namespace {

struct Nvfp4Codec {
  struct Params {
    float s = 0;  // (3): fl(d * g)
    float d = 0;  // the E4M3 block scale (stored as its bit pattern)
  };
  struct Context {
    float g = 0;
  };

  std::string spec() const { return "nvfp4"; }
  int64_t block_len(int64_t in, const std::string& name) const {
    if (in % kNvfp4Block != 0) {
      throw UsageError("nvfp4 needs in_features divisible by its block of 16, weight '" + name + "' has " +
                       std::to_string(in));
    }
    return kNvfp4Block;
  }
  int code_bits() const { return 4; }
  std::vector<SectionLayout> layout(int64_t blocks) const {
    return {{"scales", "e4m3", blocks, 8}, {"global_scale", "f32", blocks > 0 ? 1 : 0, 32}};
  }
  bool needs_signed_max() const { return false; }
  bool needs_min_max() const { return false; }
  Context context(const BlockStats& whole) const { return {whole.amax / 2688.0f}; }
  bool local() const { return true; }  // given the context g
  bool needs_context() const { return true; }
  bool lazy_safe(const BlockStats&) const { return true; }  // choose_local never throws

  Params choose_local(const BlockStats& st, const Context& ctx, const std::string&) const {
    const float d = ctx.g == 0 ? 0.0f : round_to_minifloat(st.amax / (6.0f * ctx.g), kE4M3);
    return {d * ctx.g, d};
  }
  void choose(const torch::Tensor& blocks, const std::vector<BlockStats>& stats, const Context& ctx,
              std::vector<Params>& params, const std::string& name) const {
    params.resize(blocks.size(0));
    for (size_t b = 0; b < params.size(); ++b) params[b] = choose_local(stats[b], ctx, name);
  }

  void fake_blocks(const float* x, float* y, int64_t nblocks, int64_t L, const Params* p, const Context&) const {
    static_assert(sizeof(Params) == 2 * sizeof(float) && offsetof(Params, s) == 0, "scales are read with stride 2");
    fake_quantize_minifloat_div(x, y, nblocks, L, kE2M1, &p->s, 2);
  }
  void encode(const float* x, int32_t* codes, int64_t n, const Params& p, const Context&) const {
    for (int64_t i = 0; i < n; ++i) codes[i] = p.s == 0 ? 0 : encode_minifloat(round_to_minifloat(x[i] / p.s, kE2M1), kE2M1);
  }
  void decode(const int32_t* codes, float* y, int64_t n, const Params& p, const Context&) const {
    for (int64_t i = 0; i < n; ++i) y[i] = decode_minifloat(static_cast<uint8_t>(codes[i]), kE2M1) * p.s;
  }
  void write_params(const std::vector<Params>& params, const Context& ctx, std::vector<PackedSection>& out) const {
    std::string bytes(params.size(), '\0');
    for (size_t b = 0; b < params.size(); ++b) bytes[b] = static_cast<char>(encode_minifloat(params[b].d, kE4M3));
    out.push_back({"scales", "e4m3", static_cast<int64_t>(params.size()), bytes});
    std::vector<float> g;
    if (!params.empty()) g.push_back(ctx.g);
    out.push_back({"global_scale", "f32", static_cast<int64_t>(g.size()), pack_scalars(g)});
  }
  void read_params(const std::vector<const PackedSection*>& sections, int64_t blocks, std::vector<Params>& params,
                   Context& ctx, const std::string& name) const {
    params.resize(blocks);
    if (blocks == 0) return;
    ctx.g = unpack_scalars<float>(*sections[1])[0];
    if (!std::isfinite(ctx.g) || ctx.g < 0) {
      throw DataError("packed weight '" + name + "': nvfp4 global scale is " + std::to_string(ctx.g) +
                      ", expected a finite value >= 0");
    }
    for (int64_t b = 0; b < blocks; ++b) {
      const auto code = static_cast<uint8_t>(sections[0]->bytes[b]);
      if (!std::isfinite(decode_minifloat(code, kE4M3)) || (code & 0x80)) {
        throw DataError("packed weight '" + name + "': E4M3 block scale " + std::to_string(b) + " has code " +
                        std::to_string(code) + ", expected a finite non-negative value");
      }
      const float d = decode_minifloat(code, kE4M3);
      params[b] = {d * ctx.g, d};
    }
  }
};

}  // namespace

std::unique_ptr<WeightFormat> make_nvfp4_format() { return std::make_unique<BlockFormat<Nvfp4Codec>>(Nvfp4Codec{}); }

std::unique_ptr<WeightFormat> parse_nvfp4_format(const std::string& spec) {
  const std::string head = spec.substr(0, spec.find(':'));
  if (head != "nvfp4") return nullptr;
  if (head != spec) throw UsageError("invalid format '" + spec + "': nvfp4 has no fields (its block is 16 inputs)");
  return make_nvfp4_format();
}

}  // namespace quantppl::formats
