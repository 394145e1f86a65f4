#!/usr/bin/env bash
# Builds quantppl against LibTorch 2.x from the PyPI torch wheel (README "Using PyTorch 2.x"),
# next to the default build on Debian's LibTorch 1.13 (scripts/setup.sh), which it leaves alone.
#
# 1. A venv (no system site packages: Debian's torch 1.13 must stay out) with the pinned wheel and
#    only what it needs: scripts/requirements/torch2-libtorch.txt (torch + the two CUDA runtime
#    libraries libtorch_cpu.so loads) and, unless --cpp-only, torch2-python.txt (what
#    `import torch` loads, numpy, sentencepiece, transformers 5.x, pytest: the exporter, the test
#    fixtures and the parity tests). Both are locks installed with --no-deps.
# 2. CMake in build-torch2/ with -DQUANTPPL_TORCH_DIR=<venv>/.../site-packages/torch
#    (cmake/torch_discovery.cmake: links libtorch_cpu.so + libc10.so of the wheel, C++20, fmt from
#    the wheel's headers, header-only), then the CLI and the GoogleTest binary.
# 3. Checks that the result is what it claims: ldd resolves libtorch_cpu/libc10 into the wheel and
#    finds no Debian libtorch/libc10/libfmt and no libtorch_cuda; no translation unit read a
#    header of Debian's LibTorch or fmt (ninja's dependency log).
#
# Caching (the wheels are ~2.6 GB, ~0.5 GB for --cpp-only): the downloaded wheels are kept in
# $QUANTPPL_WHEEL_CACHE (default ~/.cache/quantppl/wheels; pip's own HTTP cache does not keep
# them, the index sends no caching headers), and the venv itself lives in
# ~/.cache/quantppl/torch2-venv-<hash of the two locks> (build-torch2/venv links to it), so a
# fresh clone on the same machine reuses it. A venv is only ever renamed into place complete.
#
#   scripts/setup_torch2.sh                 venv + build-torch2/ (quantppl, quantppl_tests)
#   scripts/setup_torch2.sh --cpp-only      LibTorch only: no Python torch, no tests needing it
#   scripts/setup_torch2.sh --venv-only     the venv only (to export with torch 2.x), no build
#   scripts/setup.sh --torch pip            the same, after the Debian packages (apt)
# Environment: QUANTPPL_TORCH2_BUILD_DIR (build-torch2), QUANTPPL_TORCH2_VENV (a venv path of
# your own instead of the cached one), QUANTPPL_WHEEL_CACHE, QUANTPPL_JOBS (build jobs, nproc),
# QUANTPPL_TORCH2_TARGETS (default "quantppl_cli quantppl_tests"; "all" for everything),
# QUANTPPL_TORCH2_UNITY (1: a unity build, the default; 0: one translation unit per source).
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
build_dir="${QUANTPPL_TORCH2_BUILD_DIR:-$repo_root/build-torch2}"
wheels="${QUANTPPL_WHEEL_CACHE:-$HOME/.cache/quantppl/wheels}"
jobs="${QUANTPPL_JOBS:-$(nproc)}"
read -r -a targets <<<"${QUANTPPL_TORCH2_TARGETS:-quantppl_cli quantppl_tests}"
py=/usr/bin/python3

cpp_only=0
venv_only=0
for arg in "$@"; do
  case "$arg" in
    --cpp-only) cpp_only=1 ;;
    --venv-only) venv_only=1 ;;
    *) echo "setup_torch2: unknown argument '$arg' (expected --cpp-only, --venv-only)" >&2; exit 2 ;;
  esac
done

locks=("$repo_root/scripts/requirements/torch2-libtorch.txt")
[ "$cpp_only" = 1 ] || locks+=("$repo_root/scripts/requirements/torch2-python.txt")

log() { echo "setup_torch2: $*"; }
t_start=$SECONDS

# Python >= 3.11 (torch 2.15 wheels), with venv.
if ! "$py" -c 'import sys, venv; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
  echo "setup_torch2: error: $py must be Python >= 3.11 with the venv module (apt-get install python3-venv)" >&2
  exit 1
fi

# ---- 1. the venv ----
if [ -n "${QUANTPPL_TORCH2_VENV:-}" ]; then
  venv="$QUANTPPL_TORCH2_VENV"
else
  hash="$(cat "${locks[@]}" | sha256sum | cut -c1-12)"
  venv="$HOME/.cache/quantppl/torch2-venv-$hash"
fi

# The pins of the locks, as "name==version" lines without comments.
pins() { grep -hv '^\s*#' "${locks[@]}" | sed 's/\s*#.*//' | grep -v '^\s*$'; }

# True when every pin is installed at its version (no import: `import torch` alone takes seconds).
venv_complete() {
  [ -x "$1/bin/python" ] || return 1
  pins | "$1/bin/python" -c '
import sys, importlib.metadata as md
bad = []
for line in sys.stdin:
    name, want = line.strip().split("==")
    try:
        have = md.version(name)
    except md.PackageNotFoundError:
        have = None
    if have != want:
        bad.append("%s (want %s, have %s)" % (name, want, have))
if bad:
    print("setup_torch2: venv differs from the lock: " + ", ".join(bad[:5]), file=sys.stderr)
    sys.exit(1)
'
}

pip_install() {  # venv_dir
  local vpy="$1/bin/python"
  local -a args=(--disable-pip-version-check --no-input --no-deps)
  mkdir -p "$wheels"
  # Offline from the wheel cache when every wheel is there; otherwise download what is missing.
  if ! "$vpy" -m pip install "${args[@]}" --quiet --no-index --find-links "$wheels" "${locks[@]/#/-r}" 2>/dev/null; then
    local t0=$SECONDS
    log "downloading wheels into $wheels"
    "$vpy" -m pip download --disable-pip-version-check --no-input --no-deps --progress-bar off \
      -d "$wheels" "${locks[@]/#/-r}" | grep -E '^(Saved|Successfully)' || true
    log "download: $((SECONDS - t0)) s"
    "$vpy" -m pip install "${args[@]}" --quiet --no-index --find-links "$wheels" "${locks[@]/#/-r}"
  fi
}

t0=$SECONDS
if venv_complete "$venv" 2>/dev/null; then
  log "venv $venv is up to date"
else
  if [ -n "${QUANTPPL_TORCH2_VENV:-}" ]; then
    [ -x "$venv/bin/python" ] || "$py" -m venv "$venv"
    pip_install "$venv"
  else
    # Built beside its final place and renamed when complete: an interrupted run leaves no
    # half-made venv that a later run would trust. (Nothing here uses the venv's bin/ scripts,
    # whose shebangs name the temporary path; only bin/python, a symlink to $py.)
    tmp="$venv.tmp.$$"
    rm -rf "$tmp"
    mkdir -p "$(dirname "$venv")"
    "$py" -m venv "$tmp"
    trap 'rm -rf "$tmp"' EXIT
    log "installing $(pins | wc -l) pinned packages into a new venv"
    pip_install "$tmp"
    venv_complete "$tmp"
    rm -rf "$venv"
    mv "$tmp" "$venv"
    trap - EXIT
  fi
  venv_complete "$venv"
fi
vpy="$venv/bin/python"
log "venv: $((SECONDS - t0)) s"

mkdir -p "$build_dir"
if [ -z "${QUANTPPL_TORCH2_VENV:-}" ]; then
  if [ -e "$build_dir/venv" ] && [ ! -L "$build_dir/venv" ]; then
    echo "setup_torch2: error: $build_dir/venv is a directory, not the link to $venv; remove it" >&2; exit 1
  fi
  ln -sfn "$venv" "$build_dir/venv"
  venv="$build_dir/venv"
  vpy="$venv/bin/python"
fi
torch_dir="$("$vpy" -c 'import importlib.util as u; print(u.find_spec("torch").submodule_search_locations[0])')"

if [ "$cpp_only" = 0 ]; then
  # Smoke check: what the exporter and the parity tests import loads together.
  "$vpy" - <<'PY'
import numpy, sentencepiece, transformers, tokenizers, safetensors, pytest, torch
from transformers import T5Config, T5ForConditionalGeneration
assert torch.__version__.startswith("2."), torch.__version__
print("setup_torch2: python ok: torch %s (C++11 ABI %s), numpy %s, transformers %s"
      % (torch.__version__, torch._C._GLIBCXX_USE_CXX11_ABI, numpy.__version__, transformers.__version__))
PY
fi

if [ "$venv_only" = 1 ]; then
  log "venv ready: $venv (--venv-only: no build)"
  exit 0
fi

# The default calibration text (the CLI's default --calibration, the C++ suite), as scripts/setup.sh
# makes it, when this script runs alone.
if [ ! -s "$repo_root/data/calibration.txt" ]; then
  PYTHONPATH="$repo_root/scripts" "$py" "$repo_root/scripts/make_calibration_text.py" "$repo_root/data/calibration.txt"
fi

# ---- 2. CMake ----
t0=$SECONDS
cmake_args=(-S "$repo_root" -B "$build_dir" -G Ninja -DCMAKE_BUILD_TYPE=Release
  -DQUANTPPL_TORCH_DIR="$torch_dir" -DQUANTPPL_BUILD_BENCHMARKS=OFF)
# A unity build (cmake/unity_build.cmake): the same code in fewer translation units, each paying
# LibTorch 2.x's C++20 templates once. QUANTPPL_TORCH2_UNITY=0 for one translation unit per source
# (quicker rebuilds after editing one file).
if [ "${QUANTPPL_TORCH2_UNITY:-1}" = 1 ]; then
  cmake_args+=(-DCMAKE_UNITY_BUILD=ON -DCMAKE_UNITY_BUILD_BATCH_SIZE=8
    -DCMAKE_PROJECT_INCLUDE="$repo_root/cmake/unity_build.cmake")
else
  cmake_args+=(-DCMAKE_UNITY_BUILD=OFF -DCMAKE_PROJECT_INCLUDE=)
fi
if [ "$cpp_only" = 1 ]; then
  cmake_args+=(-DQUANTPPL_BUILD_TESTS=OFF)  # the tests' fixtures need the Python torch
  targets=(quantppl_cli)
else
  cmake_args+=(-DQUANTPPL_BUILD_TESTS=ON)
fi
if ! cmake "${cmake_args[@]}" >"$build_dir/configure.log" 2>&1; then
  cat "$build_dir/configure.log" >&2; exit 1
fi
grep -E '^-- quantppl:|Warning' "$build_dir/configure.log" || true
if [ "${targets[*]}" = all ]; then targets=(); fi
cmake --build "$build_dir" -j "$jobs" ${targets[@]:+--target "${targets[@]}"}
log "build: $((SECONDS - t0)) s"

# ---- 3. checks ----
bin="$build_dir/quantppl"
libs="$(ldd "$bin")"
torch_real="$(readlink -f "$torch_dir")"
for lib in libtorch_cpu.so libc10.so; do
  where="$(awk -v l="$lib" '$1 == l { print $3 }' <<<"$libs")"
  if [ -z "$where" ] || [ "$(readlink -f "$(dirname "$where")")" != "$torch_real/lib" ]; then
    echo "setup_torch2: error: $bin loads $lib from '${where:-nowhere}', expected $torch_real/lib" >&2; exit 1
  fi
done
if grep -E 'not found|libtorch_cuda|/usr/lib/[^ ]*/(libtorch|libc10|libfmt)' <<<"$libs"; then
  echo "setup_torch2: error: $bin links a library it must not (above)" >&2; exit 1
fi
# Every header a translation unit read, from ninja's dependency log: none of Debian's LibTorch or fmt.
if ninja -C "$build_dir" -t deps | grep -E '^\s+/usr/include/(torch|ATen|c10|caffe2|fmt)/' | sort -u | head -5 | grep .; then
  echo "setup_torch2: error: headers of Debian's LibTorch or fmt were compiled into the 2.x build (above)" >&2; exit 1
fi
log "ok: $bin on LibTorch $("$vpy" -c 'import importlib.metadata as m; print(m.version("torch"))') ($torch_real) in $((SECONDS - t_start)) s"
