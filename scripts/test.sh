#!/usr/bin/env bash
# Runs every test of quantppl: installs and builds first (scripts/setup.sh, idempotent), then
# CTest, which runs the C++ suite (GoogleTest), the end-to-end CLI tests and the Python tests
# (export parity with transformers, perplexity against a Python reference).
# QUANTPPL_CI_EXTRA=1 also runs scripts/fuzz.sh and scripts/sanitize.sh afterwards.
set -euo pipefail
repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
build_dir="${QUANTPPL_BUILD_DIR:-$repo_root/build}"
"$repo_root/scripts/setup.sh"
cd "$build_dir"
ctest --output-on-failure --timeout 1800 -j 2 "$@"

# Fuzzing (25 s a target) and the ASan/UBSan build of the whole suite (docs/reliability.md). Together
# they take far longer than the ~12 minutes the default run may grow by on a 2-core machine (the
# sanitized build alone recompiles everything), so they run only when asked for.
if [ "${QUANTPPL_CI_EXTRA:-0}" = 1 ]; then
  "$repo_root/scripts/fuzz.sh" 25
  "$repo_root/scripts/sanitize.sh"
fi
