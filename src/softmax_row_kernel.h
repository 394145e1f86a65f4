// Softmax statistics of one row of logits, in two read passes and no
// temporaries: what perplexity (perplexity.h) and the comparison with fp32
// (distribution_metrics.h) need, without materialising log_softmax.
//
// For a row z of n logits:
//
//   (1) m = max_v z_v,  argmax = the smallest v with z_v == m (torch.argmax's tie rule)
//   (2) S = sum_v exp(z_v - m)            (1 <= S <= n), so that
//       log_sum_exp(z) = m + log(S)   and   nll(label) = m + log(S) - z_label
//
// and for a pair of rows, p (fp32) with its m_p, S_p, and q (a variant):
//
//   (3) C = sum_v exp(p_v - m_p) * (p_v - q_v)
//
// from which, with P = softmax(p), Q = softmax(q):
//
//   KL(P || Q) = sum_v P_v ((p_v - lse_p) - (q_v - lse_q)) = C / S_p - lse_p + lse_q
//
// Passes: the first finds m (and checks that every value is finite), the
// second sums the exponentials. A row of T5's 32,128 logits is 128 KB, so the
// second pass (and for a pair, both rows) reads from L2, not memory.
//
// Arithmetic: z_v - m in float (exact for the large terms: Sterbenz), exp in
// float, every product and difference in float, every sum in double (each
// float term converted and added in a fixed lane order, so the result does
// not depend on threads). exp is a Cephes-style polynomial on AVX2+FMA CPUs
// (checked once at run time; relative error <= 2 ulp on [-87, 0], arguments
// below -87 are taken as -87: exp(-87) = 1.6e-38 against a sum >= 1), and
// std::exp elsewhere. A row with p == q gives C = 0 and bit-identical S and
// m, so KL is exactly 0: both rows go through the same code.
#pragma once

#include <cstdint>

namespace quantppl::kernel {

struct SoftmaxRowStats {
  float max = 0;         // m in (1)
  int64_t argmax = 0;    // in (1)
  double sum_exp = 0;    // S in (2)
  bool finite = false;   // every z_v finite; when false the other fields are unspecified
  double log_sum_exp() const;  // m + log(S)
  // nll = m + log(S) - z_label in double, rounded to float32 (the precision
  // of transformers' float32 cross_entropy); NaN unless finite. The one
  // definition of a token's NLL: perplexity.h and distribution_metrics.h
  // both use it, so compare's fp32 row equals evaluate_perplexity bit for bit.
  float label_nll(float label_logit) const;
};

// (1) and (2) for z[0, n), n >= 1.
SoftmaxRowStats softmax_row_stats(const float* z, int64_t n);

struct SoftmaxPairStats {
  SoftmaxRowStats q;  // (1) and (2) of q
  double cross = 0;   // C in (3); unspecified unless q.finite
};

// q's (1), (2) and the cross term (3) against p, whose max is p_max (from
// softmax_row_stats(p, n)); p must be finite.
SoftmaxPairStats softmax_pair_stats(const float* p, float p_max, const float* q, int64_t n);

// "AVX2+FMA" or "scalar": which loops this CPU runs.
const char* softmax_kernel_path();

// The exp used by the loops above, 8 at a time on the AVX2 path (exposed for
// the accuracy test): out[i] = exp(max(x[i], -87)) for i in [0, n).
void exp_approx(const float* x, float* out, int64_t n);

}  // namespace quantppl::kernel
