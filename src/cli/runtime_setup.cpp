// The CLI's side of runtime.h: apply the thread/allocator/executor settings
// before any model is loaded, warn about a slow BLAS, describe with --verbose.
#include <iostream>

#include "commands.h"
#include "quantppl/runtime.h"

namespace quantppl::cli {

void setup_runtime(int64_t threads, bool verbose) {
  const RuntimeSettings settings = configure_runtime(static_cast<int>(threads));
  const std::string warning = blas_warning(settings);
  if (!warning.empty()) std::cerr << warning << "\n";
  if (verbose) std::cerr << describe(settings);
}

}  // namespace quantppl::cli
