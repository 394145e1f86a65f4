#!/usr/bin/env bash
# Builds quantppl with AddressSanitizer + UndefinedBehaviorSanitizer (g++) in a separate build
# directory (build-asan/) and runs the C++ suite and the CLI end-to-end tests under them.
# Any report fails the run: UBSan does not recover (-fno-sanitize-recover), ASan aborts.
#
#   scripts/sanitize.sh                  configure + build + run
#   scripts/sanitize.sh --gtest_filter=Quantize*   extra arguments go to quantppl_tests
#   QUANTPPL_ASAN_DIR=dir scripts/sanitize.sh
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

start=$(date +%s)
cmake -S "$repo_root" -B "$build_dir" -G Ninja -DCMAKE_BUILD_TYPE=Release \
  -DCMAKE_CXX_FLAGS="$flags" -DCMAKE_EXE_LINKER_FLAGS="-fsanitize=address,undefined" \
  -DCMAKE_MODULE_LINKER_FLAGS="-fsanitize=address,undefined" \
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
"$build_dir/quantppl_tests" --gtest_brief=1 "$@"
QUANTPPL_BIN="$build_dir/quantppl" /usr/bin/python3 -m pytest -q -p no:cacheprovider \
  "$repo_root/tests/cli" "$repo_root/tests/reliability"
echo "sanitize: clean (build $((built - start)) s, tests $(( $(date +%s) - built )) s) in $build_dir"
