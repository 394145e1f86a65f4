#!/usr/bin/env bash
# Runs every test of quantppl: installs and builds first (scripts/setup.sh, idempotent), then
# 1. CTest: the C++ suite (GoogleTest), the end-to-end CLI and reliability tests, the Python tests
#    (export parity with transformers, perplexity against a Python reference), the regression gate;
# 2. scripts/test_torch2.sh: the same library on LibTorch 2.x from the pinned PyPI torch wheel
#    (build-torch2/, a unity build of the library, the CLI and the C++ suite): the C++ suite with
#    fixtures exported by torch 2.x, the regression gate and the model-parity tests (README "Using
#    PyTorch 2.x"); its venv (the 2.4 GB download on a fresh machine) is made in the background
#    while CTest runs;
# 3. scripts/fuzz.sh 60: each libFuzzer target for 60 s from its seed corpus, two at a time;
# 4. scripts/sanitize.sh: the C++ suite, the CLI tests of the file readers (hostile inputs) and
#    the gate under ASan + UBSan.
# A clean clone on the quiet 2-core machine, 2026-11-30 (docs/reliability.md, "In CI"): setup +
# build 5.7, CTest 7.1 (with the 2.x venv made beside it: the first time, 2.4 GB of wheels
# downloaded into ~/.cache/quantppl), LibTorch 2.x 4.5, fuzzing 4.5, sanitizers 8.1: 30
# minutes. All of them run even when one fails; the exit status is non-zero if any failed.
#
#   scripts/test.sh                        everything (this is what CI runs: .ci/run)
#   QUANTPPL_CI_QUICK=1 scripts/test.sh    CTest only, for a quick local check
#   QUANTPPL_CI_TORCH2=0 scripts/test.sh   everything but the LibTorch 2.x job (no 2.4 GB download)
#   scripts/test.sh -R cli_                extra arguments go to ctest
set -euo pipefail
repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
build_dir="${QUANTPPL_BUILD_DIR:-$repo_root/build}"
# A build directory made here (CI's clean clone) compiles quantppl_tests as a unity build
# (CMakeLists.txt, QUANTPPL_UNITY_TESTS: ~4 minutes less CPU); one configured before keeps its
# setting. The library and the CLI are built as users build them either way.
if [ ! -f "$build_dir/CMakeCache.txt" ] && [ -z "${QUANTPPL_UNITY_TESTS:-}" ]; then
  export QUANTPPL_UNITY_TESTS=ON
fi
TIMEFORMAT="test.sh: setup: %R s wall, %U s user, %S s sys"
time "$repo_root/scripts/setup.sh"

# The LibTorch 2.x job's venv (scripts/setup_torch2.sh --venv-only: on a fresh machine ~4 minutes,
# mostly downloading 2.4 GB of wheels, ~1 minute of CPU) is made in the background while CTest runs,
# and the torch2 step waits for it. Its output goes to a log, printed by the torch2 step; if it
# fails, so does that step. setup_torch2.sh renames a venv into place only when it is complete, and
# pip gives up on a dead connection (timeouts, retries), so this cannot leave a half venv or hang.
torch2_venv_pid=""
torch2_venv_log="${QUANTPPL_TORCH2_BUILD_DIR:-$repo_root/build-torch2}/venv-setup.log"
if [ "${QUANTPPL_CI_QUICK:-0}" != 1 ] && [ "${QUANTPPL_CI_TORCH2:-1}" = 1 ]; then
  mkdir -p "$(dirname "$torch2_venv_log")"
  echo "test.sh: making the LibTorch 2.x venv in the background (log: $torch2_venv_log)"
  nice -n 5 "$repo_root/scripts/setup_torch2.sh" --venv-only >"$torch2_venv_log" 2>&1 &
  torch2_venv_pid=$!
  # Not left running if this script stops early (an interrupt, an error outside a step).
  trap '[ -z "$torch2_venv_pid" ] || kill "$torch2_venv_pid" 2>/dev/null || true' EXIT
fi
# The torch2 step: waits for the venv made in the background, then runs the job. (Its CPU time
# includes the venv's: bash counts a child's CPU when it is waited for.)
torch2_job() {
  local t0=$SECONDS rc=0
  wait "$torch2_venv_pid" || rc=$?
  torch2_venv_pid=""
  echo "test_torch2: venv made in the background (waited $((SECONDS - t0)) s for it):"
  sed 's/^/  | /' "$torch2_venv_log"
  if [ "$rc" != 0 ]; then
    echo "test.sh: making the LibTorch 2.x venv FAILED (exit $rc; its log above: $torch2_venv_log)" >&2
    return 1
  fi
  "$repo_root/scripts/test_torch2.sh"
}

failed=()
step() {
  local name="$1"; shift
  local t0=$SECONDS
  echo "test.sh: == $name =="
  # CPU time (user + sys, children included) as well as wall time: on a shared machine the wall time
  # says little, (user + sys) / cores estimates a quiet one.
  local TIMEFORMAT="test.sh: $name: %R s wall, %U s user, %S s sys"
  if time "$@"; then
    echo "test.sh: $name passed ($((SECONDS - t0)) s)"
  else
    echo "test.sh: $name FAILED ($((SECONDS - t0)) s)" >&2
    failed+=("$name")
  fi
}

step ctest bash -c 'cd "$1" && shift && ctest --output-on-failure --timeout 1800 -j 2 "$@"' _ "$build_dir" "$@"
if [ "${QUANTPPL_CI_QUICK:-0}" = 1 ]; then
  echo "test.sh: QUANTPPL_CI_QUICK=1: fuzzing and the sanitizer run skipped (CI runs them)"
else
  if [ "${QUANTPPL_CI_TORCH2:-1}" = 1 ]; then
    step torch2 torch2_job
  else
    echo "test.sh: QUANTPPL_CI_TORCH2=${QUANTPPL_CI_TORCH2}: the LibTorch 2.x job skipped (CI runs it)"
  fi
  step fuzz "$repo_root/scripts/fuzz.sh" 60
  step sanitize "$repo_root/scripts/sanitize.sh"
fi

if [ ${#failed[@]} -gt 0 ]; then
  echo "test.sh: FAILED: ${failed[*]}" >&2
  exit 1
fi
echo "test.sh: all passed"
