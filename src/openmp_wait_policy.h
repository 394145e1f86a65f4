// OMP_WAIT_POLICY=PASSIVE for an executable, set before libgomp reads it.
// Include this header in exactly one source file of an executable (it defines
// an ELF .preinit_array entry), and call apply_openmp_wait_policy() first
// thing in main().
//
// Why: LibTorch's OpenMP workers busy-wait ("active" policy) between parallel
// regions, fighting OpenBLAS's own threads for the cores: measured on 2
// cores, a compare at --threads 2 took 32 s with the default policy and 2 s
// with OMP_WAIT_POLICY=PASSIVE (1 thread: 3 s). libgomp reads the variable
// once, in its constructor, before main(). A user's own setting wins.
//
// How: the dynamic loader runs the executable's .preinit_array functions
// (executables only) before any shared library's constructor, libgomp's
// included, passing them the process's environment array. At that point libc
// has not published it yet (getenv finds nothing), and the array on the
// stack cannot grow, so the function points `environ` at a copy with the
// variable appended; the libraries' constructors read that. glibc's start-up
// code then sets `environ` back to the original array before main(), so
// apply_openmp_wait_policy() adds the variable again (setenv) for whatever
// reads it later (--verbose, child processes).
//
// This replaced re-executing the whole process with the variable set, which
// cost ~0.3 s (LibTorch loaded, relocated and initialised twice). If the
// preinit function could not run (a loader that ignores .preinit_array, or
// no memory), apply_openmp_wait_policy() still re-executes as before.
#pragma once

#include <cstdlib>
#include <cstring>

#include <unistd.h>

namespace quantppl::startup {
namespace {

constexpr char kWaitPolicyName[] = "OMP_WAIT_POLICY";
char kPassiveEntry[] = "OMP_WAIT_POLICY=PASSIVE";
bool passive_set_before_start = false;

void set_wait_policy_before_libraries(int /*argc*/, char** /*argv*/, char** envp) {
  size_t n = 0;
  constexpr size_t kPrefix = sizeof(kWaitPolicyName) - 1;
  for (; envp != nullptr && envp[n] != nullptr; ++n) {
    if (std::strncmp(envp[n], kWaitPolicyName, kPrefix) == 0 && envp[n][kPrefix] == '=') return;  // the user's
  }
  auto** env = static_cast<char**>(std::malloc((n + 2) * sizeof(char*)));
  if (env == nullptr) return;
  if (n > 0) std::memcpy(env, envp, n * sizeof(char*));
  env[n] = kPassiveEntry;
  env[n + 1] = nullptr;
  environ = env;
  passive_set_before_start = true;
}

__attribute__((section(".preinit_array"), used)) void (*const kPreinitWaitPolicy)(int, char**, char**) =
    &set_wait_policy_before_libraries;

void apply_openmp_wait_policy(char** argv) {
  if (passive_set_before_start) {
    ::setenv(kWaitPolicyName, "PASSIVE", /*overwrite=*/0);
    return;
  }
  if (std::getenv(kWaitPolicyName) != nullptr) return;
  if (::setenv(kWaitPolicyName, "PASSIVE", /*overwrite=*/1) != 0) return;
  ::execv("/proc/self/exe", argv);
  // execv only returns on failure: carry on with the active policy.
}

}  // namespace
}  // namespace quantppl::startup
