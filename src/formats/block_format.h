// The machinery every block format of issue 14 shares (internal header):
// cutting a weight [out, in] into blocks, the statistics pass, the
// PreparedWeight / ColumnGroupQuantizer / pack / unpack plumbing, all
// parallel over LibTorch's intra-op threads. A family supplies a Codec with
// the math of one block (see the families' headers for the formulas):
//
//   struct Codec {
//     using Params;                      // one block's parameters
//     using Context;                     // the weight's (NVFP4's global scale)
//     std::string spec() const;
//     int64_t block_len(int64_t in, const std::string& name) const;   // G, or 0 = whole tensor
//     int code_bits() const;
//     std::vector<SectionLayout> layout(int64_t blocks) const;          // sections after "codes"
//     bool needs_signed_max() const;
//     bool needs_min_max() const;        // choose_local reads BlockStats::min / max
//     Context context(const BlockStats& whole) const;
//     bool local() const;                // params depend on the block's stats (and the context) only
//     bool needs_context() const;        // the context needs a pass over the whole weight
//     bool lazy_safe(const BlockStats& whole) const;  // choose_local cannot throw for any block of a
//                                        // weight with these whole-weight stats (see BlockPrepared)
//     Params choose_local(const BlockStats&, const Context&, const std::string& name) const;  // local() codecs
//     void choose(const torch::Tensor& blocks2d, const std::vector<BlockStats>&, const Context&,
//                 std::vector<Params>&, const std::string& name) const;
//     // x_hat of nblocks consecutive blocks of L elements with parameters p[0 .. nblocks)
//     // (one block of any L for a piece of a long block or one column element).
//     void fake_blocks(const float*, float*, int64_t nblocks, int64_t L, const Params*, const Context&) const;
//     void encode(const float*, int32_t*, int64_t, const Params&, const Context&) const;
//     void decode(const int32_t*, float*, int64_t, const Params&, const Context&) const;
//     void write_params(const std::vector<Params>&, const Context&, std::vector<PackedSection>&) const;
//     void read_params(const std::vector<const PackedSection*>&, int64_t blocks,
//                      std::vector<Params>&, Context&, const std::string& name) const;
//   };
//
// Blocks: a weight is read row-major; with G > 0 (G divides in) block b is
// elements [b*G, (b+1)*G), i.e. G consecutive inputs of one row; with G = 0
// the whole weight is one block.
#pragma once

#include <ATen/Parallel.h>
#include <torch/types.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <limits>
#include <memory>
#include <string>
#include <type_traits>
#include <vector>

#include "quantppl/error.h"
#include "quantppl/formats/weight_format.h"
#include "quantppl/formats/packed_sections.h"

namespace quantppl::formats {

// What a block's parameters are chosen from (one read of the block): the
// same facts as a whole weight's summary (weight_format.h), so a summary is
// the stats of the weight taken as one block.
using BlockStats = WeightSummary;

// A stored section's shape: name, dtype tag, element count, bits per element.
struct SectionLayout {
  std::string name;
  std::string dtype;
  int64_t count;
  int bits;
};

inline int64_t layout_bytes(const SectionLayout& s) { return (s.count * s.bits + 7) / 8; }

// Statistics of x[0, n), n >= 1 (src/formats/block_scan.cpp: AVX2 where the
// CPU has it). The signed max needs a second (cache-hot) scan, so only
// formats that use it pay for it.
BlockStats scan_block(const float* x, int64_t n, bool signed_max);
// scan_block of nblocks consecutive blocks of L elements into out[0 ..
// nblocks); false if any element is NaN or Inf. One call per run of blocks.
// min_max = false may leave min and max at 0 (a cheaper scan for codecs
// that read only amax and signed_max).
bool scan_blocks(const float* x, int64_t nblocks, int64_t L, bool signed_max, BlockStats* out, bool min_max = true);

// `later` follows `earlier` in index order.
inline BlockStats merge_stats(const BlockStats& earlier, const BlockStats& later) {
  BlockStats s;
  s.finite = earlier.finite && later.finite;
  s.min = std::min(earlier.min, later.min);
  s.max = std::max(earlier.max, later.max);
  s.amax = later.amax > earlier.amax ? later.amax : earlier.amax;
  s.signed_max = later.amax > earlier.amax ? later.signed_max : earlier.signed_max;
  return s;
}

constexpr int64_t kStatsPiece = 16384;  // elements per parallel piece of a long block
constexpr int64_t kGrain = 32768;       // elements per parallel task of the element loops

// Stats of every block of x (numel / L blocks of L elements, L >= 1), in
// pieces of at most kStatsPiece merged in index order (thread-count
// independent). DataError naming `name` on NaN/Inf.
inline std::vector<BlockStats> block_stats_unchecked(const float* x, int64_t numel, int64_t L, bool signed_max) {
  const int64_t blocks = numel / L;
  const int64_t piece = std::min(L, kStatsPiece);
  const int64_t pieces_per_block = (L + piece - 1) / piece;
  std::vector<BlockStats> pieces(blocks * pieces_per_block);
  const int64_t grain = std::max<int64_t>(1, kGrain / piece);
  at::parallel_for(0, blocks * pieces_per_block, grain, [&](int64_t p0, int64_t p1) {
    for (int64_t p = p0; p < p1; ++p) {
      const int64_t b = p / pieces_per_block, j = p % pieces_per_block;
      const int64_t lo = j * piece, hi = std::min(L, lo + piece);
      pieces[p] = scan_block(x + b * L + lo, hi - lo, signed_max);
    }
  });
  std::vector<BlockStats> stats(blocks);
  for (int64_t b = 0; b < blocks; ++b) {
    BlockStats s = pieces[b * pieces_per_block];
    for (int64_t j = 1; j < pieces_per_block; ++j) s = merge_stats(s, pieces[b * pieces_per_block + j]);
    stats[b] = s;
  }
  return stats;
}

inline std::vector<BlockStats> block_stats(const float* x, int64_t numel, int64_t L, bool signed_max,
                                           const std::string& name) {
  std::vector<BlockStats> stats = block_stats_unchecked(x, numel, L, signed_max);
  for (const BlockStats& s : stats) {
    if (!s.finite) throw DataError("weight '" + name + "' holds NaN or Inf; it cannot be quantized");
  }
  return stats;
}

inline void check_weight(const torch::Tensor& w, const std::string& name, const char* what) {
  if (w.scalar_type() != torch::kFloat32 || w.dim() != 2 || !w.is_contiguous()) {
    throw UsageError(std::string(what) + ": weight '" + name + "' must be a contiguous float32 [out, in] tensor, got " +
                     std::string(c10::toString(w.scalar_type())) + " of " + std::to_string(w.dim()) + " dims");
  }
}

// The fused pass of a local codec (params from the block's own stats and the
// weight's context): per run of blocks, the stats, the parameters and x_hat
// while the run is in L1 (one read of src from memory, one write of dst). A
// run is at most kRunElems elements, so the scan's data is still in L1 when
// fake_blocks reads it again. Parallel over runs of blocks; a task is about
// kGrain elements, so a layer below that stays on one thread. Returns false
// if an element is NaN or Inf (callers name the weight).
constexpr int64_t kRunElems = 2048;  // 8 KiB of float32 read, 8 KiB written: both stay in L1 (32-48 KiB)
constexpr int64_t kRunBlocks = 256;  // stats/params buffers (blocks of >= 32 elements fill a run)


// A parallel task's scratch for local_run: one run's statistics and
// parameters (made once per task, not per run: their default member
// initializers would otherwise write ~5 KiB per 8 KiB run).
template <class Codec>
struct RunScratch {
  BlockStats stats[kRunBlocks];
  typename Codec::Params params[kRunBlocks];
};

// One run of nb <= kRunBlocks blocks, the generic way: scan_blocks, then
// choose_local per block, then fake_blocks. False on NaN/Inf (dst untouched).
template <class Codec>
bool local_run(const Codec& codec, RunScratch<Codec>& scratch, const float* s, float* d, int64_t nb, int64_t L,
               const typename Codec::Context& ctx, const std::string& name) {
  if (!scan_blocks(s, nb, L, codec.needs_signed_max(), scratch.stats, codec.needs_min_max())) return false;
  for (int64_t b = 0; b < nb; ++b) scratch.params[b] = codec.choose_local(scratch.stats[b], ctx, name);
  codec.fake_blocks(s, d, nb, L, scratch.params, ctx);
  return true;
}

// A codec may replace local_run with its own `bool fused_run(scratch, s, d,
// nb, L, ctx, name) const`: the same x_hat, bit for bit, from one pass that
// keeps the run's parameters in vector lanes (gguf_blocks.cpp). It must
// behave as local_run on bad input (false on NaN/Inf, the same DataError
// otherwise), and may call local_run for blocks it does not take.
template <class Codec, class = void>
struct HasFusedRun : std::false_type {};
template <class Codec>
struct HasFusedRun<Codec, std::void_t<decltype(&Codec::fused_run)>> : std::true_type {};

template <class Codec>
bool fused_local_pass(const Codec& codec, const float* s, float* d, int64_t blocks, int64_t L,
                      const typename Codec::Context& ctx, const std::string& name) {
  std::atomic<bool> bad{false};
  const int64_t run = std::max<int64_t>(1, std::min(kRunBlocks, kRunElems / L));
  at::parallel_for(0, blocks, std::max<int64_t>(1, kGrain / L), [&](int64_t b0, int64_t b1) {
    RunScratch<Codec> scratch;
    for (int64_t r0 = b0; r0 < b1; r0 += run) {
      const int64_t nb = std::min(run, b1 - r0);
      bool ok;
      if constexpr (HasFusedRun<Codec>::value) {
        ok = codec.fused_run(scratch, s + r0 * L, d + r0 * L, nb, L, ctx, name);
      } else {
        ok = local_run(codec, scratch, s + r0 * L, d + r0 * L, nb, L, ctx, name);
      }
      if (!ok) {
        bad = true;
        return;
      }
    }
  });
  return !bad;
}

// max|x| and finiteness of the whole weight (min and max left 0: the lazy
// path's context and lazy_safe read amax only): one parallel read with the
// amax-only scan, in pieces merged in index order. DataError naming `name`
// on NaN/Inf.
inline BlockStats whole_stats(const float* x, int64_t numel, const std::string& name) {
  const int64_t pieces = (numel + kStatsPiece - 1) / kStatsPiece;
  std::vector<BlockStats> part(pieces);
  at::parallel_for(0, pieces, std::max<int64_t>(1, kGrain / kStatsPiece), [&](int64_t p0, int64_t p1) {
    for (int64_t p = p0; p < p1; ++p) {
      const int64_t lo = p * kStatsPiece, hi = std::min(numel, lo + kStatsPiece);
      scan_blocks(x + lo, 1, hi - lo, false, &part[p], false);
    }
  });
  BlockStats all = part[0];
  for (int64_t p = 1; p < pieces; ++p) all = merge_stats(all, part[p]);
  if (!all.finite) throw DataError("weight '" + name + "' holds NaN or Inf; it cannot be quantized");
  return all;
}

template <class Codec>
class BlockColumnQuantizer final : public ColumnGroupQuantizer {
 public:
  BlockColumnQuantizer(Codec codec, typename Codec::Context ctx, std::vector<typename Codec::Params> params)
      : codec_(std::move(codec)), ctx_(std::move(ctx)), params_(std::move(params)) {}
  torch::Tensor fake_quantize_column(const torch::Tensor& column, int64_t /*j*/) const override {
    torch::Tensor x = column.to(torch::kFloat32).contiguous();
    torch::Tensor y = torch::empty_like(x);
    const float* src = x.data_ptr<float>();
    float* dst = y.data_ptr<float>();
    const int64_t n = x.numel();
    for (int64_t r = 0; r < n; ++r) {
      codec_.fake_blocks(src + r, dst + r, 1, 1, &(params_.size() == 1 ? params_[0] : params_.at(r)), ctx_);
    }
    return y;
  }

 private:
  Codec codec_;
  typename Codec::Context ctx_;
  std::vector<typename Codec::Params> params_;
};

// Runs fn(block, lo, hi) over every element range [lo, hi) of x (global
// element offsets), cut at block boundaries and into parallel pieces.
template <class Fn>
void for_each_block_piece(int64_t numel, int64_t L, const Fn& fn) {
  at::parallel_for(0, numel, std::max<int64_t>(kGrain, 1), [&](int64_t begin, int64_t end) {
    int64_t i = begin;
    while (i < end) {
      const int64_t b = i / L;
      const int64_t hi = std::min(end, (b + 1) * L);
      fn(b, i, hi);
      i = hi;
    }
  });
}

// A weight with its parameters chosen. Two kinds:
// * eager (params_ holds one Params per block): range searches, per-tensor
//   scales, long blocks, and weights whose blocks could fail choose_local;
// * lazy (params_ empty): a local codec (each block's parameters follow
//   from its own stats and the weight's context) on blocks of at most
//   kStatsPiece elements. prepare() has read the weight once (NaN/Inf and
//   the context) and the codec has vouched (lazy_safe) that no block can
//   fail; fake_quantize_into re-derives each block's parameters from src in
//   the fused pass, so the work is one read of the statistics plus one read
//   and one write, with no per-block arrays. The parameters are the same
//   numbers the eager path would store (same scan, same choose_local), so
//   the output is bit-identical; src must be the weight prepare() was given,
//   as PreparedWeight requires.
template <class Codec>
class BlockPrepared final : public PreparedWeight {
 public:
  BlockPrepared(Codec codec, int64_t out, int64_t in, int64_t L, typename Codec::Context ctx,
                std::vector<typename Codec::Params> params, std::string name, bool lazy = false)
      : codec_(std::move(codec)), out_(out), in_(in), L_(L), ctx_(std::move(ctx)), params_(std::move(params)),
        name_(std::move(name)), lazy_(lazy) {}

  void fake_quantize_into(const torch::Tensor& src, torch::Tensor& dst) const override {
    check(src);
    check(dst);
    const float* s = src.data_ptr<float>();
    float* d = dst.data_ptr<float>();
    const int64_t n = out_ * in_;
    if (n == 0) return;
    if (lazy_) {
      if (!fused_local_pass(codec_, s, d, n / L_, L_, ctx_, name_)) {
        throw DataError("weight '" + name_ + "' holds NaN or Inf; it cannot be quantized");
      }
      return;
    }
    if (L_ <= kGrain) {
      // Runs of whole blocks per task: no call per block.
      at::parallel_for(0, n / L_, std::max<int64_t>(1, kGrain / L_), [&](int64_t b0, int64_t b1) {
        codec_.fake_blocks(s + b0 * L_, d + b0 * L_, b1 - b0, L_, params_.data() + b0, ctx_);
      });
      return;
    }
    for_each_block_piece(n, L_, [&](int64_t b, int64_t lo, int64_t hi) {
      codec_.fake_blocks(s + lo, d + lo, 1, hi - lo, &params_[b], ctx_);
    });
  }

  PackedWeight pack(const torch::Tensor& src) const override {
    check(src);
    const int64_t n = out_ * in_;
    std::vector<typename Codec::Params> lazy_params;
    if (lazy_ && n > 0) {
      const std::vector<BlockStats> stats = block_stats(src.data_ptr<float>(), n, L_, codec_.needs_signed_max(), name_);
      codec_.choose(src.view({-1, L_}), stats, ctx_, lazy_params, name_);
    }
    const std::vector<typename Codec::Params>& params = lazy_ ? lazy_params : params_;
    std::vector<int32_t> codes(n);
    const float* s = src.data_ptr<float>();
    for_each_block_piece(n, L_, [&](int64_t b, int64_t lo, int64_t hi) {
      codec_.encode(s + lo, codes.data() + lo, hi - lo, params[b], ctx_);
    });
    PackedWeight p;
    p.out_features = out_;
    p.in_features = in_;
    const int bits = codec_.code_bits();
    p.sections.push_back({"codes", code_dtype(bits), n, pack_codes(codes, bits)});
    codec_.write_params(params, ctx_, p.sections);
    return p;
  }

 private:
  void check(const torch::Tensor& t) const {
    check_weight(t, name_, "fake-quantize");
    if (t.size(0) != out_ || t.size(1) != in_) {
      throw UsageError("weight '" + name_ + "' has shape [" + std::to_string(t.size(0)) + ", " +
                       std::to_string(t.size(1)) + "], prepared for [" + std::to_string(out_) + ", " +
                       std::to_string(in_) + "]");
    }
  }
  Codec codec_;
  int64_t out_, in_, L_;
  typename Codec::Context ctx_;
  std::vector<typename Codec::Params> params_;
  std::string name_;
  bool lazy_;
};

template <class Codec>
class BlockFormat final : public WeightFormat {
 public:
  explicit BlockFormat(Codec codec, std::shared_ptr<const ZeroPointGrid> grid = nullptr)
      : codec_(std::move(codec)), grid_(std::move(grid)) {}

  // The family's zero-point grid, when it has one (gguf_blocks.h: q4_1, q5_1).
  const ZeroPointGrid* zero_point_grid() const override { return grid_.get(); }

  std::string spec() const override { return codec_.spec(); }

  int64_t group_columns(int64_t in_features, const std::string& name) const override {
    return codec_.block_len(in_features, name);
  }

  double bits_per_weight(int64_t out, int64_t in) const override {
    const int64_t n = out * in;
    if (n == 0) return 0;
    double bits = static_cast<double>(n) * codec_.code_bits();
    for (const SectionLayout& s : codec_.layout(blocks_of(out, in))) bits += static_cast<double>(s.count) * s.bits;
    return bits / static_cast<double>(n);
  }

  int64_t packed_bytes(int64_t out, int64_t in) const override {
    int64_t bytes = (out * in * codec_.code_bits() + 7) / 8;
    for (const SectionLayout& s : codec_.layout(blocks_of(out, in))) bytes += layout_bytes(s);
    return bytes;
  }

  // Without a read when `known` says all this needs: the lazy path (a local
  // codec on short blocks: NaN/Inf, lazy_safe and the context come from the
  // whole weight's stats) and a per-tensor block whose parameters are
  // choose_local of the whole weight's stats. The stats are the ones prepare()
  // would compute (summarize_weight merges pieces as block_stats does), so
  // the result is the same, bit for bit.
  bool uses_summaries() const override { return codec_.local(); }

  std::unique_ptr<PreparedWeight> prepare_known(const torch::Tensor& weight, const std::string& name,
                                                const WeightSummary& known) const override {
    check_weight(weight, name, "prepare");
    const int64_t out = weight.size(0), in = weight.size(1);
    const int64_t L = block_elems(out, in, name);
    if (!codec_.local() || out * in == 0) return prepare(weight, name);
    if (!known.finite) throw DataError("weight '" + name + "' holds NaN or Inf; it cannot be quantized");
    const BlockStats& whole = known;
    if (L <= kStatsPiece && codec_.lazy_safe(whole)) {
      return std::make_unique<BlockPrepared<Codec>>(codec_, out, in, L, codec_.context(whole),
                                                    std::vector<typename Codec::Params>{}, name, true);
    }
    if (L == out * in) {
      const typename Codec::Context ctx = codec_.context(whole);
      std::vector<typename Codec::Params> params{codec_.choose_local(whole, ctx, name)};
      return std::make_unique<BlockPrepared<Codec>>(codec_, out, in, L, ctx, std::move(params), name);
    }
    return prepare(weight, name);
  }

  std::unique_ptr<PreparedWeight> prepare(const torch::Tensor& weight, const std::string& name) const override {
    check_weight(weight, name, "prepare");
    const int64_t out = weight.size(0), in = weight.size(1);
    const int64_t L = block_elems(out, in, name);
    typename Codec::Context ctx{};
    if (codec_.local() && L <= kStatsPiece && out * in > 0) {
      const BlockStats whole = whole_stats(weight.data_ptr<float>(), out * in, name);
      if (codec_.lazy_safe(whole)) {
        ctx = codec_.context(whole);
        return std::make_unique<BlockPrepared<Codec>>(codec_, out, in, L, std::move(ctx),
                                                      std::vector<typename Codec::Params>{}, name, true);
      }
    }
    std::vector<typename Codec::Params> params;
    choose_all(weight, L, name, ctx, params);
    return std::make_unique<BlockPrepared<Codec>>(codec_, out, in, L, std::move(ctx), std::move(params), name);
  }

  void fake_quantize_into(const torch::Tensor& src, torch::Tensor& dst, const std::string& name) const override {
    check_weight(src, name, "fake-quantize");
    check_weight(dst, name, "fake-quantize");
    if (!src.sizes().equals(dst.sizes())) throw UsageError("fake-quantize: weight '" + name + "': dst shape differs from src");
    const int64_t out = src.size(0), in = src.size(1);
    const int64_t L = block_elems(out, in, name);
    if (codec_.local() && L > 0 && L <= kStatsPiece && out * in > 0) {
      fused_local(src, dst, L, name);
      return;
    }
    prepare(src, name)->fake_quantize_into(src, dst);
  }

  std::unique_ptr<ColumnGroupQuantizer> begin_group(const torch::Tensor& whole_weight, const torch::Tensor& group_cols,
                                                    const std::string& name) const override {
    check_weight(whole_weight, name, "begin_group");
    const torch::Tensor g = group_cols.to(torch::kFloat32).contiguous();
    const int64_t out = whole_weight.size(0), in = whole_weight.size(1);
    const int64_t L_whole = block_elems(out, in, name);
    const bool per_tensor = codec_.block_len(in, name) == 0;
    // The weight-level context comes from the whole weight.
    const std::vector<BlockStats> whole = block_stats(whole_weight.data_ptr<float>(), out * in, L_whole,
                                                      codec_.needs_signed_max(), name);
    BlockStats all = whole[0];
    for (size_t b = 1; b < whole.size(); ++b) all = merge_stats(all, whole[b]);
    typename Codec::Context ctx = codec_.context(all);
    // The group's blocks: one per row of the group's columns, or one for all
    // of them per tensor.
    const int64_t gl = per_tensor ? g.numel() : g.size(1);
    std::vector<typename Codec::Params> params;
    if (g.numel() > 0) {
      const std::vector<BlockStats> stats = block_stats(g.data_ptr<float>(), g.numel(), gl, codec_.needs_signed_max(), name);
      codec_.choose(g.view({-1, gl}), stats, ctx, params, name);
    }
    return std::make_unique<BlockColumnQuantizer<Codec>>(codec_, std::move(ctx), std::move(params));
  }

  // begin_group's split: the context from the whole weight, each block's
  // parameters from its block of group_source.
  std::unique_ptr<PreparedWeight> prepare_from_groups(const torch::Tensor& whole_weight, const torch::Tensor& group_source,
                                                      const std::string& name) const override {
    check_weight(whole_weight, name, "prepare_from_groups");
    check_weight(group_source, name, "prepare_from_groups");
    if (!whole_weight.sizes().equals(group_source.sizes())) {
      throw UsageError("prepare_from_groups: weight '" + name + "': the group source's shape differs from the weight's");
    }
    const int64_t out = whole_weight.size(0), in = whole_weight.size(1);
    const int64_t L = block_elems(out, in, name);
    typename Codec::Context ctx;
    std::vector<typename Codec::Params> params;
    if (out * in > 0) {
      const std::vector<BlockStats> whole = block_stats(whole_weight.data_ptr<float>(), out * in, L,
                                                        codec_.needs_signed_max(), name);
      BlockStats all = whole[0];
      for (size_t b = 1; b < whole.size(); ++b) all = merge_stats(all, whole[b]);
      ctx = codec_.context(all);
      const std::vector<BlockStats> stats = block_stats(group_source.data_ptr<float>(), out * in, L,
                                                        codec_.needs_signed_max(), name);
      codec_.choose(group_source.view({-1, L}), stats, ctx, params, name);
    }
    return std::make_unique<BlockPrepared<Codec>>(codec_, out, in, L, std::move(ctx), std::move(params), name);
  }

  torch::Tensor unpack(const PackedWeight& packed, const std::string& name) const override {
    const int64_t out = packed.out_features, in = packed.in_features;
    if (out < 0 || in < 0 || (in > 0 && out > std::numeric_limits<int64_t>::max() / in)) {
      throw DataError("packed weight '" + name + "' has an invalid shape");
    }
    int64_t L;
    try {
      L = block_elems(out, in, name);
    } catch (const UsageError& e) {
      throw DataError(std::string("packed weight '") + name + "': " + e.what());
    }
    const int64_t n = out * in;
    const int64_t blocks = n == 0 ? 0 : n / L;
    const std::vector<SectionLayout> layout = codec_.layout(blocks);
    if (packed.sections.size() != layout.size() + 1) {
      throw DataError("packed weight '" + name + "' has " + std::to_string(packed.sections.size()) +
                      " sections, " + spec() + " stores " + std::to_string(layout.size() + 1));
    }
    const int bits = codec_.code_bits();
    expect_section(packed.sections[0], {"codes", code_dtype(bits), n, bits}, name);
    std::vector<const PackedSection*> rest;
    for (size_t i = 0; i < layout.size(); ++i) {
      expect_section(packed.sections[i + 1], layout[i], name);
      rest.push_back(&packed.sections[i + 1]);
    }
    std::vector<typename Codec::Params> params;
    typename Codec::Context ctx;
    codec_.read_params(rest, blocks, params, ctx, name);
    const std::vector<int32_t> codes = unpack_codes(packed.sections[0].bytes, n, bits);
    torch::Tensor w = torch::empty({out, in}, torch::kFloat32);
    float* d = w.data_ptr<float>();
    if (n > 0) {
      for_each_block_piece(n, L, [&](int64_t b, int64_t lo, int64_t hi) {
        codec_.decode(codes.data() + lo, d + lo, hi - lo, params[b], ctx);
      });
      // A hostile file can hold a NaN code (E4M3's S.1111.111, E5M2's
      // specials) or scale: the result would be silently wrong.
      if (!torch::isfinite(w).all().item<bool>()) {
        throw DataError("packed weight '" + name + "' decodes to NaN or Inf (a NaN/Inf code or scale in the file)");
      }
    }
    return w;
  }

  const Codec& codec() const { return codec_; }

 private:
  int64_t blocks_of(int64_t out, int64_t in) const {
    const int64_t G = codec_.block_len(in, "weight");
    if (out * in == 0) return 0;
    return G == 0 ? 1 : out * in / G;
  }
  // Elements per block (the whole weight per tensor); >= 1.
  int64_t block_elems(int64_t out, int64_t in, const std::string& name) const {
    const int64_t G = codec_.block_len(in, name);
    return G == 0 ? std::max<int64_t>(1, out * in) : G;
  }

  void choose_all(const torch::Tensor& w, int64_t L, const std::string& name, typename Codec::Context& ctx,
                  std::vector<typename Codec::Params>& params) const {
    const int64_t n = w.numel();
    if (n == 0) return;
    const std::vector<BlockStats> stats = block_stats(w.data_ptr<float>(), n, L, codec_.needs_signed_max(), name);
    BlockStats all = stats[0];
    for (size_t b = 1; b < stats.size(); ++b) all = merge_stats(all, stats[b]);
    ctx = codec_.context(all);
    codec_.choose(w.view({-1, L}), stats, ctx, params, name);
  }

  // fused_local_pass with the context from one extra read where the codec
  // needs one (NVFP4's amax_tensor).
  void fused_local(const torch::Tensor& src, torch::Tensor& dst, int64_t L, const std::string& name) const {
    const float* s = src.data_ptr<float>();
    typename Codec::Context ctx{};
    if (codec_.needs_context()) ctx = codec_.context(whole_stats(s, src.numel(), name));
    if (!fused_local_pass(codec_, s, dst.data_ptr<float>(), src.numel() / L, L, ctx, name)) {
      throw DataError("weight '" + name + "' holds NaN or Inf; it cannot be quantized");
    }
  }

  void expect_section(const PackedSection& got, const SectionLayout& want, const std::string& name) const {
    if (got.name != want.name || got.dtype != want.dtype || got.count != want.count ||
        static_cast<int64_t>(got.bytes.size()) != layout_bytes(want)) {
      throw DataError("packed weight '" + name + "' section '" + got.name + "' (" + got.dtype + ", " +
                      std::to_string(got.count) + " values, " + std::to_string(got.bytes.size()) + " bytes) does not match " +
                      spec() + ": expected '" + want.name + "' (" + want.dtype + ", " + std::to_string(want.count) +
                      " values, " + std::to_string(layout_bytes(want)) + " bytes)");
    }
  }

  Codec codec_;
  std::shared_ptr<const ZeroPointGrid> grid_;
};

// Little-endian storage of scalars in sections.
template <class T>
std::string pack_scalars(const std::vector<T>& v) {
  std::string s(v.size() * sizeof(T), '\0');
  if (!v.empty()) std::memcpy(s.data(), v.data(), s.size());
  return s;
}
template <class T>
std::vector<T> unpack_scalars(const PackedSection& s) {
  std::vector<T> v(s.bytes.size() / sizeof(T));
  if (!v.empty()) std::memcpy(v.data(), s.bytes.data(), v.size() * sizeof(T));
  return v;
}

}  // namespace quantppl::formats
