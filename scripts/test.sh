#!/usr/bin/env bash
# Runs every test of quantppl: installs and builds first (scripts/setup.sh, idempotent), then
# CTest, which runs the C++ suite (GoogleTest), the end-to-end CLI tests and the Python tests
# (export parity with transformers, perplexity against a Python reference).
set -euo pipefail
repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
build_dir="${QUANTPPL_BUILD_DIR:-$repo_root/build}"
"$repo_root/scripts/setup.sh"
cd "$build_dir"
ctest --output-on-failure --timeout 1800 -j 2 "$@"
