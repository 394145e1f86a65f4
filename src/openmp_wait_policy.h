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
// included, passing them the environment array on the stack. Setting the
// variable there with setenv is not enough: libc has not published the
// environment yet (getenv finds nothing), and libc's own initialisation, which
// runs next, points `environ` back at the array on the stack, which cannot
// grow (measured: libgomp then starts with its default spin count of 300,000;
// its OMP_DISPLAY_ENV line "OMP_WAIT_POLICY = 'PASSIVE'" is printed for an
// unset variable too, so only GOMP_SPINCOUNT = '0' under
// OMP_DISPLAY_ENV=VERBOSE shows the policy in effect). Two ways remain:
//  1. Borrow a slot of that array: the shell's "_" variable (the path of the
//     command, which bash exports to every program it runs and no library
//     reads) is replaced in place by OMP_WAIT_POLICY=PASSIVE while the
//     libraries initialise, and put back first thing in main(). No cost.
//  2. Without a "_" entry, re-execute the program with the variable added,
//     from the preinit function: the libraries are loaded and relocated
//     (~0.1 s for LibTorch here) but none of their constructors has run.
// Re-executing from main(), as before, cost ~0.4 s of CPU and 17,000 page
// faults: LibTorch's constructors and everything up to main(), twice.
// If the preinit function could not run (a loader that ignores
// .preinit_array) or execve failed, apply_openmp_wait_policy() re-executes
// from main() as before.
#pragma once

#include <cstdint>
#include <cstdlib>
#include <cstring>

#include <alloca.h>

#include <unistd.h>

namespace quantppl::startup {
namespace {

constexpr char kWaitPolicyName[] = "OMP_WAIT_POLICY";
char kPassiveEntry[] = "OMP_WAIT_POLICY=PASSIVE";
// Way 1: the environment array and the slot lent to the policy, and what it held.
char** borrowed_array = nullptr;
size_t borrowed_index = 0;
char* borrowed_entry = nullptr;

void set_passive_wait_policy_before_libraries(int /*argc*/, char** argv, char** envp) {
  size_t n = 0;
  size_t underscore = SIZE_MAX;
  constexpr size_t kPrefix = sizeof(kWaitPolicyName) - 1;
  for (; envp != nullptr && envp[n] != nullptr; ++n) {
    if (std::strncmp(envp[n], kWaitPolicyName, kPrefix) == 0 && envp[n][kPrefix] == '=') return;  // the user's
    if (envp[n][0] == '_' && envp[n][1] == '=') underscore = n;
  }
  if (underscore != SIZE_MAX) {
    borrowed_array = envp;
    borrowed_index = underscore;
    borrowed_entry = envp[underscore];
    envp[underscore] = kPassiveEntry;
    return;
  }
  // On the stack: before libc's initialisation, nothing else is certain to work.
  auto** env = static_cast<char**>(alloca((n + 2) * sizeof(char*)));
  for (size_t i = 0; i < n; ++i) env[i] = envp[i];
  env[n] = kPassiveEntry;
  env[n + 1] = nullptr;
  ::execve("/proc/self/exe", argv, env);
  // execve only returns on failure: main() tries once more (apply_openmp_wait_policy).
}

__attribute__((section(".preinit_array"), used)) void (*const kPreinitWaitPolicy)(int, char**, char**) =
    &set_passive_wait_policy_before_libraries;

void apply_openmp_wait_policy(char** argv) {
  if (borrowed_entry != nullptr) {
    // Give "_" its slot back and keep the policy as an ordinary variable. If a library changed
    // the environment meanwhile, `environ` is a copy (holding the policy entry): add "_" to it.
    if (environ == borrowed_array && environ[borrowed_index] == kPassiveEntry) {
      environ[borrowed_index] = borrowed_entry;
    } else {
      ::putenv(borrowed_entry);
    }
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
