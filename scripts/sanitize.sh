#!/usr/bin/env bash
# Builds quantppl with AddressSanitizer + UndefinedBehaviorSanitizer (g++) in a separate build
# directory (build-asan/) and runs under them: the C++ suite (quantppl_tests; all but eight tests
# that only repeat, for numbers, code the others run: the list below), the CLI tests
# that feed the real binary hostile or broken files (the readers of models, archives, tokenizers,
# texts, token files, .qpack files, calibration texts and --check files; the list below), and the
# perplexity regression gate. The rest of the CLI suites (numbers against references, output
# formats, determinism, interrupts, sweeps) runs uninstrumented in CTest: they drive the same
# readers with well-formed files, and CI's 40-minute budget cannot pay ~10 more minutes for them
# under ASan (docs/reliability.md, "In CI").
# Any report fails the run: UBSan does not recover (-fno-sanitize-recover), ASan aborts.
# Part of the CI run (scripts/test.sh); times in docs/reliability.md.
#
#   scripts/sanitize.sh                  configure + build + run
#   scripts/sanitize.sh --gtest_filter=Quantize*   extra arguments go to quantppl_tests
#   QUANTPPL_ASAN_DIR=dir scripts/sanitize.sh
#   QUANTPPL_ASAN_ALL_CLI=1 scripts/sanitize.sh    every CLI/reliability test, not only the readers'
#   QUANTPPL_ASAN_ALL_TESTS=1 scripts/sanitize.sh  every C++ test too (eight are left out by default, below)
#
# Build: a unity build at -O1 (cmake/unity_build.cmake), only the targets the run needs. On 2 cores
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
  -DCMAKE_PROJECT_INCLUDE="$repo_root/cmake/unity_build.cmake" \
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
# C++ tests left out under ASan (QUANTPPL_ASAN_ALL_TESTS=1, or a --gtest_filter of your own, runs
# them): they repeat, for a claim about numbers, code that other tests run under ASan too, and are
# among the slowest here; CTest runs them uninstrumented. Each with what else covers its code:
asan_skip=(
  # 5 Python reference processes (uninstrumented, most of its ~22 s of CPU here); its C++ side, a
  # compare of standard variants on the tiny model, runs in every other CompareTest
  CompareTest.MatchesPythonReferenceForFp32AndSeedVariants
  # the same: Python's perplexity (~19 s); TokenCountsPerMode makes exactly its evaluate_perplexity calls
  PerplexityTest.EqualsPythonReference
  # a compare of models/default.pt (~18 s): the regression gate below runs that model under ASan
  DefaultModelTest.ReactsToQuantizationLikeARealLanguageModel
  # determinism: three early-stopping runs of what StoppedRowsEvaluateFewerTokensAndSaySo runs once
  CompareEarlyStoppingTest.TheSeedFixesTheOrderAndIsTheSameForEveryVariant
  # the very call (tiny model, "fp32,absmax:8") that CompareTest.PairedIntervalIsTighterThanPerplexityError makes
  CompareEarlyStoppingTest.WithoutTheFlagNothingChanges
  # numbers recorded before the engine; its fixture's sensitivity run is the other SensitivityTests'
  SensitivityTest.MatchesTheImplementationBeforeTheEngine
  # bit-exact pack/unpack on every fixture weight of the two rows with an MSE range search (~51 s
  # and ~25 s, the search over each block): packing fp4 and nf4 runs in the rows fp4_group32 and
  # nf4*, the float formats' MSE search in the other *_mse rows and block_formats_test's
  # fp4:channel:mse and nf4:group64:mse
  EveryRow/FormatExampleTest.PackUnpackIsBitExactOnEveryFixtureWeight/fp4_group64_mse
  EveryRow/FormatExampleTest.PackUnpackIsBitExactOnEveryFixtureWeight/nf4_channel_mse
)
cpp_args=()
if [ "${QUANTPPL_ASAN_ALL_TESTS:-0}" != 1 ] && [[ " $* " != *" --gtest_filter"* ]]; then
  cpp_args=("--gtest_filter=-$(IFS=:; echo "${asan_skip[*]}")")
fi
run_cpp_suite "${cpp_args[@]}" "$@" >"$cpp_log" 2>&1 &
cpp_pid=$!
# The CLI tests that feed the binary hostile, broken or unusual files: every reader's error paths,
# where memory errors would hide. The rest run uninstrumented in CTest (cli_end_to_end,
# cli_reliability, sweep_scripts). QUANTPPL_ASAN_ALL_CLI=1 runs tests/cli and tests/reliability whole.
reader_tests=(
  tests/reliability/test_hostile_archives.py   # model archives: CRC, truncation, sizes, zip bomb, JSON depth, TorchScript, .qpack headers
  tests/reliability/test_hostile_inputs.py     # devices, FIFOs, standard input, size limits, tokenizers, outputs, regex bombs
  tests/reliability/test_long_line.py          # a text of one 20 MB line
  tests/reliability/test_determinism.py        # the rest of the bad-input catalogue (not its determinism half, below)
  tests/cli/test_packed.py                     # .qpack written and read back, truncated and corrupt
  tests/cli/test_cli.py::test_bad_models_are_clean_errors_naming_the_file
  tests/cli/test_cli.py::test_bad_text_is_a_clean_error
  tests/cli/test_cli.py::test_check_gate_passes_within_tolerance_and_fails_with_both_values
  tests/cli/test_calibrate.py::test_flag_errors  # calibration texts: missing, binary
  tests/cli/test_causal.py::test_bad_tokens_files_are_data_errors
  tests/cli/test_causal.py::test_bpe_causal_model_tokenizes_like_hugging_face_tokenizers  # tokenizer.json
)
# test_determinism.py's determinism half (the same numbers from repeated runs; ~9 minutes under
# ASan on a loaded machine). By name: --deselect would depend on pytest's rootdir (tests/).
not_readers=(-k "not (test_same_command_gives_bit_identical_numbers or test_one_and_two_threads_agree or test_batch_size_one_and_eight_agree)")
if [ "${QUANTPPL_ASAN_ALL_CLI:-0}" = 1 ]; then
  reader_tests=(tests/cli tests/reliability)
  not_readers=()
fi
(cd "$repo_root" && /usr/bin/python3 -m pytest -q -p no:cacheprovider "${reader_tests[@]}" "${not_readers[@]}") || status=1
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
