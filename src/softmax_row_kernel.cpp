#include "softmax_row_kernel.h"

#include <algorithm>
#include <cmath>
#include <limits>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define QUANTPPL_SOFTMAX_X86 1
#endif

namespace quantppl::kernel {

double SoftmaxRowStats::log_sum_exp() const { return static_cast<double>(max) + std::log(sum_exp); }

float SoftmaxRowStats::label_nll(float label_logit) const {
  if (!finite) return std::numeric_limits<float>::quiet_NaN();
  return static_cast<float>(log_sum_exp() - static_cast<double>(label_logit));
}

namespace {

// Arguments below this are clamped: exp(-87) = 1.6e-38 is still a normal
// float, so 2^n below stays a normal power of two (n >= -126).
constexpr float kExpFloor = -87.0f;

// ---------------------------------------------------------------------------
// Scalar loops (CPUs without AVX2+FMA)
// ---------------------------------------------------------------------------
float exp_scalar(float x) { return std::exp(std::max(x, kExpFloor)); }

SoftmaxRowStats row_stats_scalar(const float* z, int64_t n) {
  SoftmaxRowStats s;
  s.max = z[0];
  for (int64_t i = 0; i < n; ++i) {
    if (!std::isfinite(z[i])) return s;  // finite stays false
    if (z[i] > s.max) {
      s.max = z[i];
      s.argmax = i;
    }
  }
  double sum = 0;
  for (int64_t i = 0; i < n; ++i) sum += static_cast<double>(exp_scalar(z[i] - s.max));
  s.sum_exp = sum;
  s.finite = true;
  return s;
}

SoftmaxPairStats pair_stats_scalar(const float* p, float p_max, const float* q, int64_t n) {
  SoftmaxPairStats r;
  r.q = row_stats_scalar(q, n);
  if (!r.q.finite) return r;
  double cross = 0;
  for (int64_t i = 0; i < n; ++i) {
    cross += static_cast<double>(exp_scalar(p[i] - p_max) * (p[i] - q[i]));
  }
  r.cross = cross;
  return r;
}

#ifdef QUANTPPL_SOFTMAX_X86
// ---------------------------------------------------------------------------
// AVX2 + FMA loops
// ---------------------------------------------------------------------------
#define QUANTPPL_AVX2 __attribute__((target("avx2,fma")))

// exp(x) = 2^k * exp(r), k = round(x / ln 2), r = x - k ln 2 (in two parts,
// Cody-Waite, so r is exact to float precision), exp(r) on |r| <= ln2/2 by
// Cephes' degree-7 polynomial 1 + r + r^2 * P(r).
QUANTPPL_AVX2 inline __m256 exp8(__m256 x) {
  x = _mm256_max_ps(x, _mm256_set1_ps(kExpFloor));
  const __m256 k = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                                   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 r = _mm256_fnmadd_ps(k, _mm256_set1_ps(0.693359375f), x);
  r = _mm256_fnmadd_ps(k, _mm256_set1_ps(-2.12194440e-4f), r);
  __m256 y = _mm256_set1_ps(1.9875691500e-4f);
  y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(1.3981999507e-3f));
  y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(8.3334519073e-3f));
  y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(4.1665795894e-2f));
  y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(1.6666665459e-1f));
  y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(5.0000001201e-1f));
  y = _mm256_fmadd_ps(y, _mm256_mul_ps(r, r), _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
  const __m256i two_k = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(k), _mm256_set1_epi32(127)), 23);
  return _mm256_mul_ps(y, _mm256_castsi256_ps(two_k));
}

// Lanes [0, rest) of the last partial vector are live (0 < rest < 8).
QUANTPPL_AVX2 inline __m256i tail_mask(int64_t rest) {
  const __m256i lanes = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  return _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(rest)), lanes);
}

// Adds the 8 floats of v to the two 4-double accumulators (exactly: each
// float converts exactly, then one rounding per double add).
QUANTPPL_AVX2 inline void add_to_double(__m256 v, __m256d* lo, __m256d* hi) {
  *lo = _mm256_add_pd(*lo, _mm256_cvtps_pd(_mm256_castps256_ps128(v)));
  *hi = _mm256_add_pd(*hi, _mm256_cvtps_pd(_mm256_extractf128_ps(v, 1)));
}

QUANTPPL_AVX2 inline double horizontal_sum(__m256d lo, __m256d hi) {
  alignas(32) double a[4];
  alignas(32) double b[4];
  _mm256_store_pd(a, lo);
  _mm256_store_pd(b, hi);
  return ((a[0] + a[1]) + (a[2] + a[3])) + ((b[0] + b[1]) + (b[2] + b[3]));
}

// Pass 1: max, argmax and the finiteness check. x * 0 is NaN exactly when x
// is NaN or +-Inf.
QUANTPPL_AVX2 bool max_argmax_avx2(const float* z, int64_t n, float* max_out, int64_t* argmax_out) {
  const int64_t full = n - n % 8;
  __m256 vmax = _mm256_set1_ps(-std::numeric_limits<float>::infinity());
  __m256 bad = _mm256_setzero_ps();
  const __m256 zero = _mm256_setzero_ps();
  for (int64_t i = 0; i < full; i += 8) {
    const __m256 v = _mm256_loadu_ps(z + i);
    vmax = _mm256_max_ps(vmax, v);
    bad = _mm256_or_ps(bad, _mm256_cmp_ps(_mm256_mul_ps(v, zero), zero, _CMP_NEQ_UQ));
  }
  alignas(32) float lanes[8];
  _mm256_store_ps(lanes, vmax);
  float m = lanes[0];
  for (int l = 1; l < 8; ++l) m = std::max(m, lanes[l]);
  bool finite = _mm256_movemask_ps(bad) == 0;
  for (int64_t i = full; i < n; ++i) {
    finite = finite && std::isfinite(z[i]);
    m = std::max(m, z[i]);
  }
  if (!finite) return false;
  // The first index holding m: a scan that stops there.
  const __m256 vm = _mm256_set1_ps(m);
  int64_t at = 0;
  for (; at < full; at += 8) {
    const int hits = _mm256_movemask_ps(_mm256_cmp_ps(_mm256_loadu_ps(z + at), vm, _CMP_EQ_OQ));
    if (hits != 0) {
      at += __builtin_ctz(static_cast<unsigned>(hits));
      break;
    }
  }
  if (at >= full) {
    for (at = full; at < n && z[at] != m; ++at) {
    }
  }
  *max_out = m;
  *argmax_out = at;
  return true;
}

QUANTPPL_AVX2 SoftmaxRowStats row_stats_avx2(const float* z, int64_t n) {
  SoftmaxRowStats s;
  if (!max_argmax_avx2(z, n, &s.max, &s.argmax)) return s;
  const int64_t full = n - n % 8;
  const __m256 vm = _mm256_set1_ps(s.max);
  __m256d lo = _mm256_setzero_pd();
  __m256d hi = _mm256_setzero_pd();
  for (int64_t i = 0; i < full; i += 8) {
    add_to_double(exp8(_mm256_sub_ps(_mm256_loadu_ps(z + i), vm)), &lo, &hi);
  }
  if (full < n) {
    const __m256i live = tail_mask(n - full);
    const __m256 e = exp8(_mm256_sub_ps(_mm256_maskload_ps(z + full, live), vm));
    add_to_double(_mm256_and_ps(e, _mm256_castsi256_ps(live)), &lo, &hi);
  }
  s.sum_exp = horizontal_sum(lo, hi);
  s.finite = true;
  return s;
}

// Pass 2 of the pair: S_q and C together, reading p and q once more (from L2).
// The S_q accumulation is the very loop of row_stats_avx2, so q == p gives
// S_q == S_p bit for bit.
QUANTPPL_AVX2 SoftmaxPairStats pair_stats_avx2(const float* p, float p_max, const float* q, int64_t n) {
  SoftmaxPairStats r;
  if (!max_argmax_avx2(q, n, &r.q.max, &r.q.argmax)) return r;
  const int64_t full = n - n % 8;
  const __m256 vpm = _mm256_set1_ps(p_max);
  const __m256 vqm = _mm256_set1_ps(r.q.max);
  __m256d s_lo = _mm256_setzero_pd();
  __m256d s_hi = _mm256_setzero_pd();
  __m256d c_lo = _mm256_setzero_pd();
  __m256d c_hi = _mm256_setzero_pd();
  for (int64_t i = 0; i < full; i += 8) {
    const __m256 pv = _mm256_loadu_ps(p + i);
    const __m256 qv = _mm256_loadu_ps(q + i);
    add_to_double(exp8(_mm256_sub_ps(qv, vqm)), &s_lo, &s_hi);
    add_to_double(_mm256_mul_ps(exp8(_mm256_sub_ps(pv, vpm)), _mm256_sub_ps(pv, qv)), &c_lo, &c_hi);
  }
  if (full < n) {
    const __m256i live = tail_mask(n - full);
    const __m256 live_ps = _mm256_castsi256_ps(live);
    const __m256 pv = _mm256_maskload_ps(p + full, live);
    const __m256 qv = _mm256_maskload_ps(q + full, live);
    add_to_double(_mm256_and_ps(exp8(_mm256_sub_ps(qv, vqm)), live_ps), &s_lo, &s_hi);
    add_to_double(_mm256_and_ps(_mm256_mul_ps(exp8(_mm256_sub_ps(pv, vpm)), _mm256_sub_ps(pv, qv)), live_ps), &c_lo,
                  &c_hi);
  }
  r.q.sum_exp = horizontal_sum(s_lo, s_hi);
  r.q.finite = true;
  r.cross = horizontal_sum(c_lo, c_hi);
  return r;
}

QUANTPPL_AVX2 void exp_approx_avx2(const float* x, float* out, int64_t n) {
  const int64_t full = n - n % 8;
  for (int64_t i = 0; i < full; i += 8) _mm256_storeu_ps(out + i, exp8(_mm256_loadu_ps(x + i)));
  if (full < n) {
    const __m256i live = tail_mask(n - full);
    _mm256_maskstore_ps(out + full, live, exp8(_mm256_maskload_ps(x + full, live)));
  }
}

bool cpu_has_avx2_fma() {
  static const bool has = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return has;
}
#else
bool cpu_has_avx2_fma() { return false; }
#endif

}  // namespace

SoftmaxRowStats softmax_row_stats(const float* z, int64_t n) {
#ifdef QUANTPPL_SOFTMAX_X86
  if (cpu_has_avx2_fma()) return row_stats_avx2(z, n);
#endif
  return row_stats_scalar(z, n);
}

SoftmaxPairStats softmax_pair_stats(const float* p, float p_max, const float* q, int64_t n) {
#ifdef QUANTPPL_SOFTMAX_X86
  if (cpu_has_avx2_fma()) return pair_stats_avx2(p, p_max, q, n);
#endif
  return pair_stats_scalar(p, p_max, q, n);
}

const char* softmax_kernel_path() { return cpu_has_avx2_fma() ? "AVX2+FMA" : "scalar"; }

void exp_approx(const float* x, float* out, int64_t n) {
#ifdef QUANTPPL_SOFTMAX_X86
  if (cpu_has_avx2_fma()) {
    exp_approx_avx2(x, out, n);
    return;
  }
#endif
  for (int64_t i = 0; i < n; ++i) out[i] = exp_scalar(x[i]);
}

}  // namespace quantppl::kernel
