"""The README's methods table: RTN, AWQ, HQQ, GPTQ and AWQ+GPTQ side by side on one model and text,
at the given bit widths and granularities of the zero-point grid (the one grid every method applies
to: HQQ optimises a zero point), from one `quantppl compare` run.

    scripts/methods_table.py [--bin build/quantppl] [--model M] [--text T] [--bits 3,4]
                             [--granularities group64,group128,channel] [--calibration-tokens N]
                             [--json OUT.json]

Prints a Markdown table: perplexity ± stderr, the paired dNLL/token against fp32 and against the same
grid's RTN (each with its 95% interval), KL mean and p99, top-1 agreement, bits per weight, and the
seconds each method took to choose its weights (method_seconds; the calibration pass, shared by AWQ
and GPTQ, is printed once below the table). Every number is the CLI's own output.
"""

import argparse
import json
import os
import subprocess
import sys

from .paths import REPO

METHODS = ["", "+awq", "+hqq", "+gptq", "+awq+gptq"]


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--bin", default=os.environ.get("QUANTPPL_BIN", os.path.join(REPO, "build", "quantppl")))
    p.add_argument("--model")
    p.add_argument("--text")
    p.add_argument("--bits", default="3,4")
    p.add_argument("--granularities", default="group64,group128,channel")
    p.add_argument("--calibration-tokens", type=int)
    p.add_argument("--calibration-stats")
    p.add_argument("--json", help="also keep compare's JSON here")
    a = p.parse_args()
    variants = ["fp32"] + [f"zeropoint:{b}:{g}{m}" for b in a.bits.split(",") for g in a.granularities.split(",")
                           for m in METHODS]
    cmd = [a.bin, "compare", "--variants", ",".join(variants), "--format", "json", "--quiet"]
    for flag, value in (("--model", a.model), ("--text", a.text), ("--calibration-tokens", a.calibration_tokens),
                        ("--calibration-stats", a.calibration_stats)):
        if value is not None:
            cmd += [flag, str(value)]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"methods_table: quantppl failed ({r.returncode}): {r.stderr.strip()}")
    j = json.loads(r.stdout)
    if a.json:
        with open(a.json, "w") as f:
            f.write(r.stdout)
    print("| variant | method | perplexity | dNLL vs fp32 (95% CI) | dNLL vs RTN (95% CI) | KL mean | KL p99 "
          "| top-1 | bits/w | seconds |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for row in j["results"]:
        vs_rtn = ("%+.4f ± %.4f" % (row["rtn_delta_nll_mean"], row["rtn_delta_nll_ci95"])
                  if row["rtn_delta_nll_mean"] is not None else "")
        print("| `%s` | %s | %.2f ± %.2f | %+.4f ± %.4f | %s | %.4f | %.3f | %.1f%% | %.3g | %.2f |" % (
            row["variant"], row["method"], row["ppl"], row["ppl_stderr"], row["delta_nll_mean"],
            row["delta_nll_ci95"], vs_rtn, row["kl_mean"], row["kl_p99"], 100 * row["top1_agreement"],
            row["bits_per_weight"], row["method_seconds"]))
    cal = next((row["calibration"] for row in j["results"] if row["calibration"]), None)
    print()
    print(f"{j['text_tokens']} tokens of {os.path.basename(j['text'])}; model {os.path.basename(j['model'])}; "
          f"calibration: {j['calibration_seconds']:.1f} s" +
          (f", {cal['tokens']} tokens of {os.path.basename(cal['text'])} (mode {cal['mode']})" if cal else ""))


if __name__ == "__main__":
    main()
