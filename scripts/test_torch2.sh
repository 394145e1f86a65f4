#!/usr/bin/env bash
# The LibTorch 2.x job (README "Using PyTorch 2.x"), a step of scripts/test.sh and so of CI: builds
# quantppl against the pinned PyPI torch wheel (scripts/setup_torch2.sh, build-torch2/: the library,
# the CLI and quantppl_tests, a unity build) and runs, in that configuration:
# 1. the C++ suite (quantppl_tests, GoogleTest), whose contract-model fixtures were exported by
#    scripts/export_t5.py under torch 2.x: a model exported with torch 2.x loads and evaluates;
# 2. the perplexity regression gate (tests/regression): the shipped models/default.pt, exported
#    by torch 1.13, gives the 1.13 build's perplexities under LibTorch 2.x;
# 3. the model-parity tests below with the 2.x venv's torch and transformers 5.x, the exporters
#    running under that torch too (QUANTPPL_EXPORT_PYTHON).
# A reduced job, to fit CI's 40 minutes: not run here (the 1.13 job runs them) are the CLI,
# reliability and sweep pytest suites, the other Python tests (the causal exporter's parity, the
# training and benchmark scripts), fuzzing and the sanitizers. Each step runs even when an earlier
# one failed; the exit status is non-zero if any failed. Each prints its wall and CPU time.
#
#   scripts/test_torch2.sh              setup (idempotent) + the three steps
#   scripts/test_torch2.sh -k tiny      extra arguments go to pytest (step 3)
set -euo pipefail
repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
build_dir="${QUANTPPL_TORCH2_BUILD_DIR:-$repo_root/build-torch2}"

# The model-parity tests that run under torch 2.x: an exporter's parity test goes here (one line).
parity_tests=(
  tests/python/test_export_parity.py
)

t0=$SECONDS
TIMEFORMAT="test_torch2: setup: %R s wall, %U s user, %S s sys"
time QUANTPPL_TORCH2_BUILD_DIR="$build_dir" "$repo_root/scripts/setup_torch2.sh"
echo "test_torch2: setup $((SECONDS - t0)) s"
vpy="$(sed -n 's/^QUANTPPL_VENV:PATH=//p' "$build_dir/CMakeCache.txt")/bin/python"

failed=()
step() {
  local name="$1"; shift
  local t=$SECONDS
  echo "test_torch2: == $name =="
  local TIMEFORMAT="test_torch2: $name: %R s wall, %U s user, %S s sys"
  if time "$@"; then
    echo "test_torch2: $name passed ($((SECONDS - t)) s)"
  else
    echo "test_torch2: $name FAILED ($((SECONDS - t)) s)" >&2
    failed+=("$name")
  fi
}

export QUANTPPL_BIN="$build_dir/quantppl"
# The C++ suite runs beside the gate and the parity tests: each is mostly one busy thread, so on 2
# cores this saves minutes. PASSIVE: idle OpenMP threads sleep instead of spinning against the
# other half (the CLI sets this itself; the test binary does not).
gtest_log="$build_dir/quantppl_tests.log"
( step gtest env OMP_WAIT_POLICY=PASSIVE "$build_dir/quantppl_tests" --gtest_brief=1
  [ ${#failed[@]} -eq 0 ] ) >"$gtest_log" 2>&1 &
gtest_pid=$!
step regression_gate "$repo_root/tests/regression/run_gate.sh"
existing=()
for t in "${parity_tests[@]}"; do [ -e "$repo_root/$t" ] && existing+=("$t"); done
step parity env QUANTPPL_EXPORT_PYTHON="$vpy" \
  bash -c 'cd "$1" && shift && exec "$@"' _ "$repo_root" \
  "$vpy" -m pytest -q -p no:cacheprovider "${existing[@]}" "$@"
wait "$gtest_pid" || failed+=(gtest)
cat "$gtest_log"

if [ ${#failed[@]} -gt 0 ]; then
  echo "test_torch2: FAILED: ${failed[*]}" >&2
  exit 1
fi
echo "test_torch2: all passed ($((SECONDS - t0)) s)"
