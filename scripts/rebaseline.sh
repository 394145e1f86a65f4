#!/usr/bin/env bash
# Recomputes the perplexity regression baseline (tests/regression/expected.json): the default
# model on the default text for the gated variants, printed as old -> new, then written.
#
#   scripts/rebaseline.sh            # after an intended change; commit the new file with it
#   QUANTPPL_BIN=path/to/quantppl scripts/rebaseline.sh
#
# The gate runs with --threads 1 and --batch-size 8 (tests/regression/run_gate.sh): the same
# settings here keep float summation order, and so the baseline, reproducible.
set -euo pipefail
repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bin="${QUANTPPL_BIN:-$repo_root/build/quantppl}"
expected="$repo_root/tests/regression/expected.json"
variants="fp32,absmax:8,zeropoint:8,absmax:4:group64,zeropoint:4:group64"
# 0.01%: far above run-to-run float noise (~1e-6 relative), far below the smallest real effect
# the gate must see (8-bit per-tensor quantization moves the default model by ~0.05%).
tolerance_pct=0.01

[ -x "$bin" ] || { echo "rebaseline: $bin not found; run scripts/setup.sh first" >&2; exit 1; }
new_json="$(mktemp)"
trap 'rm -f "$new_json"' EXIT
"$bin" compare --variants "$variants" --threads 1 --batch-size 8 --format json --quiet --output "$new_json" --force

/usr/bin/python3 - "$expected" "$new_json" "$tolerance_pct" <<'PY'
import json, os, sys, tempfile
expected_path, new_path, tolerance = sys.argv[1], sys.argv[2], float(sys.argv[3])
new = json.load(open(new_path))
old = {}
if os.path.exists(expected_path):
    old = {v["variant"]: v["ppl"] for v in json.load(open(expected_path))["variants"]}
print("%-22s %14s %14s %10s" % ("variant", "old ppl", "new ppl", "change"))
for r in new["results"]:
    o = old.get(r["variant"])
    change = "" if o is None else "%+.4f%%" % (100 * (r["ppl"] / o - 1))
    print("%-22s %14s %14.6f %10s" % (r["variant"], "-" if o is None else "%.6f" % o, r["ppl"], change))
out = {
    "format_version": 1,
    "description": "Perplexity of models/default.pt on data/default_eval.txt, made by scripts/rebaseline.sh "
                   "(compare --threads 1 --batch-size 8); checked by tests/regression/run_gate.sh.",
    "model_sha256": new["model_sha256"],
    "text_sha256": new["text_sha256"],
    "tolerance_pct": tolerance,
    "variants": [{"variant": r["variant"], "ppl": r["ppl"]} for r in new["results"]],
}
fd, tmp = tempfile.mkstemp(dir=os.path.dirname(expected_path))
with os.fdopen(fd, "w") as f:
    json.dump(out, f, indent=2)
    f.write("\n")
os.replace(tmp, expected_path)
print("wrote", expected_path)
PY
