#!/usr/bin/env bash
# Installs everything quantppl needs on Debian 12, then configures and builds it.
#
# Idempotent: Debian packages already installed are not touched ('apt-get update' runs at most
# once, and only when something is missing); the CMake build is incremental.
#
#   scripts/setup.sh                 install + build (build/) on Debian's LibTorch 1.13
#   QUANTPPL_BUILD_DIR=dir scripts/setup.sh
#   QUANTPPL_SKIP_APT=1 scripts/setup.sh   build only (no root needed)
#   scripts/setup.sh --torch pip     install, then build in build-torch2/ on LibTorch 2.x from the
#                                    pinned PyPI torch wheel (scripts/setup_torch2.sh; the same as
#                                    QUANTPPL_TORCH=pip; --cpp-only after it: no Python side)
#
# Why libopenblas0-pthread: LibTorch's Debian build calls the system BLAS through the
# libblas.so.3 alternative; the default reference BLAS is ~10x slower (sgemm 6 vs 100 GFLOP/s
# on this machine kind). Installing OpenBLAS switches the alternative automatically.
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
build_dir="${QUANTPPL_BUILD_DIR:-$repo_root/build}"

# Which LibTorch: "debian" (1.13, the default) or "pip" (2.x from PyPI's torch wheel).
torch_line="${QUANTPPL_TORCH:-debian}"
torch2_args=()
while [ $# -gt 0 ]; do
  case "$1" in
    --torch) [ $# -ge 2 ] || { echo "setup: --torch needs a value: debian or pip" >&2; exit 2; }
             torch_line="$2"; shift 2 ;;
    --torch=*) torch_line="${1#--torch=}"; shift ;;
    --cpp-only) torch2_args+=(--cpp-only); shift ;;
    *) echo "setup: unknown argument '$1' (expected --torch debian|pip, --cpp-only)" >&2; exit 2 ;;
  esac
done
case "$torch_line" in
  debian) [ ${#torch2_args[@]} -eq 0 ] || { echo "setup: --cpp-only goes with --torch pip" >&2; exit 2; } ;;
  pip) ;;
  *) echo "setup: --torch must be debian or pip, got '$torch_line'" >&2; exit 2 ;;
esac

packages=(
  # toolchain
  g++ cmake ninja-build pkg-config git
  # C++ dependencies
  libtorch-dev libopenblas0-pthread libsentencepiece-dev libcli11-dev
  libgtest-dev libgmock-dev libbenchmark-dev nlohmann-json3-dev libfmt-dev libre2-dev
  # byte-level BPE tokenizers: pre-tokenizer regexes (PCRE2) and NFC normalization (ICU)
  libpcre2-dev libicu-dev
  # SHA-256 (OpenSSL libcrypto) and the archive CRC-32 / bounded inflate (zlib)
  libssl-dev zlib1g-dev
  # Python side: the exporter, the parity and reference tests, the sweep plots
  python3 python3-torch python3-numpy python3-sentencepiece python3-venv python3-pytest
  python3-matplotlib
  # the default calibration text is generated from the installed Python documentation (data/README.md)
  python3.11-doc
  # distributed sweeps (scripts/sweep.py --scheduler, docs/sweep.md): Dask's scheduler and workers
  python3-distributed
  # fuzzing (scripts/fuzz.sh): clang with libFuzzer and the sanitizer runtimes
  clang-14 libclang-rt-14-dev
)

if [ "${QUANTPPL_SKIP_APT:-0}" != 1 ]; then
  missing=()
  for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    echo "setup: installing ${missing[*]}"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
  fi
fi

# The default calibration text (data/calibration.txt) is prose extracted from the Python
# documentation where Debian's python3.11-doc installs it: generated here, never committed. Both
# LibTorch lines need it (the CLI's default --calibration, the C++ suite).
if [ ! -s "$repo_root/data/calibration.txt" ]; then
  PYTHONPATH="$repo_root/scripts" /usr/bin/python3 "$repo_root/scripts/make_calibration_text.py" "$repo_root/data/calibration.txt"
fi

if [ "$torch_line" = pip ]; then
  exec "$repo_root/scripts/setup_torch2.sh" "${torch2_args[@]}"
fi

# The venv (transformers pinned for torch 1.13) used by the parity tests.
QUANTPPL_VENV="${QUANTPPL_VENV:-$build_dir/venv}" "$repo_root/scripts/setup_python_env.sh"

# QUANTPPL_UNITY_TESTS=ON|OFF: quantppl_tests as a unity build or not (CMakeLists.txt; unset: as
# the build directory was configured, OFF for a new one). scripts/test.sh sets ON for a new one.
cmake_args=(-S "$repo_root" -B "$build_dir" -G Ninja -DCMAKE_BUILD_TYPE=Release)
[ -z "${QUANTPPL_UNITY_TESTS:-}" ] || cmake_args+=(-DQUANTPPL_UNITY_TESTS="$QUANTPPL_UNITY_TESTS")
cmake "${cmake_args[@]}"
cmake --build "$build_dir" -j "$(nproc)"
echo "setup: built $build_dir/quantppl"
