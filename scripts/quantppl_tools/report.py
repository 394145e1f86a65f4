"""Turn a sweep directory (scripts/sweep.py --out DIR) into a page that can be shared.

    scripts/report.py DIR

Writes DIR/report.html — ONE self-contained file: the plots embedded as base64 data URIs, the
results table sorted by perplexity, and the run settings (model and text with their sha256,
token count, LibTorch and quantppl versions, date, command line) — and DIR/report.md, the same
in Markdown referencing the PNGs beside it. Missing plots are regenerated from results.csv.
Both files are written to a temporary file and renamed.
"""

import base64
import html
import json
import math
import os
import re
import sys

from .sweep_plots import plot_all
from .sweep_results import EXIT_IO, EXIT_USAGE, SweepError, atomic_write, read_results

PLOTS = [
    ("ppl_vs_bits.png", "Perplexity vs bits (one line per scheme and granularity; dotted: fp32)"),
    ("ppl_vs_effective_bits.png", "Perplexity vs bits per weight, every format on one chart (scales and zero "
                                  "points included)"),
    ("agreement_vs_bits.png", "KL divergence from fp32 and top-1 agreement vs bits"),
    ("sensitivity.png", "Per-layer sensitivity"),
]
SETTINGS = [
    ("model", "model"), ("model_sha256", "model sha256"), ("text", "text"), ("text_sha256", "text sha256"),
    ("text_tokens", "text tokens"), ("windows", "windows"), ("mode", "mode"), ("max_length", "max length"),
    ("layers_quantized", "Linear layers quantized"), ("parameters_quantized", "weights quantized"),
    ("include", "include"), ("exclude", "exclude"), ("threads", "threads"),
    ("methods", "methods"), ("calibration", "calibration"),
    ("libtorch_version", "LibTorch"), ("quantppl_version", "quantppl"),
    ("started", "started"), ("updated", "last batch"), ("sweep_command", "command"),
]
# Shown in the table, in this order, when present; every other column follows.
TABLE_FIRST = ["variant", "ppl", "delta_ppl_pct", "method", "effective_bits_per_weight", "kl_mean", "top1_agreement",
               "weight_sqnr_db", "weight_mse", "ppl_stderr", "delta_nll_mean", "delta_nll_ci95", "rtn_delta_nll_mean", "rtn_delta_nll_ci95", "seconds"]
TABLE_SKIP = {"scheme", "bits", "granularity", "group_size", "range", "tokens", "nll", "calibration",
              "calibration_text", "calibration_sha256", "calibration_stats"}


def fmt(column, value):
    if value is None or value == "":
        return ""
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        if column == "delta_ppl_pct":
            return f"{value:+.2f}"
        if column in ("top1_agreement",):
            return f"{value:.4f}"
        if column in ("effective_bits_per_weight", "weight_sqnr_db", "seconds"):
            return f"{value:.2f}"
        return f"{value:.4g}"
    return str(value)


def setting_text(value):
    """A run.json setting as text: lists and objects (methods, calibration) as JSON."""
    return json.dumps(value) if isinstance(value, (list, dict)) else str(value)


def table_columns(columns):
    first = [c for c in TABLE_FIRST if c in columns]
    return first + [c for c in columns if c not in first and c not in TABLE_SKIP]


def sorted_rows(rows):
    def key(r):
        p = r.get("ppl")
        return (r["variant"] != "fp32", p if isinstance(p, (int, float)) else math.inf)
    return sorted(rows, key=key)


def load(out):
    csv_path = os.path.join(out, "results.csv")
    if not os.path.exists(csv_path):
        raise SweepError(f"{out} is not a sweep directory: no results.csv (run scripts/sweep.py --out {out})",
                               EXIT_IO)
    rows, columns = read_results(csv_path)
    run_info = {}
    if os.path.exists(os.path.join(out, "run.json")):
        with open(os.path.join(out, "run.json"), encoding="utf-8") as f:
            run_info = json.load(f)
    return rows, columns, run_info


def ensure_plots(out, rows, run_info):
    if not any(os.path.exists(os.path.join(out, name)) for name, _ in PLOTS):
        sensitivity = None
        if os.path.exists(os.path.join(out, "sensitivity.json")):
            with open(os.path.join(out, "sensitivity.json"), encoding="utf-8") as f:
                sensitivity = json.load(f)
        plot_all(out, rows, run_info, sensitivity)
    methods = sorted((n for n in os.listdir(out) if re.fullmatch(r"methods_[0-9]+bit\.png", n)),
                     key=lambda n: int(re.sub(r"[^0-9]", "", n)))
    return [(name, caption) for name, caption in PLOTS if os.path.exists(os.path.join(out, name))] + \
        [(n, f"Methods at {n[8:-7]} bits: mean delta NLL vs fp32 per format and method, 95% interval") for n in methods]


def render_html(rows, columns, run_info, plots, out):
    cols = table_columns(columns)
    e = html.escape
    parts = [
        "<!DOCTYPE html>", "<html lang=\"en\"><head><meta charset=\"utf-8\">",
        f"<title>quantppl sweep — {e(os.path.basename(str(run_info.get('model', ''))))}</title>",
        "<style>body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}"
        "table{border-collapse:collapse;font-size:13px}td,th{border:1px solid #ccc;padding:3px 7px;text-align:right}"
        "td:first-child,th:first-child{text-align:left;font-family:monospace}"
        ".settings td{text-align:left;font-family:monospace;word-break:break-all}"
        "tr.fp32{background:#eef}img{max-width:100%;border:1px solid #ddd}figure{margin:1.5em 0}</style>",
        "</head><body>",
        "<h1>quantppl sweep</h1>",
        f"<p>{len(rows)} variants; perplexity of each quantized variant of the model against the original "
        "(fp32) on the same text. Table sorted by perplexity.</p>",
        "<h2>Settings</h2><table class=\"settings\">",
    ]
    for key, label in SETTINGS:
        if run_info.get(key) not in (None, ""):
            parts.append(f"<tr><th>{e(label)}</th><td>{e(setting_text(run_info[key]))}</td></tr>")
    parts.append("</table>")
    if plots:
        parts.append("<h2>Plots</h2>")
    for name, caption in plots:
        with open(os.path.join(out, name), "rb") as f:
            data = base64.b64encode(f.read()).decode("ascii")
        parts.append(f"<figure><img alt=\"{e(caption)}\" src=\"data:image/png;base64,{data}\">"
                     f"<figcaption>{e(caption)}</figcaption></figure>")
    parts.append("<h2>Results</h2><table><tr>" + "".join(f"<th>{e(c)}</th>" for c in cols) + "</tr>")
    for r in sorted_rows(rows):
        cls = " class=\"fp32\"" if r["variant"] == "fp32" else ""
        parts.append(f"<tr{cls}>" + "".join(f"<td>{e(fmt(c, r.get(c)))}</td>" for c in cols) + "</tr>")
    parts.append("</table>")
    parts.append("<p><small>effective_bits_per_weight = 32 x packed_bytes / fp32_bytes: the quantized "
                 "Linear layers' codes, scales and zero points as quantppl compare counts them "
                 "(docs/qpack-format.md), per weight.</small></p>")
    parts.append("</body></html>\n")
    return "\n".join(parts)


def render_markdown(rows, columns, run_info, plots):
    cols = table_columns(columns)
    lines = ["# quantppl sweep", "", f"{len(rows)} variants, sorted by perplexity.", "", "## Settings", "",
             "| setting | value |", "|---|---|"]
    for key, label in SETTINGS:
        if run_info.get(key) not in (None, ""):
            value = setting_text(run_info[key]).replace("|", "\\|")
            lines.append(f"| {label} | `{value}` |")
    lines += [""]
    for name, caption in plots:
        lines += [f"![{caption}]({name})", "", f"*{caption}*", ""]
    lines += ["## Results", "", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in sorted_rows(rows):
        lines.append("| " + " | ".join(fmt(c, r.get(c)) for c in cols) + " |")
    return "\n".join(lines) + "\n"


def write_report(out):
    rows, columns, run_info = load(out)
    if not rows:
        raise SweepError(f"{out}/results.csv has no results yet", EXIT_IO)
    plots = ensure_plots(out, rows, run_info)
    html_path, md_path = os.path.join(out, "report.html"), os.path.join(out, "report.md")
    atomic_write(html_path, render_html(rows, columns, run_info, plots, out))
    atomic_write(md_path, render_markdown(rows, columns, run_info, plots))
    return [html_path, md_path]


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1 or argv[0].startswith("-"):
        print("usage: report.py DIR   (a directory written by scripts/sweep.py --out DIR)", file=sys.stderr)
        return 0 if argv and argv[0] in ("-h", "--help") else EXIT_USAGE
    try:
        for path in write_report(argv[0]):
            print(f"report: wrote {path}", file=sys.stderr)
    except SweepError as e:
        print(f"report: error: {e}", file=sys.stderr)
        return e.code
    return 0


if __name__ == "__main__":
    sys.exit(main())
