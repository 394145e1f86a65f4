// The fused inner loops of fake-quantization, on raw contiguous arrays.
//
// These are the fast path of quantize.cpp: one read pass for a block's
// extremes, one read(+write) pass for equations (1)-(2), instead of a chain
// of six whole-tensor operations. They are plain C++ (no LibTorch), so this
// file compiles in a second and can be built with the exact floating-point
// flags the arithmetic needs (-ffp-contract=off: no fused multiply-add may
// change a rounding), and they are bit-identical with the tensor-op
// reference in quantize.cpp (fake_quantize_with_reference_), which the tests
// check on every weight of real models.
//
// Arithmetic, per element x, in T (float or double), with the block's scale s
// (or k for the inverse form), zero point z and code bounds [qmin, qmax]:
//
//   step form:     c = x / s        inverse form:  c = x * k
//   zero point:    c = c + z        (absmax adds nothing: z = 0, and adding
//                                    +0.0 would turn -0.0 into +0.0)
//   q  = min(max(round_half_even(c), qmin), qmax)
//   zero point:    q = q - z
//   step form:     x_hat = q * s    inverse form:  x_hat = q / k
//
// exactly the order and operations of the reference (torch's div_, add_,
// round_, clamp_, sub_, mul_), each correctly rounded IEEE. Rounding is
// round-half-to-even: vroundps with _MM_FROUND_TO_NEAREST_INT in the AVX2
// path, std::nearbyint (default rounding mode) in the scalar path. The clamp
// keeps the operand order of torch's clamp, max(qmin, c) then min(qmax, .),
// so that even the sign of a zero code matches.
//
// On x86-64 CPUs with AVX2 (checked once at run time) float arrays take an
// 8-wide path; everything else, and every tail, takes the scalar loop.
#pragma once

#include <cstdint>

namespace quantppl::kernel {

// The grid of one block: equations (1)-(2) of quantize.h.
template <typename T>
struct Grid {
  T scale;        // s (step form) or k (inverse form)
  T zero;         // z, an integer held in T; ignored unless has_zero
  T qmin;
  T qmax;
  bool inverse;   // ScaleForm::kInverseStep
  bool has_zero;  // Scheme::kZeroPoint
};

// Minimum and maximum of x[0, n) into *lo and *hi (n >= 1). Returns false,
// leaving *lo and *hi unspecified, if any element is NaN or +-Inf.
template <typename T>
bool min_max(const T* x, int64_t n, T* lo, T* hi);

// dst[i] = x_hat(src[i]) for i in [0, n). src == dst (in place) is allowed;
// otherwise the ranges must not overlap.
//
// streaming (only with src != dst; ignored otherwise and on the scalar
// path): dst is written with non-temporal stores, which skip the read of
// each destination cache line that an ordinary store triggers (a third of
// the memory traffic of a copy) and do not fill the cache with data that is
// not read again soon. They are weakly ordered: the caller must call
// store_fence() before anything else (another thread) reads dst.
template <typename T>
void fake_quantize(const T* src, T* dst, int64_t n, const Grid<T>& grid, bool streaming = false);

// Orders every streaming store of this thread before later stores (sfence).
void store_fence();

// sum_i (x_hat(x_i) - x_i)^2, the difference taken in T (as the reference
// subtracts float tensors), squared and summed in double, in index order
// within each of 8 interleaved lanes, then the lanes in order.
template <typename T>
double squared_error(const T* x, int64_t n, const Grid<T>& grid);

// Whether the 8-wide AVX2 path is in use on this CPU (for --verbose).
bool uses_avx2();

}  // namespace quantppl::kernel
