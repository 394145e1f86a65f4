// Helpers shared by the tests that need the contract-model fixtures
// (tests/fixtures/make_tiny_model.py, built by CMake into build/fixtures) or an
// independent Python reference (Debian's /usr/bin/python3 with torch and sentencepiece).
#pragma once

#include <cstdio>
#include <cstdlib>
#include <stdexcept>
#include <string>

namespace quantppl::testing {

// $QUANTPPL_FIXTURES if set, else the directory CMake generated.
inline std::string fixtures_dir() {
  if (const char* env = std::getenv("QUANTPPL_FIXTURES"); env != nullptr && *env != '\0') return env;
#ifdef QUANTPPL_FIXTURES_DIR
  return QUANTPPL_FIXTURES_DIR;
#else
  return "fixtures";
#endif
}

inline std::string fixture(const std::string& name) { return fixtures_dir() + "/" + name; }

inline std::string python() {
#ifdef QUANTPPL_TEST_PYTHON
  return QUANTPPL_TEST_PYTHON;
#else
  return "/usr/bin/python3";
#endif
}

inline std::string shell_quote(const std::string& s) {
  std::string out = "'";
  for (const char c : s) out += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return out + "'";
}

// Runs `command` through the shell and returns its standard output; throws
// if it exits non-zero (its stderr goes to the test log).
inline std::string run_command(const std::string& command) {
  FILE* pipe = popen(command.c_str(), "r");
  if (pipe == nullptr) throw std::runtime_error("popen failed: " + command);
  std::string out;
  char buf[4096];
  size_t n;
  while ((n = fread(buf, 1, sizeof buf, pipe)) > 0) out.append(buf, n);
  const int status = pclose(pipe);
  if (status != 0) throw std::runtime_error("command failed (" + std::to_string(status) + "): " + command);
  return out;
}

}  // namespace quantppl::testing
