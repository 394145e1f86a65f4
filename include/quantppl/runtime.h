// The process-wide performance settings quantppl owns, so that its defaults
// are fast without the user setting environment variables.
//
// Measured on the 2-core VMs this tool is developed on
// (../shared/notes/performance-measurements.md, and README "Performance"):
// * LibTorch's intra-op pool (OpenMP) and OpenBLAS's own pool are separate:
//   at::set_num_threads does not reach OpenBLAS, whose thread count also
//   changes results in the last bits. Both are set to `threads` here
//   (openblas_set_num_threads, found with dlsym, when the BLAS is OpenBLAS).
// * OpenMP workers busy-wait between parallel regions and starve OpenBLAS's
//   threads: 2 threads were slower than 1 until OMP_WAIT_POLICY=PASSIVE.
//   libgomp reads that once at load time, before main(), so the CLI
//   re-executes itself with it set from an ELF .preinit_array function,
//   before any library's constructor (src/openmp_wait_policy.h); this file
//   only reports it.
// * glibc returns large freed blocks to the kernel (munmap, trim), and every
//   page touched again costs a page fault (~11.5 us per 4 KiB page here):
//   the forward pass allocates the same activation sizes every batch, so
//   keeping freed memory in the heap (M_MMAP_MAX = 0, a huge M_TRIM_THRESHOLD)
//   made it ~1.4x faster. It does not raise the peak: the peak is the largest
//   live set either way.
// * TorchScript's default profiling executor spends the first two calls of
//   forward profiling and re-optimising (~2.4 s for flan-t5-small); the
//   plain graph executor (no profiling) runs the same kernels from the first
//   call, so no warm-up lands in the first variant's timing.
// * Debian's default BLAS (the netlib reference, libblas3) is ~15x slower than
//   OpenBLAS at sgemm: detected from the library that provides sgemm_, and
//   warned about.
#pragma once

#include <string>

namespace quantppl {

struct RuntimeSettings {
  int threads = 1;                 // LibTorch intra-op threads (and OpenBLAS threads)
  int openblas_threads = 0;        // as set; 0 when the BLAS is not OpenBLAS
  std::string blas_library;        // resolved path of the library that provides sgemm_
  std::string blas_name;           // "OpenBLAS <config>", "reference BLAS (netlib)", or "unknown"
  bool reference_blas = false;     // the slow netlib BLAS: warn
  std::string omp_wait_policy;     // OMP_WAIT_POLICY as the process sees it ("" if unset)
  bool avx2 = false;               // the fused fake-quantize loops use AVX2
  std::string softmax_loops;       // the softmax-statistics loops (NLL, KL): "AVX2+FMA" or "scalar"
  bool malloc_tuned = false;       // M_MMAP_MAX / M_TRIM_THRESHOLD were set
  bool profiling_executor = false; // TorchScript profiling executor still on
};

// Applies the settings above for `threads` (>= 1) and returns what was
// chosen. Call once, before loading a model. Idempotent.
RuntimeSettings configure_runtime(int threads);

// Multi-line human description, for --verbose.
std::string describe(const RuntimeSettings& settings);

// One-line warning when the BLAS is the slow reference one; "" otherwise.
std::string blas_warning(const RuntimeSettings& settings);

}  // namespace quantppl
