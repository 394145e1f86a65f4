#!/usr/bin/env bash
# Performance benchmark of quantppl (issue 8): every target measured in one go, one table.
#
# usage: scripts/bench.sh [--quick] [--xl] [--reps N] [--out DIR] [--tutorial-only]
#
#   --quick   smoke run: the default text once (9 windows of 512), 1 repetition, short
#             micro-benchmarks
#   --xl      also build (cached) the T5-XL-shaped model (2.85B parameters, 11.4 GB) and run
#             compare on it with a short text and --variants fp32,absmax:8
#   --reps N  repetitions of the throughput runs (default 3; --quick: 1); each side keeps its best
#   --out DIR where to write the results (default $CACHE/runs/<date-time>)
#   --tutorial-only  only section (f), the whole-process comparison with the seed tutorial
#
# Models are built by scripts/make_bench_models.py into
# ${QUANTPPL_BENCH_CACHE:-$HOME/.cache/quantppl/bench} (never into the repository) and rebuilt
# only when the scripts that make them change. The binaries are taken from
# ${QUANTPPL_BUILD_DIR:-build}; nothing is compiled here.
#
# What runs (all files land in the run directory; scripts/bench_report.py reads them):
#   (a) build/quantppl_bench --benchmark_format=json --benchmark_out=bench.json with
#       QUANTPPL_BENCH_MODEL=<flan-t5-small-shaped model>: fake-quant vs copy, restore, sgemm,
#       load times. Skipped with a message if the binary or its benchmarks are missing. The GEMM
#       rate is also measured through torch.mm (python_baseline.py --sgemm, same OpenBLAS) at the
#       start and the end; the report uses the best rate seen.
#       BM_FormatFakeQuantize/<spec>/threads:T runs every example spec of every row of the format
#       table (formats/format_table.h): the report's target 6 is each over the copy, <= 2.
#       BM_Hqq/<spec>/threads:T runs HQQ (hqq_prepare + x_hat) on every Linear weight for the
#       zero-point grids of issue 16: the report's target 8 is each over the copy, <= 20.
#   (b) quantppl compare --variants fp32 --format json -q for B in 1,8 and T in 1,2 on the text
#       (data/default_eval.txt repeated 4 times: 17,349 tokens, 34 windows of <= 512), and
#       scripts/python_baseline.py on the same (interleaved, --reps times).
#   (c) compare with fp32,absmax:8,absmax:4,zeropoint:8:channel at B=8, T=2 on the same text.
#   (d) peak RSS (GNU time %M) of compare --variants fp32,absmax:8 at B=1 on the default text and
#       on the 4x text, at B=8 and with --backup file on the default text, and of
#       `quantppl --version` (LibTorch's static footprint).
#   (e) --xl: the T5-XL-shaped model (see above); passes --backup file if compare lists it.
#   (f) whole processes, wall time (issue 13, item 6): the seed tutorial's pipeline in Python
#       (scripts/quantppl_tools/tutorial_baseline.py in the venv: transformers'
#       T5ForConditionalGeneration loaded from a Hugging Face checkpoint of the same weights,
#       the tutorial's absmax/zeropoint functions on every Linear weight, exp(loss) per 512-token
#       window) against `quantppl compare --variants fp32,absmax:8,zeropoint:8`, at 2 threads,
#       on a ~1,000-token and a ~7,000-token text cut from data/default_eval.txt; --reps
#       repetitions (default 5; --quick: 1), interleaved, after one untimed run of each; the report shows
#       the ratio of the medians. The venv is ${QUANTPPL_VENV:-build/venv}; the checkpoint is
#       cached beside the model.
#   (g) early stopping (issue 13): a 10-variant compare (fp32 + 9 8/6-bit variants) at B=1, T=2 on
#       the same text, once in full and once with --ci-target 1, timed in this run; prints the
#       speed-up and writes it to early_stopping.txt.
#   (h) calibration (issue 15): `quantppl calibrate` of every Linear layer with 16,384 tokens of
#       data/calibration.txt (--quick: 2,048) at T=2, on models/default.pt and on the
#       flan-t5-small-shaped model: wall time and peak RSS, written to calibration.txt.
#   (i) GPTQ and AWQ (issues 15, 16): build/quantppl_method_bench on the flan-t5-small-shaped model
#       at T=2: one calibration pass (16,384 tokens of data/calibration.txt; --quick: 2,048), GPTQ
#       of every Linear layer (absmax:4:group128, natural order and actorder), AWQ's search over
#       every layer group -> methods.json; then the Python reference GPTQ
#       (bench/gptq_reference_bench.py, natural order; --quick: the first encoder block only) on
#       the Hessians that run captured -> gptq_reference.json.
#
# Environment: quantppl sets OMP_WAIT_POLICY=PASSIVE itself; python_baseline.py sets
# OMP_WAIT_POLICY=PASSIVE, OPENBLAS_NUM_THREADS=T and the glibc malloc tunables itself;
# the tutorial pipeline (f) gets OMP_WAIT_POLICY=PASSIVE and OPENBLAS_NUM_THREADS=T from here
# (what quantppl sets for itself: same threads on both sides)
# tutorial does not tune its allocator);
# quantppl_bench gets OMP_WAIT_POLICY=PASSIVE from here unless it is set already.
# OPENBLAS_CORETYPE is left as it is (see ../shared/notes/performance-measurements.md).
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BUILD=${QUANTPPL_BUILD_DIR:-$REPO/build}
CACHE=${QUANTPPL_BENCH_CACHE:-$HOME/.cache/quantppl/bench}
PY=/usr/bin/python3
[[ -x $PY ]] || PY=python3
QUICK=0
XL=0
REPS=
OUT=
TUTORIAL_ONLY=0

usage() { sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'; }
while [[ $# -gt 0 ]]; do
  case $1 in
    --quick) QUICK=1 ;;
    --xl) XL=1 ;;
    --reps) REPS=${2:?--reps needs a number}; REPS_GIVEN=$REPS; shift ;;
    --out) OUT=${2:?--out needs a directory}; shift ;;
    --tutorial-only) TUTORIAL_ONLY=1 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "bench.sh: error: unknown argument '$1'" >&2; usage >&2; exit 2 ;;
  esac
  shift
done
[[ -z $REPS ]] && REPS=$((QUICK ? 1 : 3))
[[ $REPS =~ ^[1-9][0-9]*$ ]] || { echo "bench.sh: error: --reps must be a positive integer" >&2; exit 2; }

QUANTPPL=$BUILD/quantppl
BENCH=$BUILD/quantppl_bench
[[ -x $QUANTPPL ]] || { echo "bench.sh: error: $QUANTPPL not found: build first (scripts/setup.sh)" >&2; exit 4; }
TIME=/usr/bin/time
[[ -x $TIME ]] || { echo "bench.sh: error: GNU time (/usr/bin/time) is needed for peak RSS: apt-get install time" >&2; exit 4; }

mkdir -p "$CACHE"
RUN=${OUT:-$CACHE/runs/$(date +%Y%m%d-%H%M%S)}
mkdir -p "$RUN"
log() { printf '[bench %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

# ---------------------------------------------------------------------------------------------
# Models (cached; rebuilt when the scripts that make them change)
# ---------------------------------------------------------------------------------------------
model_stamp() {  # shape -> a hash of everything the model's bytes depend on
  cat "$REPO/scripts/quantppl_tools/bench_models.py" "$REPO/scripts/quantppl_tools/t5_torchscript.py" \
      "$REPO/scripts/quantppl_tools/export.py" \
      "$REPO/models/default.pt" <(echo "$1 seed=0 $($PY -c 'import torch; print(torch.__version__)')") |
    sha256sum | cut -c1-16
}

ensure_model() {  # shape path tag: build unless cached; records tag.kb / tag.seconds in the run dir
  local shape=$1 path=$2 tag=$3 stamp
  stamp=$(model_stamp "$shape")
  if [[ -f $path && -f $path.stamp && $(cat "$path.stamp") == "$stamp" ]]; then
    log "model $shape: cached $path"
  else
    log "model $shape: building $path"
    rm -f "$path.stamp"
    "$TIME" -f '%M %e' -o "$path.build" "$PY" "$REPO/scripts/make_bench_models.py" --shape "$shape" --out "$path" >&2
    echo "$stamp" > "$path.stamp"
  fi
  if [[ -f $path.build ]]; then  # the build's peak RSS (KiB) and wall seconds, from when it was built
    cut -d' ' -f1 "$path.build" > "$RUN/$tag.kb"
    cut -d' ' -f2 "$path.build" > "$RUN/$tag.seconds"
  fi
}

FLAN=$CACHE/flan-t5-small.pt
ensure_model flan-t5-small "$FLAN" flan_build

# ---------------------------------------------------------------------------------------------
# Texts
# ---------------------------------------------------------------------------------------------
TEXT1=$RUN/text_x1.txt
TEXT4=$RUN/text_x4.txt
cp "$REPO/data/default_eval.txt" "$TEXT1"
for _ in 1 2 3 4; do cat "$REPO/data/default_eval.txt"; done > "$TEXT4"
if ((QUICK)); then TEXT=$TEXT1; else TEXT=$TEXT4; fi

# run_to OUT CMD...: stdout to OUT atomically; on failure OUT.err keeps stderr and the run goes on.
FAILED=0
run_to() {
  local out=$1; shift
  if "$@" > "$out.tmp" 2> "$out.err"; then
    mv "$out.tmp" "$out"
    [[ -s $out.err ]] || rm -f "$out.err"
  else
    local rc=$?
    rm -f "$out.tmp"
    FAILED=$((FAILED + 1))
    log "FAILED (exit $rc): $* -- see $out.err"
  fi
}

# ---------------------------------------------------------------------------------------------
# (f) whole processes: the seed tutorial's pipeline vs compare (issue 13, item 6)
# ---------------------------------------------------------------------------------------------
PY_MALLOC_TUNABLES=glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=17179869184
tutorial_section() {  # section (f), called at the end (or alone with --tutorial-only)
  local venv_py=${QUANTPPL_VENV:-$REPO/build/venv}/bin/python T=2 reps hf stamp r tag
  if [[ ! -x $venv_py ]] || ! "$venv_py" -c 'import transformers, sentencepiece' 2> /dev/null; then
    log "(f) skipped: $venv_py with transformers and sentencepiece not found (scripts/setup_python_env.sh)"
    return
  fi
  reps=${REPS_GIVEN:-5}
  ((QUICK)) && reps=1
  # ~1,000 and ~7,000 tokens: whole lines of the default text (1,026 and 6,916 tokens with the
  # default tokenizer; the exact counts are in the compare outputs).
  head -c 4900 "$REPO/data/default_eval.txt" | sed '$d' > "$RUN/text_1k.txt"
  { cat "$REPO/data/default_eval.txt"; head -c 11700 "$REPO/data/default_eval.txt" | sed '$d'; } > "$RUN/text_7k.txt"
  # The Hugging Face checkpoint of $FLAN's weights (checked bit-equal, and the tokenizer's ids
  # checked equal to quantppl's on both texts), rebuilt when the model or the script changes.
  hf=$FLAN.hf
  stamp=$(cat "$FLAN.stamp" "$REPO/scripts/quantppl_tools/tutorial_baseline.py" "$RUN/text_1k.txt" "$RUN/text_7k.txt" |
    sha256sum | cut -c1-16)
  if [[ -f $hf/stamp && $(cat "$hf/stamp") == "$stamp" ]]; then
    log "(f) checkpoint: cached $hf"
  else
    log "(f) checkpoint: writing $hf"
    rm -rf "$hf"
    if ! PYTHONPATH=$REPO/scripts "$venv_py" -m quantppl_tools.tutorial_baseline checkpoint "$FLAN" "$hf" \
        --check-text "$RUN/text_1k.txt" --check-text "$RUN/text_7k.txt" > /dev/null 2> "$RUN/tutorial_checkpoint.err"; then
      FAILED=$((FAILED + 1))
      log "FAILED: the tutorial checkpoint -- see $RUN/tutorial_checkpoint.err"
      return
    fi
    rm -f "$RUN/tutorial_checkpoint.err"
    echo "$stamp" > "$hf/stamp"
  fi
  tutorial() {  # OUT TEXT
    OMP_WAIT_POLICY=PASSIVE OPENBLAS_NUM_THREADS=$T GLIBC_TUNABLES=$PY_MALLOC_TUNABLES PYTHONPATH=$REPO/scripts \
      "$venv_py" -m quantppl_tools.tutorial_baseline run "$hf" "$2" --threads $T
  }
  startup() {  # OUT TEXT
    "$QUANTPPL" compare -m "$FLAN" -t "$2" --variants fp32,absmax:8,zeropoint:8 --threads $T --format json -q
  }
  timed() {  # OUT CMD...: run_to, and OUT's wall seconds (the whole process) in OUT.seconds
    local out=$1 t0 t1; shift
    t0=$(date +%s%N)
    run_to "$out.json" "$@"
    t1=$(date +%s%N)
    [[ -f $out.json ]] && awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.3f\n", (b - a) / 1e9 }' > "$out.seconds"
  }
  log "(f) untimed first runs (page cache, Python byte code)"
  run_to "$RUN/tutorial_warmup.json" tutorial - "$RUN/text_1k.txt"
  run_to "$RUN/startup_warmup.json" startup - "$RUN/text_1k.txt"
  for ((r = 1; r <= reps; r++)); do
    for tag in 1k 7k; do
      log "(f) rep $r/$reps: text $tag: tutorial pipeline, then quantppl compare ($T threads)"
      timed "$RUN/tutorial_$tag.r$r" tutorial - "$RUN/text_$tag.txt"
      timed "$RUN/startup_$tag.r$r" startup - "$RUN/text_$tag.txt"
    done
  done
}
$PY "$REPO/scripts/bench_report.py" --machine-json "$RUN/machine.json" --binary "$QUANTPPL"
cat /proc/loadavg > "$RUN/loadavg.before"
log "run directory $RUN (load average $(cut -d' ' -f1-3 /proc/loadavg))"
if ((TUTORIAL_ONLY)); then
  tutorial_section
  cat /proc/loadavg > "$RUN/loadavg.after"
  $PY "$REPO/scripts/bench_report.py" "$RUN" --json "$RUN/report.json" | tee "$RUN/report.txt"
  exit $((FAILED ? 1 : 0))
fi

# ---------------------------------------------------------------------------------------------
# (a) micro-benchmarks
# ---------------------------------------------------------------------------------------------
WANT_BENCH=(BM_CopyLinearWeights BM_FakeQuantize BM_FormatFakeQuantize BM_Hqq BM_RestoreWeights BM_Sgemm BM_JitLoad
            BM_LoadContractModel)
if [[ -x $BENCH ]] && LIST=$("$BENCH" --benchmark_list_tests 2>/dev/null); then
  missing=()
  for b in "${WANT_BENCH[@]}"; do grep -q "^$b/\|^$b\$" <<< "$LIST" || missing+=("$b"); done
  if ((${#missing[@]} == ${#WANT_BENCH[@]})); then
    log "(a) skipped: $BENCH has none of ${WANT_BENCH[*]} (an older build?)"
  else
    ((${#missing[@]})) && log "(a) note: $BENCH lacks ${missing[*]}"
    if ((QUICK)); then bargs=(--benchmark_min_time=0.05); else bargs=(--benchmark_repetitions=5 --benchmark_report_aggregates_only=true); fi
    log "(a) $BENCH ${bargs[*]}"
    if ! OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-PASSIVE} QUANTPPL_BENCH_MODEL=$FLAN \
        "$BENCH" --benchmark_format=json --benchmark_out="$RUN/bench.json" "${bargs[@]}" > "$RUN/bench.stdout" 2> "$RUN/bench.err"; then
      FAILED=$((FAILED + 1))
      log "FAILED: quantppl_bench -- see $RUN/bench.err"
    fi
    [[ -s $RUN/bench.err ]] || rm -f "$RUN/bench.err"
  fi
else
  log "(a) skipped: $BENCH is not built yet"
fi
# The GEMM rate through torch.mm (same OpenBLAS) at the start and at the end of the run: the
# report takes the best rate seen, BM_Sgemm included (other work on the machine only lowers it).
sgemm() {
  for T in 1 2; do
    log "sgemm: torch.mm at $T thread(s) ($1)"
    run_to "$RUN/sgemm_t$T.$1.json" "$PY" "$REPO/scripts/python_baseline.py" - - --threads "$T" --sgemm
  done
}
sgemm start

# ---------------------------------------------------------------------------------------------
# (b) throughput: compare vs the Python baseline, interleaved
# ---------------------------------------------------------------------------------------------
for ((r = 1; r <= REPS; r++)); do
  for B in 1 8; do
    for T in 1 2; do
      log "(b) rep $r/$REPS: compare B=$B T=$T"
      run_to "$RUN/compare_b${B}_t${T}.r$r.json" "$QUANTPPL" compare -m "$FLAN" -t "$TEXT" --variants fp32 \
        --batch-size "$B" --threads "$T" --format json -q
      # The malloc tunables were the faster Python setting here; the full run tries both once.
      mallocs=(on)
      ((!QUICK && r == 1)) && mallocs=(on off)
      for M in "${mallocs[@]}"; do
        log "(b) rep $r/$REPS: python baseline B=$B T=$T malloc tunables $M"
        run_to "$RUN/python_b${B}_t${T}.m$M.r$r.json" "$PY" "$REPO/scripts/python_baseline.py" "$FLAN" "$TEXT" \
          --batch-size "$B" --threads "$T" --malloc-tunables "$M"
      done
    done
  done
done

# ---------------------------------------------------------------------------------------------
# (c) N variants
# ---------------------------------------------------------------------------------------------
log "(c) compare with 4 variants, B=8 T=2"
run_to "$RUN/variants.json" "$QUANTPPL" compare -m "$FLAN" -t "$TEXT" --variants fp32,absmax:8,absmax:4,zeropoint:8:channel \
  --batch-size 8 --threads 2 --format json -q

# ---------------------------------------------------------------------------------------------
# (d) peak RSS, 1x and 4x text
# ---------------------------------------------------------------------------------------------
# x1 / x4: the default text and the 4x one at B=1 (compare's default batch size); x1b8: B=8;
# x1file: B=1 with the backup in a file (--backup file). static.kb: `quantppl --version`, the
# LibTorch footprint every run carries before it loads anything.
run_to "$RUN/static.out" "$TIME" -f %M -o "$RUN/static.kb" "$QUANTPPL" --version
for tag in x1 x4 x1b8 x1file; do
  text=$TEXT1; B=1; extra=()
  [[ $tag == x4 ]] && text=$TEXT4
  [[ $tag == x1b8 ]] && B=8
  [[ $tag == x1file ]] && extra=(--backup file)
  log "(d) peak RSS, text $tag, B=$B ${extra[*]}"
  run_to "$RUN/rss_$tag.json" "$TIME" -f %M -o "$RUN/rss_$tag.kb" "$QUANTPPL" compare -m "$FLAN" -t "$text" \
    --variants fp32,absmax:8 --batch-size "$B" --threads 2 --format json -q "${extra[@]}"
done

# ---------------------------------------------------------------------------------------------
# (e) T5-XL
# ---------------------------------------------------------------------------------------------
if ((XL)); then
  XLM=$CACHE/t5-xl.pt
  avail_kb=$(df -Pk "$CACHE" | awk 'NR == 2 { print $4 }')
  if [[ ! -f $XLM ]] && ((avail_kb < 13 * 1024 * 1024)); then
    log "(e) skipped: building the T5-XL model needs ~11.4 GB free in $CACHE ($((avail_kb / 1024 / 1024)) GiB free)"
  else
    ensure_model t5-xl "$XLM" xl_build
    head -c 2000 "$REPO/data/default_eval.txt" | sed '$d' > "$RUN/text_xl.txt"  # whole lines, ~450 tokens
    xargs_backup=()
    "$QUANTPPL" compare --help 2>/dev/null | grep -q -- '--backup' && xargs_backup=(--backup file)
    log "(e) compare on T5-XL ${xargs_backup[*]}"
    start=$(date +%s.%N)
    run_to "$RUN/xl.json" "$TIME" -f %M -o "$RUN/xl.kb" "$QUANTPPL" compare -m "$XLM" -t "$RUN/text_xl.txt" \
      --variants fp32,absmax:8 --batch-size 8 --threads 2 --format json -q "${xargs_backup[@]}"
    awk -v a="$start" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f\n", b - a }' > "$RUN/xl.seconds"
  fi
fi

tutorial_section
# ---------------------------------------------------------------------------------------------
# (g) early stopping: a many-variant sweep with and without --ci-target 1 (issue 13, item 3)
# ---------------------------------------------------------------------------------------------
ES_VARIANTS=fp32,absmax:8,zeropoint:8,absmax:8:channel,zeropoint:8:channel,absmax:8:group64,zeropoint:8:group64,absmax:6:channel,zeropoint:6:channel,zeropoint:6:group64
es_time() {  # tag extra-args...: wall seconds of one compare into $RUN/es_<tag>.seconds
  local tag=$1; shift
  local start
  start=$(date +%s.%N)
  run_to "$RUN/es_$tag.json" "$QUANTPPL" compare -m "$FLAN" -t "$TEXT" --variants "$ES_VARIANTS" \
    --batch-size 1 --threads 2 --format json -q "$@"
  awk -v a="$start" -v b="$(date +%s.%N)" 'BEGIN { printf "%.2f\n", b - a }' > "$RUN/es_$tag.seconds"
}
if "$QUANTPPL" compare --help 2>/dev/null | grep -q -- '--ci-target'; then
  log "(g) early stopping: 10 variants, full"
  es_time full
  log "(g) early stopping: 10 variants, --ci-target 1"
  es_time ci1 --ci-target 1
  if [[ -f $RUN/es_full.json && -f $RUN/es_ci1.json ]]; then
    $PY - "$RUN" <<'PYEOF' | tee "$RUN/early_stopping.txt"
import json, sys
run = sys.argv[1]
full, ci1 = (json.load(open(f"{run}/es_{t}.json")) for t in ("full", "ci1"))
tf, tc = (float(open(f"{run}/es_{t}.seconds").read()) for t in ("full", "ci1"))
print(f"(g) early stopping, {len(full['results'])} variants on {full['text_tokens']} tokens "
      f"({ci1['looks']} looks, z = {ci1['stop_z']:.3f}):")
print(f"    full {tf:.1f} s, --ci-target 1 {tc:.1f} s: speed-up x{tf / tc:.2f}")
for a, b in zip(full["results"], ci1["results"]):
    print(f"    {a['variant']:<22} delta_ppl_pct full {a['delta_ppl_pct']:+.3f}%  early {b['delta_ppl_pct']:+.3f}% "
          f"on {b['tokens']} tokens{' (stopped early)' if b['stopped_early'] else ''}")
PYEOF
  fi
else
  log "(g) skipped: $QUANTPPL has no --ci-target"
fi

# ---------------------------------------------------------------------------------------------
# (h) calibration: one 16,384-token activation-statistics pass (issue 15)
# ---------------------------------------------------------------------------------------------
if "$QUANTPPL" calibrate --help > /dev/null 2>&1; then
  CAL_TOKENS=$((QUICK ? 2048 : 16384))
  : > "$RUN/calibration.txt"
  for cal in default:"$REPO/models/default.pt" flan:"$FLAN"; do
    tag=${cal%%:*} model=${cal#*:}
    log "(h) calibrate $tag, $CAL_TOKENS tokens"
    start=$(date +%s.%N)
    run_to "$RUN/calibrate_$tag.out" "$TIME" -f %M -o "$RUN/calibrate_$tag.kb" "$QUANTPPL" calibrate -m "$model" \
      --calibration-tokens "$CAL_TOKENS" --threads 2 -q --force -o "$RUN/calibrate_$tag.qcal"
    secs=$(awk -v a="$start" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f\n", b - a }')
    if [[ -f $RUN/calibrate_$tag.out ]]; then
      printf '(h) calibrate %-8s %6d tokens: %6.1f s, peak RSS %5d MiB, file %d MiB\n' "$tag" "$CAL_TOKENS" "$secs" \
        $(($(cat "$RUN/calibrate_$tag.kb") / 1024)) $(($(stat -c %s "$RUN/calibrate_$tag.qcal") / 1048576)) |
        tee -a "$RUN/calibration.txt"
      rm -f "$RUN/calibrate_$tag.qcal"
    fi
  done
else
  log "(h) skipped: $QUANTPPL has no calibrate"
fi

# ---------------------------------------------------------------------------------------------
# (i) GPTQ and AWQ: calibration + every Linear layer, and the Python reference GPTQ (issues 15, 16)
# ---------------------------------------------------------------------------------------------
METHOD_BENCH=$BUILD/quantppl_method_bench
CAL_TEXT=$REPO/data/calibration.txt
if [[ ! -x $METHOD_BENCH ]]; then
  log "(i) skipped: $METHOD_BENCH is not built yet"
elif [[ ! -f $CAL_TEXT ]]; then
  log "(i) skipped: $CAL_TEXT is missing (scripts/setup.sh generates it)"
else
  CAL_TOKENS=$((QUICK ? 2048 : 16384))
  log "(i) quantppl_method_bench: calibration ($CAL_TOKENS tokens), GPTQ (natural, actorder), AWQ, 2 threads"
  run_to "$RUN/methods.json" "$METHOD_BENCH" --model "$FLAN" --calibration "$CAL_TEXT" --tokens "$CAL_TOKENS" \
    --threads 2 --spec absmax:4:group128 --stats-out "$RUN/methods.qcal"
  if [[ -f $RUN/methods.qcal ]]; then
    # The reference takes ~10x quantppl's time: --quick times it on the first encoder block only.
    ref_include=()
    ((QUICK)) && ref_include=(--include '^encoder\.block\.0\.')
    log "(i) Python reference GPTQ on the same Hessians (natural order, 2 threads) ${ref_include[*]}"
    run_to "$RUN/gptq_reference.json" "$PY" "$REPO/bench/gptq_reference_bench.py" "$FLAN" "$RUN/methods.qcal" \
      --spec absmax:4:group128 --threads 2 "${ref_include[@]}"
    rm -f "$RUN/methods.qcal"
  fi
fi

sgemm end
cat /proc/loadavg > "$RUN/loadavg.after"
$PY "$REPO/scripts/bench_report.py" "$RUN" --json "$RUN/report.json" | tee "$RUN/report.txt"
if ((FAILED)); then
  log "$FAILED step(s) failed (see *.err in $RUN)"
  exit 1
fi
