#!/usr/bin/env bash
# The perplexity regression gate (a CTest test): the default model on the default text must give
# the perplexities in expected.json, within its tolerance. Re-baseline with scripts/rebaseline.sh.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
bin="${QUANTPPL_BIN:?QUANTPPL_BIN must name the quantppl binary}"
exec "$bin" compare --check "$here/expected.json" --threads 1 --batch-size 8 --quiet
