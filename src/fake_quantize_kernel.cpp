// Fused fake-quantization loops; the arithmetic is stated in the header.
// Built with -ffp-contract=off (CMakeLists.txt): a contracted x * k + z
// would round once instead of twice and break bit-equality with the
// reference.
#include "fake_quantize_kernel.h"

#include <algorithm>
#include <cmath>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#define QUANTPPL_HAVE_AVX2_PATH 1
#else
#define QUANTPPL_HAVE_AVX2_PATH 0
#endif

namespace quantppl::kernel {
namespace {

template <typename T>
inline T fake_quantize_one(T x, const Grid<T>& g) {
  T c = g.inverse ? x * g.scale : x / g.scale;
  if (g.has_zero) c = c + g.zero;
  // std::max(a, b) is (a < b) ? b : a: on a tie it keeps the code c, as
  // torch's clamp does.
  T q = std::min(std::max(std::nearbyint(c), g.qmin), g.qmax);
  if (g.has_zero) q = q - g.zero;
  return g.inverse ? q / g.scale : q * g.scale;
}

template <typename T>
bool min_max_scalar(const T* x, int64_t n, T* lo, T* hi) {
  T mn = x[0], mx = x[0];
  bool finite = true;
  for (int64_t i = 0; i < n; ++i) {
    const T v = x[i];
    finite = finite && std::isfinite(v);
    mn = v < mn ? v : mn;
    mx = v > mx ? v : mx;
  }
  *lo = mn;
  *hi = mx;
  return finite;
}

template <typename T>
void fake_quantize_scalar(const T* src, T* dst, int64_t n, const Grid<T>& g) {
  for (int64_t i = 0; i < n; ++i) dst[i] = fake_quantize_one(src[i], g);
}

// Lane j (0..7) sums the elements whose index is j mod 8, in index order;
// then the lanes are added 0..7. The AVX2 path keeps the same lanes.
template <typename T>
double squared_error_scalar(const T* x, int64_t n, const Grid<T>& g, int64_t first_index, double lanes[8]) {
  for (int64_t i = 0; i < n; ++i) {
    const T d = fake_quantize_one(x[i], g) - x[i];
    const auto dd = static_cast<double>(d);
    lanes[(first_index + i) & 7] += dd * dd;
  }
  double sum = 0;
  for (int j = 0; j < 8; ++j) sum += lanes[j];
  return sum;
}

#if QUANTPPL_HAVE_AVX2_PATH

__attribute__((target("avx2"))) bool min_max_avx2(const float* x, int64_t n, float* lo, float* hi) {
  if (n < 8) return min_max_scalar(x, n, lo, hi);
  __m256 mn = _mm256_loadu_ps(x);
  __m256 mx = mn;
  __m256 unordered = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256 v = _mm256_loadu_ps(x + i);
    unordered = _mm256_or_ps(unordered, _mm256_cmp_ps(v, v, _CMP_UNORD_Q));
    mn = _mm256_min_ps(mn, v);
    mx = _mm256_max_ps(mx, v);
  }
  alignas(32) float mn_lanes[8], mx_lanes[8];
  _mm256_store_ps(mn_lanes, mn);
  _mm256_store_ps(mx_lanes, mx);
  float tail_lo = mn_lanes[0], tail_hi = mx_lanes[0];
  bool finite = _mm256_movemask_ps(unordered) == 0;
  if (i < n) finite = min_max_scalar(x + i, n - i, &tail_lo, &tail_hi) && finite;
  float l = tail_lo, h = tail_hi;
  for (int j = 0; j < 8; ++j) {
    l = mn_lanes[j] < l ? mn_lanes[j] : l;
    h = mx_lanes[j] > h ? mx_lanes[j] : h;
  }
  *lo = l;
  *hi = h;
  return finite && std::isfinite(l) && std::isfinite(h);
}

// One 8-wide step of the header's arithmetic; the form is a template
// parameter so that each loop below is branch-free.
template <bool kInverse, bool kHasZero>
__attribute__((target("avx2"))) inline __m256 fake_quantize8(__m256 v, __m256 scale, __m256 zero, __m256 qmin,
                                                             __m256 qmax) {
  __m256 c = kInverse ? _mm256_mul_ps(v, scale) : _mm256_div_ps(v, scale);
  if (kHasZero) c = _mm256_add_ps(c, zero);
  c = _mm256_round_ps(c, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  // maxps/minps return the second operand on a tie: the code c, as torch's clamp.
  c = _mm256_min_ps(qmax, _mm256_max_ps(qmin, c));
  if (kHasZero) c = _mm256_sub_ps(c, zero);
  return kInverse ? _mm256_div_ps(c, scale) : _mm256_mul_ps(c, scale);
}

template <bool kInverse, bool kHasZero>
__attribute__((target("avx2"))) void fake_quantize_avx2(const float* src, float* dst, int64_t n,
                                                        const Grid<float>& g, bool streaming) {
  const __m256 scale = _mm256_set1_ps(g.scale), zero = _mm256_set1_ps(g.zero);
  const __m256 qmin = _mm256_set1_ps(g.qmin), qmax = _mm256_set1_ps(g.qmax);
  int64_t i = 0;
  if (streaming && src != dst && reinterpret_cast<uintptr_t>(dst) % 4 == 0) {
    // The scalar head aligns dst to 32 bytes, as vmovntps requires.
    i = std::min(n, static_cast<int64_t>((32 - reinterpret_cast<uintptr_t>(dst) % 32) % 32) / 4);
    fake_quantize_scalar(src, dst, i, g);
    for (; i + 8 <= n; i += 8) {
      _mm256_stream_ps(dst + i, fake_quantize8<kInverse, kHasZero>(_mm256_loadu_ps(src + i), scale, zero, qmin, qmax));
    }
  }
  for (; i + 8 <= n; i += 8) {
    _mm256_storeu_ps(dst + i, fake_quantize8<kInverse, kHasZero>(_mm256_loadu_ps(src + i), scale, zero, qmin, qmax));
  }
  fake_quantize_scalar(src + i, dst + i, n - i, g);
}

template <bool kInverse, bool kHasZero>
__attribute__((target("avx2"))) double squared_error_avx2(const float* x, int64_t n, const Grid<float>& g) {
  const __m256 scale = _mm256_set1_ps(g.scale), zero = _mm256_set1_ps(g.zero);
  const __m256 qmin = _mm256_set1_ps(g.qmin), qmax = _mm256_set1_ps(g.qmax);
  __m256d lanes_lo = _mm256_setzero_pd(), lanes_hi = _mm256_setzero_pd();  // lanes 0-3, 4-7
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256 v = _mm256_loadu_ps(x + i);
    const __m256 d = _mm256_sub_ps(fake_quantize8<kInverse, kHasZero>(v, scale, zero, qmin, qmax), v);
    const __m256d d_lo = _mm256_cvtps_pd(_mm256_castps256_ps128(d));
    const __m256d d_hi = _mm256_cvtps_pd(_mm256_extractf128_ps(d, 1));
    lanes_lo = _mm256_add_pd(lanes_lo, _mm256_mul_pd(d_lo, d_lo));
    lanes_hi = _mm256_add_pd(lanes_hi, _mm256_mul_pd(d_hi, d_hi));
  }
  alignas(32) double lanes[8];
  _mm256_store_pd(lanes, lanes_lo);
  _mm256_store_pd(lanes + 4, lanes_hi);
  return squared_error_scalar(x + i, n - i, g, i, lanes);
}

// fn<inverse, has_zero>(args...) for the grid's form.
#define QUANTPPL_DISPATCH_FORM(fn, g, ...)                                  \
  ((g).inverse ? ((g).has_zero ? fn<true, true>(__VA_ARGS__) : fn<true, false>(__VA_ARGS__)) \
               : ((g).has_zero ? fn<false, true>(__VA_ARGS__) : fn<false, false>(__VA_ARGS__)))

bool detect_avx2() {
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx2");
}

#endif

}  // namespace

bool uses_avx2() {
#if QUANTPPL_HAVE_AVX2_PATH
  static const bool avx2 = detect_avx2();
  return avx2;
#else
  return false;
#endif
}

template <>
bool min_max<float>(const float* x, int64_t n, float* lo, float* hi) {
#if QUANTPPL_HAVE_AVX2_PATH
  if (uses_avx2()) return min_max_avx2(x, n, lo, hi);
#endif
  return min_max_scalar(x, n, lo, hi);
}

template <>
bool min_max<double>(const double* x, int64_t n, double* lo, double* hi) {
  return min_max_scalar(x, n, lo, hi);
}

template <>
void fake_quantize<float>(const float* src, float* dst, int64_t n, const Grid<float>& grid, bool streaming) {
#if QUANTPPL_HAVE_AVX2_PATH
  if (uses_avx2()) return QUANTPPL_DISPATCH_FORM(fake_quantize_avx2, grid, src, dst, n, grid, streaming);
#endif
  fake_quantize_scalar(src, dst, n, grid);
}

template <>
void fake_quantize<double>(const double* src, double* dst, int64_t n, const Grid<double>& grid,
                           bool /*streaming*/) {
  fake_quantize_scalar(src, dst, n, grid);
}

template <>
double squared_error<float>(const float* x, int64_t n, const Grid<float>& grid) {
#if QUANTPPL_HAVE_AVX2_PATH
  if (uses_avx2()) return QUANTPPL_DISPATCH_FORM(squared_error_avx2, grid, x, n, grid);
#endif
  double lanes[8] = {};
  return squared_error_scalar(x, n, grid, 0, lanes);
}

template <>
double squared_error<double>(const double* x, int64_t n, const Grid<double>& grid) {
  double lanes[8] = {};
  return squared_error_scalar(x, n, grid, 0, lanes);
}

void store_fence() {
#if QUANTPPL_HAVE_AVX2_PATH
  _mm_sfence();
#endif
}

}  // namespace quantppl::kernel
