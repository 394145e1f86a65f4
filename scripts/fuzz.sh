#!/usr/bin/env bash
# Builds the libFuzzer targets in fuzz/ with Debian's clang-14 (ASan + UBSan) into build-fuzz/ and
# runs each for SECONDS (default 60) from its seed corpus in fuzz/corpus/<target>/.
# Exits non-zero if any target crashes; the reproducer is left in build-fuzz/artifacts/.
# Part of the CI run: scripts/test.sh runs `scripts/fuzz.sh 60` (~50 s to build from scratch on
# 2 cores, then 6 x 60 s, as many targets at a time as there are cores: ~3 minutes on 2).
# Its own build on purpose, not shared with scripts/sanitize.sh: libFuzzer needs clang and
# coverage instrumentation of the code under test, the sanitized suite is a g++ build of
# everything; sharing would save only the ~50 s build.
#
#   scripts/fuzz.sh [SECONDS]            build, then fuzz every target
#   scripts/fuzz.sh 0                    build only
#   QUANTPPL_FUZZ_TARGETS="quantize_fuzz" scripts/fuzz.sh 30
#   build-fuzz/quantize_fuzz CRASH_FILE  reproduce one input
#
# The library sources a target needs are compiled here with clang++ rather than linked from
# build/libquantppl.a, because libFuzzer needs coverage instrumentation in the code under test.
# LibTorch (built by Debian with g++) links fine: both compilers use libstdc++.
# New inputs found while fuzzing go to build-fuzz/corpus/<target>/, not into the repository's
# seed corpus; copy an interesting one to fuzz/corpus/<target>/ by hand.
set -euo pipefail
repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
out="${QUANTPPL_FUZZ_DIR:-$repo_root/build-fuzz}"
seconds="${1:-60}"
cxx="${CXX_FUZZ:-clang++-14}"
targets=(${QUANTPPL_FUZZ_TARGETS:-variant_spec_fuzz metadata_fuzz quantize_fuzz archive_fuzz qpack_fuzz bpe_fuzz})
jobs="$(nproc)"

command -v "$cxx" >/dev/null || { echo "fuzz: $cxx not found (apt-get install clang-14 libclang-rt-14-dev)" >&2; exit 2; }
mkdir -p "$out/obj/formats" "$out/obj/methods" "$out/obj/model" "$out/artifacts"

sanitize="-fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer"
cxxflags=(-std=c++17 -O1 -g $sanitize -D_GLIBCXX_USE_CXX11_ABI=1 -DFMT_SHARED
          -I"$repo_root/include" -isystem /usr/include/torch/csrc/api/include)
libs=(-ltorch -ltorch_cpu -lc10 -lfmt -lcrypto -lz -lre2 -lpcre2-8 -licuuc -lpthread -ldl)
library_sources=(error percentile quantize variant_spec methods/method_table model_metadata regular_file json_input sha256 archive_integrity
                 formats/format_table formats/spec_fields formats/packed_sections formats/uniform_format
                 formats/float_formats formats/scaled_element_format formats/mx_format formats/nvfp4_format
                 formats/gguf_blocks formats/block_scan formats/zero_point_grid model/bpe_tokenizer)
# qpack_fuzz reaches the .qpack reader through packed_model.cpp, whose loading half needs most of the
# library (ContractModel, the quantizer, output files). Those parts are not what it fuzzes, so they
# come uninstrumented from the regular build's static library, after the instrumented objects
# (the linker then takes from it only what they do not define). scripts/test.sh builds it first.
regular_lib="${QUANTPPL_BUILD_DIR:-$repo_root/build}/libquantppl.a"
# quantize.cpp's fused loops (issue 8), once they are in the tree; CMakeLists.txt compiles them with
# -ffp-contract=off (no fused multiply-add may change a rounding), and so does this script.
[ -f "$repo_root/src/fake_quantize_kernel.cpp" ] && library_sources+=(fake_quantize_kernel)

# Compiles $1 to $2 unless the object is newer than the source and every header (include/, src/).
compile() {
  local src="$1" obj="$2"; shift 2
  if [ -f "$obj" ] && [ -z "$(find "$src" "$repo_root/include" "$repo_root/src" -newer "$obj" \
      \( -path "$src" -o -name '*.h' \) -print -quit)" ]; then return 0; fi
  echo "fuzz: compiling $(basename "$src")"
  "$cxx" "${cxxflags[@]}" "$@" -c "$src" -o "$obj"
}

pids=()
for s in "${library_sources[@]}"; do
  extra=()
  # As CMakeLists.txt: no fused multiply-add may change a rounding of the fused loops or the formats.
  case "$s" in
    fake_quantize_kernel) extra=(-ffp-contract=off) ;;
    formats/float_formats|formats/scaled_element_format|formats/mx_format|formats/nvfp4_format|formats/gguf_blocks|formats/block_scan|formats/zero_point_grid)
      extra=(-ffp-contract=off -fno-trapping-math) ;;
  esac
  compile "$repo_root/src/$s.cpp" "$out/obj/$s.o" -fsanitize=fuzzer-no-link "${extra[@]}" &
  pids+=($!)
  if [ ${#pids[@]} -ge "$jobs" ]; then wait "${pids[0]}"; pids=("${pids[@]:1}"); fi
done
if [[ " ${targets[*]} " == *" qpack_fuzz "* ]]; then
  compile "$repo_root/src/packed_model.cpp" "$out/obj/packed_model.o" -fsanitize=fuzzer-no-link &
  pids+=($!)
fi
for t in "${targets[@]}"; do
  compile "$repo_root/fuzz/$t.cpp" "$out/obj/$t.o" -fsanitize=fuzzer-no-link &
  pids+=($!)
  if [ ${#pids[@]} -ge "$jobs" ]; then wait "${pids[0]}"; pids=("${pids[@]:1}"); fi
done
for p in "${pids[@]}"; do wait "$p"; done
objs=()
for s in "${library_sources[@]}"; do objs+=("$out/obj/$s.o"); done
for t in "${targets[@]}"; do
  rest=()
  if [ "$t" = qpack_fuzz ]; then
    [ -f "$regular_lib" ] || { echo "fuzz: qpack_fuzz needs $regular_lib (ninja -C build quantppl)" >&2; exit 2; }
    rest=("$out/obj/packed_model.o" "$regular_lib")
  fi
  "$cxx" $sanitize -fsanitize=fuzzer "$out/obj/$t.o" "${objs[@]}" "${rest[@]}" "${libs[@]}" -o "$out/$t"
done
echo "fuzz: built ${targets[*]} in $out"
[ "$seconds" -gt 0 ] || exit 0

# LibTorch allocates at start-up and keeps it until exit: leak reports there are not ours.
export ASAN_OPTIONS="${ASAN_OPTIONS:-detect_leaks=0}"
export UBSAN_OPTIONS="${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}"
# Each libFuzzer run is one thread: $jobs (nproc) targets run at a time, each still for SECONDS.
fuzz_one() {
  local t="$1"
  mkdir -p "$out/corpus/$t"
  local dict=()  # fuzz/<target>.dict: the tokens its input format is made of, when the target has one
  [ -f "$repo_root/fuzz/$t.dict" ] && dict=(-dict="$repo_root/fuzz/$t.dict")
  if ! "$out/$t" "${dict[@]}" -max_total_time="$seconds" -timeout=25 -rss_limit_mb=4096 -print_final_stats=1 \
      -artifact_prefix="$out/artifacts/$t-" "$out/corpus/$t" "$repo_root/fuzz/corpus/$t" \
      >"$out/$t.log" 2>&1; then
    echo "fuzz: $t FAILED; see $out/$t.log and $out/artifacts/" >&2
    tail -40 "$out/$t.log" >&2
    return 1
  fi
  echo "fuzz: $t: $(grep -E "^stat::number_of_executed_units" "$out/$t.log" | tail -1)"
}
status=0
running=()
for t in "${targets[@]}"; do
  echo "fuzz: $t for ${seconds}s"
  fuzz_one "$t" &
  running+=($!)
  if [ ${#running[@]} -ge "$jobs" ]; then
    wait "${running[0]}" || status=1
    running=("${running[@]:1}")
  fi
done
for p in "${running[@]}"; do wait "$p" || status=1; done
exit $status
