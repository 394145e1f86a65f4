#!/usr/bin/env bash
# Creates (idempotently) the Python virtual environment of quantppl's model pipeline.
#
# The venv sees Debian's system packages (--system-site-packages) because torch comes from
# Debian's python3-torch (1.13): the exported TorchScript must be written by the same torch
# version as the LibTorch the C++ side links. On top of it we pip-install a pinned
# transformers (only the parity tests and the default-model training need it), pytest when
# Debian's python3-pytest is missing, and this checkout's scripts/quantppl_tools package,
# editable (scripts/README.md): no copy, no dependencies, no build isolation, so that step needs
# no network.
#
# Needs (apt): python3-venv python3-torch python3-sentencepiece (python3-numpy comes with torch).
# Usage: scripts/setup_python_env.sh            (venv at build/venv)
#        QUANTPPL_VENV=/some/dir scripts/setup_python_env.sh
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${QUANTPPL_VENV:-$repo_root/build/venv}"
py=/usr/bin/python3

# transformers 4.46.x is the last line that supports torch 1.13. Its dependencies are pinned
# to versions checked to install and import next to torch 1.13 / numpy 1.24 on Debian 12.
pins=(
  "transformers==4.46.3"
  "tokenizers==0.20.3"
  "safetensors==0.4.5"
  "huggingface_hub==0.26.5"
  # The number formats' reference tests (tests/python/test_formats_reference.py): ml_dtypes' FP4/FP6/
  # FP8/E8M0 casts and gguf-py's numpy q8_0..q5_1 (both install next to numpy 1.24).
  "ml_dtypes==0.5.1"
  "gguf==0.17.1"
)
# hqq, for tests/reference/hqq_reference.py only (HQQ's optimiser as the package runs it), goes
# into its own directory beside the venv, without its dependencies: of hqq only hqq.core.optimize
# (torch + numpy) is imported, its declared requirements (accelerate, transformers>=4.36,
# termcolor, ...) would pull a newer torch over Debian's, and on the venv's path transformers
# would find it and import hqq.core.quantize (which needs termcolor) when loading T5.
# The tests run the reference with PYTHONPATH=$venv/hqq.
hqq_pin="hqq==0.2.8.post1"

if [ ! -x "$py" ]; then
  echo "error: $py not found; install Debian's python3 (apt-get install python3)" >&2; exit 1
fi
for mod in venv torch sentencepiece; do
  if ! "$py" -c "import $mod" 2>/dev/null; then
    pkg="python3-$mod"
    echo "error: $py cannot import '$mod'; install it with: apt-get install $pkg" >&2; exit 1
  fi
done

if [ ! -x "$venv/bin/python" ]; then
  echo "creating venv at $venv"
  "$py" -m venv --system-site-packages "$venv"
fi
vpy="$venv/bin/python"

need=()
for pin in "${pins[@]}"; do
  name="${pin%%==*}"; want="${pin##*==}"
  have="$("$vpy" -c "import importlib.metadata as m; print(m.version('$name'))" 2>/dev/null || true)"
  [ "$have" = "$want" ] || need+=("$pin")
done
# pytest: Debian's python3-pytest when installed, else the version these tests were run with.
if ! "$vpy" -c "import pytest" 2>/dev/null; then need+=("pytest==9.2.0"); fi

if [ "${#need[@]}" -gt 0 ]; then
  echo "pip-installing: ${need[*]}"
  # numpy must stay Debian's 1.24 (torch 1.13 is built against numpy 1.x); the pins above do
  # not ask for a newer one, and --upgrade-strategy only-if-needed keeps system packages.
  "$vpy" -m pip install --disable-pip-version-check --no-input --upgrade-strategy only-if-needed "${need[@]}"
fi

hqq_dir="$venv/hqq"
have_hqq="$(PYTHONPATH="$hqq_dir" "$vpy" -c "import importlib.metadata as m; print(m.version('hqq'))" 2>/dev/null || true)"
if [ "$have_hqq" != "${hqq_pin##*==}" ]; then
  echo "pip-installing $hqq_pin (no dependencies) into $hqq_dir"
  rm -rf "$hqq_dir"
  "$vpy" -m pip install --disable-pip-version-check --no-input --quiet --no-deps --target "$hqq_dir" "$hqq_pin"
fi
PYTHONPATH="$hqq_dir" "$vpy" -c "import hqq.core.optimize"

# The package, editable from this checkout (re-pointed when the venv was made by another one).
pkg_dir="$("$vpy" -c 'import os, quantppl_tools; print(os.path.dirname(os.path.dirname(quantppl_tools.__file__)))' 2>/dev/null || true)"
if [ "$pkg_dir" != "$repo_root/scripts" ]; then
  echo "installing quantppl_tools (editable) from $repo_root/scripts"
  "$vpy" -m pip install --disable-pip-version-check --no-input --quiet --no-deps --no-build-isolation \
    -e "$repo_root/scripts"
fi

# Smoke check: everything the pipeline imports loads together.
"$vpy" - <<'PY'
import torch, numpy, sentencepiece, transformers, tokenizers, safetensors, huggingface_hub, pytest, ml_dtypes, gguf
import quantppl_tools.export, quantppl_tools.sweep, quantppl_tools.train
from transformers import T5Config, T5ForConditionalGeneration
assert numpy.__version__.startswith("1."), numpy.__version__
print("venv ok: torch %s, numpy %s, transformers %s, tokenizers %s, safetensors %s, huggingface_hub %s"
      % (torch.__version__, numpy.__version__, transformers.__version__, tokenizers.__version__,
         safetensors.__version__, huggingface_hub.__version__))
PY
echo "venv python: $vpy"
