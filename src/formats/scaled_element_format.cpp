// Scaled element grids (NF4, FP4, FP8); the math is in the header.
// Compiled with -ffp-contract=off (CMakeLists.txt).
#include "quantppl/formats/scaled_element_format.h"

#include <cerrno>
#include <cmath>
#include <cstdlib>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#define QUANTPPL_NF4_AVX2 1
#else
#define QUANTPPL_NF4_AVX2 0
#endif

#include "block_format.h"
#include "quantppl/formats/float_formats.h"
#include "quantppl/percentile.h"

namespace quantppl::formats {

const std::array<float, 16> kNf4Values{
    -1.0f, -0.6961928009986877f, -0.5250730514526367f, -0.39491748809814453f,
    -0.28444138169288635f, -0.18477343022823334f, -0.09105003625154495f, 0.0f,
    0.07958029955625534f, 0.16093020141124725f, 0.24611230194568634f, 0.33791524171829224f,
    0.44070982933044434f, 0.5626170039176941f, 0.7229568362236023f, 1.0f};

namespace {

// thresholds[i]: the largest float32 not above the exact midpoint of codes i
// and i + 1; code(q) = #{i : q > thresholds[i]}.
std::array<float, 15> nf4_thresholds() {
  std::array<float, 15> t{};
  for (int i = 0; i < 15; ++i) {
    const double mid = (static_cast<double>(kNf4Values[i]) + static_cast<double>(kNf4Values[i + 1])) / 2;
    float f = static_cast<float>(mid);
    if (static_cast<double>(f) > mid) f = std::nextafter(f, -2.0f);
    t[i] = f;
  }
  return t;
}
const std::array<float, 15> kNf4Thresholds = nf4_thresholds();

inline int nf4_code(float q) {
  int c = 0;
  for (int i = 0; i < 15; ++i) c += q > kNf4Thresholds[i] ? 1 : 0;
  return c;
}

// Runs of blocks as float_formats.h's loops: block b has scale scales[b];
// s = 0 writes +0. The value is chosen by 15 selects instead of a table
// lookup, so the loop vectorizes without gathers; it picks
// v[#{j : q > t[j]}] as nf4_code does, since the thresholds ascend.
__attribute__((target_clones("avx2", "default"))) void fake_quantize_nf4_loop(const float* src, float* dst,
                                                                               int64_t nblocks, int64_t L,
                                                                               const float* scales) {
  std::array<float, 15> t = kNf4Thresholds;
  std::array<float, 16> v = kNf4Values;
  for (int64_t b = 0; b < nblocks; ++b) {
    const float s = scales[b];
    const float* x = src + b * L;
    float* y = dst + b * L;
    if (s == 0) {
      for (int64_t i = 0; i < L; ++i) y[i] = 0.0f;
      continue;
    }
    for (int64_t i = 0; i < L; ++i) {
      const float q = x[i] / s;
      float c = v[0];
      for (int j = 0; j < 15; ++j) c = q > t[j] ? v[j + 1] : c;
      y[i] = c * s;
    }
  }
}

#if QUANTPPL_NF4_AVX2
// The same choice on 8 lanes, by a branch-free binary search over the
// ascending thresholds instead of 15 comparisons: with c = #{j : q > t[j]},
// q > t[7] decides c >= 8; then q > t[c + 3] decides c >= c + 4 (t[3] or
// t[11]); then q > t[c + 1] (one of t[1], t[5], t[9], t[13]) decides c + 2;
// c is now even and v[c] or v[c + 1] is the answer: q > t[c] picks between
// them. Each level is one comparison against a threshold picked by the code
// so far (a blend, then 8-entry permutes indexed by c / 4 and c / 2), and the
// last picks the value itself. NaN never reaches here (finite weights).
__attribute__((target("avx2"))) void fake_quantize_nf4_avx2(const float* src, float* dst, int64_t nblocks,
                                                             int64_t L, const float* scales) {
  const float* t = kNf4Thresholds.data();
  const float* v = kNf4Values.data();
  const __m256 t7 = _mm256_set1_ps(t[7]), t3 = _mm256_set1_ps(t[3]), t11 = _mm256_set1_ps(t[11]);
  const __m256 t_4k1 = _mm256_setr_ps(t[1], t[5], t[9], t[13], t[1], t[5], t[9], t[13]);
  const __m256 t_2k = _mm256_setr_ps(t[0], t[2], t[4], t[6], t[8], t[10], t[12], t[14]);
  const __m256 v_2k = _mm256_setr_ps(v[0], v[2], v[4], v[6], v[8], v[10], v[12], v[14]);
  const __m256 v_2k1 = _mm256_setr_ps(v[1], v[3], v[5], v[7], v[9], v[11], v[13], v[15]);
  const __m256i two = _mm256_set1_epi32(2);
  for (int64_t b = 0; b < nblocks; ++b) {
    const float s = scales[b];
    const float* x = src + b * L;
    float* y = dst + b * L;
    int64_t i = 0;
    if (s == 0) {
      for (; i < L; ++i) y[i] = 0.0f;
      continue;
    }
    const __m256 vs = _mm256_set1_ps(s);
    for (; i + 8 <= L; i += 8) {
      const __m256 q = _mm256_div_ps(_mm256_loadu_ps(x + i), vs);
      const __m256 ge8 = _mm256_cmp_ps(q, t7, _CMP_GT_OQ);
      // c / 4 (0..3), then c / 2 (0..7), as integer lanes
      __m256i c4 = _mm256_and_si256(_mm256_castps_si256(ge8), two);
      c4 = _mm256_sub_epi32(c4, _mm256_castps_si256(_mm256_cmp_ps(q, _mm256_blendv_ps(t3, t11, ge8), _CMP_GT_OQ)));
      const __m256 ge2 = _mm256_cmp_ps(q, _mm256_permutevar8x32_ps(t_4k1, c4), _CMP_GT_OQ);
      const __m256i c2 = _mm256_sub_epi32(_mm256_add_epi32(c4, c4), _mm256_castps_si256(ge2));
      const __m256 ge1 = _mm256_cmp_ps(q, _mm256_permutevar8x32_ps(t_2k, c2), _CMP_GT_OQ);
      const __m256 value = _mm256_blendv_ps(_mm256_permutevar8x32_ps(v_2k, c2), _mm256_permutevar8x32_ps(v_2k1, c2), ge1);
      _mm256_storeu_ps(y + i, _mm256_mul_ps(value, vs));
    }
    for (; i < L; ++i) {
      const float q = x[i] / s;
      y[i] = kNf4Values[nf4_code(q)] * s;
    }
  }
}
const bool kNf4Avx2 = __builtin_cpu_supports("avx2");
#endif

void fake_quantize_nf4(const float* src, float* dst, int64_t nblocks, int64_t L, const float* scales) {
#if QUANTPPL_NF4_AVX2
  if (kNf4Avx2) return fake_quantize_nf4_avx2(src, dst, nblocks, L, scales);
#endif
  fake_quantize_nf4_loop(src, dst, nblocks, L, scales);
}

const MiniFloat& minifloat_of(ElementGrid g) {
  switch (g) {
    case ElementGrid::kFp4: return kE2M1;
    case ElementGrid::kFp8E4M3: return kE4M3;
    default: return kE5M2;
  }
}

float largest_of(ElementGrid g) { return g == ElementGrid::kNf4 ? 1.0f : minifloat_of(g).max_finite; }

struct ScaledCodec {
  struct Params {
    float s = 0;
  };
  struct Context {};

  ScaledElementConfig config;

  std::string spec() const {
    return grid_name(config.grid) + ":" + to_string(config.granularity, config.group_size) + ":" +
           to_string(config.range, config.percentile);
  }
  int64_t block_len(int64_t in, const std::string& name) const {
    switch (config.granularity) {
      case Granularity::kPerTensor: return 0;
      case Granularity::kPerChannel: return in;
      default:
        if (in % config.group_size != 0) {
          throw UsageError(spec() + ": group size " + std::to_string(config.group_size) + " does not divide the " +
                           std::to_string(in) + " inputs of weight '" + name + "'");
        }
        return config.group_size;
    }
  }
  int code_bits() const { return config.grid == ElementGrid::kFp8E4M3 || config.grid == ElementGrid::kFp8E5M2 ? 8 : 4; }
  std::vector<SectionLayout> layout(int64_t blocks) const { return {{"scales", "f32", blocks, 32}}; }
  bool needs_signed_max() const { return false; }
  bool needs_min_max() const { return false; }
  Context context(const BlockStats&) const { return {}; }
  // minmax: s from the block's own amax (per tensor the block is the weight).
  bool local() const { return config.range == RangeMethod::kMinMax; }
  bool needs_context() const { return false; }
  bool lazy_safe(const BlockStats&) const { return true; }  // choose_local never throws

  Params from_magnitude(float a) const { return {a > 0 ? a / largest_of(config.grid) : 0.0f}; }
  Params choose_local(const BlockStats& st, const Context&, const std::string&) const { return from_magnitude(st.amax); }

  void choose(const torch::Tensor& blocks, const std::vector<BlockStats>& stats, const Context& ctx,
              std::vector<Params>& params, const std::string& name) const {
    const int64_t nb = blocks.size(0), L = blocks.size(1);
    params.resize(nb);
    if (config.range == RangeMethod::kMinMax) {
      for (int64_t b = 0; b < nb; ++b) params[b] = choose_local(stats[b], ctx, name);
    } else if (config.range == RangeMethod::kPercentile) {
      const torch::Tensor p = percentile_rows(blocks.abs(), config.percentile).contiguous();
      const float* a = p.data_ptr<float>();
      for (int64_t b = 0; b < nb; ++b) params[b] = from_magnitude(a[b] > 0 ? a[b] : stats[b].amax);
    } else {
      const float* x = blocks.data_ptr<float>();
      for (int64_t b = 0; b < nb; ++b) params[b] = mse_search(x + b * L, L, stats[b].amax, ctx);
    }
  }

  // Squared error of the candidate, summed in double over fixed pieces added
  // in order (independent of the thread count).
  double squared_error(const float* x, int64_t n, const Params& p, const Context& ctx) const {
    const int64_t pieces = (n + kStatsPiece - 1) / kStatsPiece;
    std::vector<double> sums(pieces, 0.0);
    at::parallel_for(0, pieces, 1, [&](int64_t p0, int64_t p1) {
      std::vector<float> tmp(kStatsPiece);
      for (int64_t q = p0; q < p1; ++q) {
        const int64_t lo = q * kStatsPiece, hi = std::min(n, lo + kStatsPiece);
        fake_blocks(x + lo, tmp.data(), 1, hi - lo, &p, ctx);
        double s = 0;
        for (int64_t i = 0; i < hi - lo; ++i) {
          const double d = static_cast<double>(tmp[i]) - static_cast<double>(x[lo + i]);
          s += d * d;
        }
        sums[q] = s;
      }
    });
    double total = 0;
    for (double s : sums) total += s;
    return total;
  }

  Params mse_search(const float* x, int64_t n, float amax, const Context& ctx) const {
    Params best = from_magnitude(amax);
    if (amax == 0) return best;
    double best_error = squared_error(x, n, best, ctx);
    for (int i = 1; i < 80; ++i) {
      const Params cand = from_magnitude(static_cast<float>(static_cast<double>(amax) * (1.0 - i / 100.0)));
      const double e = squared_error(x, n, cand, ctx);
      if (e < best_error) {  // strict: ties keep the wider range
        best_error = e;
        best = cand;
      }
    }
    return best;
  }

  void fake_blocks(const float* x, float* y, int64_t nblocks, int64_t L, const Params* p, const Context&) const {
    static_assert(sizeof(Params) == sizeof(float), "Params is read as an array of scales");
    if (config.grid == ElementGrid::kNf4) {
      fake_quantize_nf4(x, y, nblocks, L, &p->s);
    } else {
      fake_quantize_minifloat_div(x, y, nblocks, L, minifloat_of(config.grid), &p->s, 1);
    }
  }
  void encode(const float* x, int32_t* codes, int64_t n, const Params& p, const Context&) const {
    const bool nf4 = config.grid == ElementGrid::kNf4;
    if (p.s == 0) {
      std::fill(codes, codes + n, nf4 ? 7 : 0);  // the +0 code
      return;
    }
    for (int64_t i = 0; i < n; ++i) {
      const float q = x[i] / p.s;
      codes[i] = nf4 ? nf4_code(q)
                     : encode_minifloat(round_to_minifloat(q, minifloat_of(config.grid)), minifloat_of(config.grid));
    }
  }
  void decode(const int32_t* codes, float* y, int64_t n, const Params& p, const Context&) const {
    for (int64_t i = 0; i < n; ++i) {
      const float c = config.grid == ElementGrid::kNf4
                          ? kNf4Values[codes[i]]
                          : decode_minifloat(static_cast<uint8_t>(codes[i]), minifloat_of(config.grid));
      y[i] = c * p.s;
    }
  }
  void write_params(const std::vector<Params>& params, const Context&, std::vector<PackedSection>& out) const {
    std::vector<float> s(params.size());
    for (size_t b = 0; b < params.size(); ++b) s[b] = params[b].s;
    out.push_back({"scales", "f32", static_cast<int64_t>(s.size()), pack_scalars(s)});
  }
  void read_params(const std::vector<const PackedSection*>& sections, int64_t blocks, std::vector<Params>& params,
                   Context&, const std::string& name) const {
    const std::vector<float> s = unpack_scalars<float>(*sections[0]);
    params.resize(blocks);
    for (int64_t b = 0; b < blocks; ++b) {
      if (!std::isfinite(s[b]) || s[b] < 0) {
        throw DataError("packed weight '" + name + "': scale " + std::to_string(b) + " is " + std::to_string(s[b]) +
                        ", expected a finite value >= 0");
      }
      params[b].s = s[b];
    }
  }
};

[[noreturn]] void fail(const std::string& spec, const std::string& what) {
  throw UsageError("invalid format '" + spec + "': " + what +
                   " (expected NAME[:GRAN[:RANGE]], GRAN = tensor|channel|groupN, RANGE = minmax|pP|mse)");
}

std::vector<std::string> split_fields(const std::string& s) {
  std::vector<std::string> parts;
  size_t start = 0;
  while (true) {
    const size_t pos = s.find(':', start);
    parts.push_back(s.substr(start, pos == std::string::npos ? std::string::npos : pos - start));
    if (pos == std::string::npos) return parts;
    start = pos + 1;
  }
}

bool all_digits(const std::string& s) { return !s.empty() && s.find_first_not_of("0123456789") == std::string::npos; }

}  // namespace

std::string grid_name(ElementGrid grid) {
  switch (grid) {
    case ElementGrid::kNf4: return "nf4";
    case ElementGrid::kFp4: return "fp4";
    case ElementGrid::kFp8E4M3: return "fp8e4m3";
    default: return "fp8e5m2";
  }
}

std::unique_ptr<WeightFormat> make_scaled_element_format(const ScaledElementConfig& config) {
  if (config.granularity == Granularity::kPerGroup && config.group_size <= 0) {
    throw UsageError("group size must be positive, got " + std::to_string(config.group_size));
  }
  if (config.range == RangeMethod::kPercentile && !(config.percentile > 0 && config.percentile <= 100)) {
    throw UsageError("percentile must be in (0, 100], got " + std::to_string(config.percentile));
  }
  return std::make_unique<BlockFormat<ScaledCodec>>(ScaledCodec{config});
}

std::unique_ptr<WeightFormat> parse_scaled_element_format(const std::string& spec) {
  const std::vector<std::string> parts = split_fields(spec);
  ScaledElementConfig config;
  bool known = false;
  for (ElementGrid g : {ElementGrid::kNf4, ElementGrid::kFp4, ElementGrid::kFp8E4M3, ElementGrid::kFp8E5M2}) {
    if (parts[0] == grid_name(g)) {
      config.grid = g;
      known = true;
    }
  }
  if (!known) return nullptr;
  if (parts.size() > 3) fail(spec, "expected at most 3 ':'-separated fields, got " + std::to_string(parts.size()));
  if (parts.size() >= 2) {
    const std::string& g = parts[1];
    if (g.rfind("group", 0) == 0) {
      const std::string n = g.substr(5);
      if (!all_digits(n) || n.size() > 9 || std::stoll(n) == 0) {
        fail(spec, "group size must be a positive integer (e.g. group64), got '" + g + "'");
      }
      config.granularity = Granularity::kPerGroup;
      config.group_size = std::stoll(n);
    } else {
      const auto found = kGranularityNames.find(g);
      if (!found || *found == Granularity::kPerGroup) fail(spec, "unknown granularity '" + g + "'");
      config.granularity = *found;
    }
  }
  if (parts.size() == 3) {
    const std::string& r = parts[2];
    if (r == "minmax") {
      config.range = RangeMethod::kMinMax;
    } else if (r == "mse") {
      config.range = RangeMethod::kMse;
    } else if (r.size() > 1 && r[0] == 'p' && r.find_first_not_of("0123456789.", 1) == std::string::npos &&
               r.find('.') == r.rfind('.') && r != "p.") {
      errno = 0;
      char* end = nullptr;
      const double p = std::strtod(r.c_str() + 1, &end);
      if (errno != 0 || end != r.c_str() + r.size() || !(p > 0 && p <= 100)) {
        fail(spec, "percentile must be a number in (0, 100] (e.g. p99.9), got '" + r + "'");
      }
      config.range = RangeMethod::kPercentile;
      config.percentile = p;
    } else {
      fail(spec, "unknown range '" + r + "'");
    }
  }
  return make_scaled_element_format(config);
}

}  // namespace quantppl::formats
