#include "quantppl/runtime.h"

#include <climits>
#include <cstdlib>
#include <string>

#include <dlfcn.h>
#include <malloc.h>

#include <fmt/format.h>
#include <torch/csrc/jit/runtime/graph_executor.h>
#include <torch/torch.h>

#include "fake_quantize_kernel.h"
#include "softmax_row_kernel.h"

namespace quantppl {
namespace {

// The resolved path of the shared object that provides `symbol`, or "".
std::string library_providing(const char* symbol) {
  void* address = ::dlsym(RTLD_DEFAULT, symbol);
  if (address == nullptr) return "";
  Dl_info info{};
  if (::dladdr(address, &info) == 0 || info.dli_fname == nullptr) return "";
  char resolved[PATH_MAX];
  return ::realpath(info.dli_fname, resolved) != nullptr ? std::string(resolved) : std::string(info.dli_fname);
}

bool contains(const std::string& s, const char* part) { return s.find(part) != std::string::npos; }

}  // namespace

RuntimeSettings configure_runtime(int threads) {
  RuntimeSettings s;
  s.threads = threads < 1 ? 1 : threads;
  at::set_num_threads(s.threads);

  // Keep freed memory in the heap: see the header. M_MMAP_MAX = 0 serves every size from the heap.
  s.malloc_tuned = ::mallopt(M_MMAP_MAX, 0) == 1 && ::mallopt(M_TRIM_THRESHOLD, INT_MAX) == 1;

  // No profiling runs: the graph executor optimises once, on the first call, without the two
  // profiling passes (and without their ~2.4 s on flan-t5-small).
  torch::jit::getProfilingMode() = false;
  s.profiling_executor = torch::jit::getProfilingMode();

  s.blas_library = library_providing("sgemm_");
  using SetThreads = void (*)(int);
  using GetConfig = char* (*)();
  auto* set_openblas_threads = reinterpret_cast<SetThreads>(::dlsym(RTLD_DEFAULT, "openblas_set_num_threads"));
  auto* openblas_config = reinterpret_cast<GetConfig>(::dlsym(RTLD_DEFAULT, "openblas_get_config"));
  if (set_openblas_threads != nullptr) {
    set_openblas_threads(s.threads);
    s.openblas_threads = s.threads;
  }
  if (openblas_config != nullptr || contains(s.blas_library, "openblas")) {
    s.blas_name = openblas_config != nullptr ? fmt::format("OpenBLAS ({})", openblas_config()) : "OpenBLAS";
  } else if (contains(s.blas_library, "/blas/libblas") || contains(s.blas_library, "libblas.so")) {
    // Debian's netlib reference implementation (package libblas3), chosen by update-alternatives.
    s.blas_name = "reference BLAS (netlib)";
    s.reference_blas = true;
  } else if (contains(s.blas_library, "mkl")) {
    s.blas_name = "Intel MKL";
  } else if (contains(s.blas_library, "blis")) {
    s.blas_name = "BLIS";
  } else {
    s.blas_name = s.blas_library.empty() ? "unknown (no sgemm_ symbol: LibTorch's own kernels)" : "unknown";
  }

  const char* policy = std::getenv("OMP_WAIT_POLICY");
  s.omp_wait_policy = policy != nullptr ? policy : "";
  s.avx2 = kernel::uses_avx2();
  s.softmax_loops = kernel::softmax_kernel_path();
  return s;
}

std::string describe(const RuntimeSettings& s) {
  std::string out;
  out += fmt::format("quantppl: threads: {} (LibTorch intra-op), OpenBLAS threads: {}\n", s.threads,
                     s.openblas_threads > 0 ? std::to_string(s.openblas_threads) : std::string("not set (not OpenBLAS)"));
  out += fmt::format("quantppl: OMP_WAIT_POLICY: {}\n",
                     s.omp_wait_policy.empty() ? std::string("unset (OpenMP workers busy-wait)") : s.omp_wait_policy);
  out += fmt::format("quantppl: BLAS: {}{}\n", s.blas_name,
                     s.blas_library.empty() ? std::string() : fmt::format(" [{}]", s.blas_library));
  out += fmt::format("quantppl: fake-quantize loops: {}\n", s.avx2 ? "AVX2, fused" : "scalar, fused (no AVX2 on this CPU)");
  out += fmt::format("quantppl: NLL/KL loops: {}, fused (no log_softmax copies)\n", s.softmax_loops);
  out += fmt::format("quantppl: malloc: {}\n",
                     s.malloc_tuned ? "freed memory kept in the heap (M_MMAP_MAX=0, M_TRIM_THRESHOLD=INT_MAX)" : "glibc defaults");
  out += fmt::format("quantppl: TorchScript executor: {}\n",
                     s.profiling_executor ? "profiling (first calls are slow)" : "graph executor without profiling");
  return out;
}

std::string blas_warning(const RuntimeSettings& s) {
  if (!s.reference_blas) return "";
  return fmt::format(
      "quantppl: warning: LibTorch is using the reference BLAS ({}), about 15x slower than OpenBLAS; "
      "install libopenblas0-pthread (scripts/setup.sh does)",
      s.blas_library);
}

}  // namespace quantppl
