// The CLI's side of runtime.h: cap --threads, apply the thread/allocator/executor
// settings before any model is loaded, warn about a slow BLAS, describe with --verbose.
#include <algorithm>
#include <iostream>

#include <fmt/format.h>

#include "commands.h"
#include "quantppl/runtime.h"

namespace quantppl::cli {

int64_t thread_cap() { return kMaxThreadsPerHardwareThread * default_threads(); }

int64_t setup_runtime(int64_t threads, bool verbose) {
  const int64_t cap = thread_cap();
  const int64_t used = std::clamp<int64_t>(threads, 1, cap);
  if (used != threads) {
    std::cerr << fmt::format(
        "quantppl: warning: --threads {} is more than {} x the {} hardware threads; using {} (more threads than "
        "cores only add contention: 1000 threads on 2 cores ran 29x slower than 1)\n",
        threads, kMaxThreadsPerHardwareThread, default_threads(), used);
  }
  const RuntimeSettings settings = configure_runtime(static_cast<int>(used));
  const std::string warning = blas_warning(settings);
  if (!warning.empty()) std::cerr << warning << "\n";
  if (verbose) std::cerr << describe(settings);
  return used;
}

}  // namespace quantppl::cli
