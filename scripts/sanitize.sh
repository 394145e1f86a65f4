#!/usr/bin/env bash
# Builds quantppl with AddressSanitizer + UndefinedBehaviorSanitizer (g++) in a separate build
# directory (build-asan/) and runs every test of quantppl's C++ code under them: the C++ suite, the
# CLI end-to-end, reliability and sweep-script tests, and the perplexity regression gate. (Not the
# Python model pipeline tests, python_model_pipeline: they test the Python export, no C++.)
# Any report fails the run: UBSan does not recover (-fno-sanitize-recover), ASan aborts.
# Part of the CI run (scripts/test.sh); times in docs/reliability.md.
#
#   scripts/sanitize.sh                  configure + build + run
#   scripts/sanitize.sh --gtest_filter=Quantize*   extra arguments go to quantppl_tests
#   QUANTPPL_ASAN_DIR=dir scripts/sanitize.sh
#
# Build: a unity build at -O1 (scripts/sanitize.cmake), only the targets the run needs. On 2 cores
# this takes ~4 minutes from scratch instead of ~15 for a per-file -O3 build; the code checked is
# the same, only grouped into fewer translation units.
#
# Suppressions and options, and why (docs/reliability.md):
# * detect_leaks=0: LibTorch, OpenBLAS and libgomp allocate process-lifetime state (operator
#   registry, thread pools) that they never free; LeakSanitizer reports it at exit. We have no
#   leak suppression file because those reports are all at-exit, not growth.
# * QUANTPPL_SENTENCEPIECE_SHIM=build/libquantppl_sentencepiece.so: see below.
# * No UBSan suppression is needed.
set -euo pipefail
repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
build_dir="${QUANTPPL_ASAN_DIR:-$repo_root/build-asan}"
flags="-fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined"
# g++ warns "may be used uninitialized" inside libstdc++'s <regex> at -O1 with ASan: a known false
# positive of the instrumentation (the regular -O3 build does not warn), silenced here only.
flags="$flags -Wno-maybe-uninitialized"

start=$(date +%s)
cmake -S "$repo_root" -B "$build_dir" -G Ninja -DCMAKE_BUILD_TYPE=Release \
  -DCMAKE_CXX_FLAGS="$flags" -DCMAKE_CXX_FLAGS_RELEASE="-O1 -DNDEBUG" \
  -DCMAKE_EXE_LINKER_FLAGS="-fsanitize=address,undefined" \
  -DCMAKE_MODULE_LINKER_FLAGS="-fsanitize=address,undefined" \
  -DCMAKE_UNITY_BUILD=ON -DCMAKE_UNITY_BUILD_BATCH_SIZE=8 \
  -DCMAKE_PROJECT_INCLUDE="$repo_root/scripts/sanitize.cmake" \
  -DQUANTPPL_BUILD_BENCHMARKS=OFF >/dev/null
cmake --build "$build_dir" --target quantppl_tests quantppl_cli -j "$(nproc)"
built=$(date +%s)

export ASAN_OPTIONS="${ASAN_OPTIONS:-detect_leaks=0:abort_on_error=1:strict_string_checks=1}"
export UBSAN_OPTIONS="${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}"
export QUANTPPL_FIXTURES="$build_dir/fixtures"
# The sentencepiece shim cannot be loaded with RTLD_DEEPBIND under ASan; the sanitized build loads
# it with dlmopen() into its own namespace instead (src/tokenizer.cpp), which needs an
# uninstrumented shim: the regular build's.
plain_dir="${QUANTPPL_BUILD_DIR:-$repo_root/build}"
cmake --build "$plain_dir" --target quantppl_sentencepiece >/dev/null
export QUANTPPL_SENTENCEPIECE_SHIM="$plain_dir/libquantppl_sentencepiece.so"
export QUANTPPL_BIN="$build_dir/quantppl"

# The C++ suite runs beside the CLI tests: both spend most of their time in one thread (process
# start-up and LibTorch loading under ASan, single-threaded test code), so on 2 cores this saves
# minutes. PASSIVE: idle OpenMP threads sleep instead of spinning against the other half (the CLI
# sets this itself; the test binary does not).
status=0
cpp_log="$build_dir/quantppl_tests.log"
run_cpp_suite() {
  local t0=$SECONDS rc=0
  OMP_WAIT_POLICY=PASSIVE "$build_dir/quantppl_tests" --gtest_brief=1 "$@" || rc=$?
  echo "sanitize: C++ suite took $((SECONDS - t0)) s"
  return $rc
}
run_cpp_suite "$@" >"$cpp_log" 2>&1 &
cpp_pid=$!
# tests/sweep is left to CTest's uninstrumented run: it drives the same CLI paths as tests/cli through
# the Python sweep (68 s uninstrumented, an estimated 3-4 minutes under ASan) that CI's 40-minute
# budget cannot spare now that the CLI and reliability tests alone take ~15 minutes here.
/usr/bin/python3 -m pytest -q -p no:cacheprovider "$repo_root/tests/cli" "$repo_root/tests/reliability" || status=1
cli_done=$(date +%s)
"$repo_root/tests/regression/run_gate.sh" || status=1
gate_done=$(date +%s)
if wait "$cpp_pid"; then
  grep "PASSED\|SKIPPED \]\|C++ suite took" "$cpp_log"
else
  status=1
  echo "sanitize: the C++ suite FAILED ($cpp_log):" >&2
  grep -v "Skipped\|need not contain" "$cpp_log" | tail -80 >&2
fi
done_=$(date +%s)
times="build $((built - start)) s; CLI tests $((cli_done - built)) s, regression gate $((gate_done - cli_done)) s,"
times="$times C++ suite alongside; all tests $((done_ - built)) s"
if [ "$status" != 0 ]; then
  echo "sanitize: FAILED in $build_dir ($times)" >&2
  exit 1
fi
echo "sanitize: clean in $build_dir ($times)"
