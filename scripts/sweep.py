#!/usr/bin/python3
"""Sweep a grid of quantization variants with `quantppl compare` and plot the results.

    scripts/sweep.py --out sweeps/default                      # the full grid on the default model/text
    scripts/sweep.py --out sweeps/quick --schemes absmax --bits 4,8 --granularities tensor,group64 \
        --ranges minmax --report
    scripts/sweep.py --out sweeps/mine --variants absmax:4:channel:mse,zeropoint:3:group32

The grid is schemes x bits x granularities x ranges (variant grammar: README.md). fp32 is always
evaluated, first, once; every delta is against that row. Variants run in batches of
--batch-variants in ONE `quantppl compare --format json --quiet` call each, so the model is loaded
and the text tokenized once per batch. After every batch DIR/results.csv is rewritten (temporary
file + rename: a kill never leaves half a row), so an interrupted sweep resumes where it stopped:
rerunning the same command skips every variant already in results.csv (--fresh starts over).

Outputs in DIR: results.csv (one row per variant), run.json (settings of the run), raw/ (the JSON
of every compare call), PNG plots, and with --report report.html + report.md (scripts/report.py).

Effective bits per weight (column effective_bits_per_weight): the storage a variant needs per
quantized weight, codes plus quantization parameters. Over the quantized Linear layers l, each
with an out_l x in_l weight (N_l = out_l * in_l elements) split into blocks_l blocks that each
carry one fp32 scale (32 bits) and, for zeropoint, one 8-bit zero point (codes are <= 8 bits, so
z in [0, 2^b - 1] fits a byte; absmax has z = 0 and stores none):

    effective_bits = (sum_l N_l * b + sum_l blocks_l * (32 + z_bits)) / sum_l N_l
    blocks_l = 1 (tensor) | out_l (channel) | N_l / G (groupG);   z_bits = 0 absmax, 8 zeropoint

i.e. ~b (tensor), b + (32 + z_bits) / in (channel), b + (32 + z_bits) / G (group). The shapes are
read exactly from the TorchScript model (torch.jit.load, modules whose original_name is Linear,
the same --include/--exclude selection); without torch, --in-features N assumes every layer has
N inputs (only channel needs it). fp32 is 32.

Exit codes: 0 done; 2 usage error (bad flag, grid or variant spec); 4 missing binary or unwritable
DIR; 130 interrupted (rerun to resume); a failing `quantppl` call passes its own code through.
"""

import argparse
import csv
import datetime
import io
import json
import math
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_BIN = os.environ.get("QUANTPPL_BIN") or os.path.join(REPO, "build", "quantppl")

SCHEMES = ("absmax", "zeropoint")
DEFAULT_GRANULARITIES = "tensor,channel,group32,group64,group128"
DEFAULT_RANGES = "minmax,p99.9,p99.99,mse"
SCALE_BITS = 32  # one fp32 scale per block
ZERO_POINT_BITS = 8  # one integer zero point per block (zeropoint only): codes have <= 8 bits

# Columns every results.csv has, in this order; metric fields of the CLI's JSON that are not
# listed here (kl_mean, top1_agreement, ppl_stderr, ... as the CLI grows) follow, in its order.
BASE_COLUMNS = ["variant", "scheme", "bits", "granularity", "group_size", "range", "ppl", "nll", "tokens",
                "delta_ppl_pct", "weight_mse", "weight_sqnr_db", "seconds", "effective_bits_per_weight"]
# Settings recorded in run.json; a resumed sweep must match them.
PINNED_SETTINGS = ["model_sha256", "text_sha256", "mode", "max_length", "include", "exclude"]

EXIT_USAGE, EXIT_IO, EXIT_INTERRUPTED = 2, 4, 130


class SweepError(Exception):
    """A user-facing error: printed as one line, exits with `code`."""

    def __init__(self, message, code=EXIT_USAGE):
        super().__init__(message)
        self.code = code


def log(message):
    print(message, file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------
# Variant specs


VARIANT_RE = re.compile(r"^(absmax|zeropoint):([0-9]+)(?::(tensor|channel|group[0-9]+))?(?::(minmax|mse|p[0-9.]+))?$")


def canonical_variant(spec):
    """'absmax:4' -> 'absmax:4:tensor:minmax'; 'fp32' stays. SweepError for anything else."""
    spec = spec.strip()
    if spec == "fp32":
        return spec
    m = VARIANT_RE.match(spec)
    if not m:
        raise SweepError(f"bad variant spec '{spec}': expected fp32 | SCHEME:BITS[:GRANULARITY[:RANGE]] with "
                         "SCHEME absmax|zeropoint, BITS 2..8, GRANULARITY tensor|channel|groupN, RANGE minmax|pP|mse")
    scheme, bits, gran, rng = m.group(1), int(m.group(2)), m.group(3) or "tensor", m.group(4) or "minmax"
    if not 2 <= bits <= 8:
        raise SweepError(f"bad variant spec '{spec}': bits must be in [2, 8], got {bits}")
    if gran.startswith("group") and int(gran[5:]) < 1:
        raise SweepError(f"bad variant spec '{spec}': group size must be >= 1")
    if rng.startswith("p"):
        try:
            p = float(rng[1:])
        except ValueError:
            raise SweepError(f"bad variant spec '{spec}': percentile must be a number, e.g. p99.9") from None
        if not 0 < p <= 100:
            raise SweepError(f"bad variant spec '{spec}': percentile must be in (0, 100], got {rng[1:]}")
    return f"{scheme}:{bits}:{gran}:{rng}"


def variant_fields(variant):
    """The parsed columns of a canonical variant."""
    if variant == "fp32":
        return {"scheme": "fp32", "bits": 32, "granularity": "", "group_size": None, "range": ""}
    scheme, bits, gran, rng = variant.split(":")
    group_size = int(gran[5:]) if gran.startswith("group") else None
    return {"scheme": scheme, "bits": int(bits), "granularity": "group" if group_size else gran,
            "group_size": group_size, "range": rng}


def parse_list(flag, text):
    items = [x.strip() for x in text.split(",") if x.strip()]
    if not items:
        raise SweepError(f"{flag}: empty list")
    return items


def parse_bits(text):
    bits = []
    for item in parse_list("--bits", text):
        m = re.fullmatch(r"([0-9]+)(?:-([0-9]+))?", item)
        if not m:
            raise SweepError(f"--bits: expected numbers or ranges like 2-8 or 2,4,8, got '{item}'")
        lo, hi = int(m.group(1)), int(m.group(2) or m.group(1))
        if not (2 <= lo <= hi <= 8):
            raise SweepError(f"--bits: bits must be in [2, 8], got '{item}'")
        bits.extend(b for b in range(lo, hi + 1) if b not in bits)
    return bits


def build_grid(args):
    """The canonical variants of the sweep, fp32 first, without duplicates."""
    if args.variants:
        specs = [canonical_variant(v) for v in parse_list("--variants", args.variants)]
    else:
        schemes = parse_list("--schemes", args.schemes)
        for s in schemes:
            if s not in SCHEMES:
                raise SweepError(f"--schemes: expected absmax and/or zeropoint, got '{s}'")
        bits = parse_bits(args.bits)
        grans = parse_list("--granularities", args.granularities)
        ranges = parse_list("--ranges", args.ranges)
        specs = [canonical_variant(f"{s}:{b}:{g}:{r}") for s in schemes for g in grans for r in ranges for b in bits]
    grid = ["fp32"]
    for spec in specs:
        if spec not in grid:
            grid.append(spec)
    return grid


# ---------------------------------------------------------------------------------------------
# Layer shapes and effective bits per weight


def linear_shapes(model_path, include, exclude):
    """[(name, out_features, in_features)] of the Linear layers quantppl would quantize, or None
    (with a message) when torch cannot read the model."""
    try:
        import torch  # noqa: deferred: only for the shapes
    except ImportError:
        log("sweep: note: torch is not importable; channel overhead uses --in-features")
        return None
    try:
        module = torch.jit.load(model_path, map_location="cpu")
    except Exception as e:  # a model the CLI can read but torch here cannot: not fatal
        log(f"sweep: note: cannot read layer shapes from {model_path} ({str(e).splitlines()[0]}); "
            "channel overhead uses --in-features")
        return None
    shapes, seen = [], set()
    for name, sub in module.named_modules():
        if getattr(sub, "original_name", "") != "Linear":
            continue
        if include and not re.search(include, name):
            continue
        if exclude and re.search(exclude, name):
            continue
        w = sub.weight
        if w.data_ptr() in seen:  # an aliased (tied) weight is quantized once
            continue
        seen.add(w.data_ptr())
        shapes.append((name, int(w.shape[0]), int(w.shape[1])))
    return shapes


def effective_bits(variant, layers, params, shapes, in_features):
    """Bits per quantized weight including scales and zero points (formula in the module doc).
    layers/params: layers_quantized/parameters_quantized from the CLI; shapes: linear_shapes()."""
    if variant == "fp32":
        return 32.0
    f = variant_fields(variant)
    per_block = SCALE_BITS + (ZERO_POINT_BITS if f["scheme"] == "zeropoint" else 0)
    if shapes:
        params = sum(o * i for _, o, i in shapes)
        layers = len(shapes)
    if not params:
        return None
    if f["granularity"] == "tensor":
        blocks = layers
    elif f["granularity"] == "group":
        blocks = params / f["group_size"]
    elif shapes:
        blocks = sum(o for _, o, _ in shapes)
    elif in_features:
        blocks = params / in_features
    else:
        return None
    return f["bits"] + blocks * per_block / params


# ---------------------------------------------------------------------------------------------
# Files


def atomic_write(path, data):
    """Write bytes or str to path through a temporary file in the same directory + rename."""
    mode = "wb" if isinstance(data, bytes) else "w"
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", dir=os.path.dirname(path) or ".")
    try:
        with os.fdopen(fd, mode, **({} if mode == "wb" else {"encoding": "utf-8", "newline": ""})) as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the file a normal file's mode
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def cell(value):
    if value is None:
        return ""
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else ""
    return str(value)


def write_csv(path, rows, columns):
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(columns)
    for row in rows:
        w.writerow([cell(row.get(c)) for c in columns])
    atomic_write(path, buf.getvalue())


def to_number(text):
    if text is None or text == "":
        return None
    try:
        v = float(text)
    except ValueError:
        return text
    return int(v) if re.fullmatch(r"-?[0-9]+", text) else v


def read_results(path):
    """(rows, columns) of a results.csv; rows without a perplexity (a truncated line) are dropped."""
    if not os.path.exists(path):
        return [], []
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        columns = list(reader.fieldnames or [])
        rows = []
        for raw in reader:
            # a short row (a line cut off by an editor or a full disk) or one without a perplexity
            # is not a finished variant: it is dropped and computed again
            if None in raw or any(raw.get(k) is None for k in columns) or not raw.get("variant") \
                    or to_number(raw.get("ppl")) is None:
                continue
            row = {k: (raw[k] if k in ("variant", "scheme", "granularity", "range") else to_number(raw[k]))
                   for k in columns if k is not None}
            rows.append(row)
    if columns and "variant" not in columns:
        raise SweepError(f"{path} is not a sweep results.csv (no 'variant' column)")
    return rows, columns


def columns_for(rows, extra_order):
    cols = list(BASE_COLUMNS)
    for c in extra_order:
        if c not in cols and any(c in r for r in rows):
            cols.append(c)
    return cols


# ---------------------------------------------------------------------------------------------
# Running quantppl


def check_binary(binary):
    if not (os.path.isfile(binary) and os.access(binary, os.X_OK)):
        raise SweepError(f"quantppl binary not found or not executable: {binary} "
                         "(build it, or pass --bin / set QUANTPPL_BIN)", EXIT_IO)


def cli_args(args):
    """The flags passed to every quantppl call besides --variants."""
    out = []
    for flag, value in (("--model", args.model), ("--tokenizer", args.tokenizer), ("--text", args.text),
                        ("--mode", args.mode), ("--max-length", args.max_length),
                        ("--batch-size", args.batch_size), ("--threads", args.threads),
                        ("--include", args.include), ("--exclude", args.exclude)):
        if value is not None:
            out += [flag, str(value)]
    return out


def run_cli(binary, argv):
    """Runs quantppl; returns stdout. A failure becomes SweepError carrying the CLI's own message
    and exit code."""
    try:
        r = subprocess.run([binary, *argv], capture_output=True, text=True)
    except OSError as e:
        raise SweepError(f"cannot run {binary}: {e.strerror}", EXIT_IO) from None
    if r.returncode != 0:
        lines = [l for l in r.stderr.strip().splitlines() if l.strip()]
        message = lines[-1] if lines else f"exited with code {r.returncode}"
        message = re.sub(r"^quantppl: error: ", "", message)
        code = r.returncode if r.returncode > 0 else EXIT_INTERRUPTED
        raise SweepError(f"quantppl {argv[0]} failed (exit {r.returncode}): {message}", code)
    return r.stdout


def has_subcommand(binary, name):
    """Whether `quantppl NAME` exists. The exit code of `quantppl NAME --help` is not enough (an
    unknown name may fall back to the top-level help with exit 0): the top-level help must list it."""
    try:
        top = subprocess.run([binary, "--help"], capture_output=True, text=True)
        sub = subprocess.run([binary, name, "--help"], capture_output=True, text=True)
    except OSError:
        return False
    listed = re.search(r"^Subcommands:\s*$(.*)", top.stdout, re.M | re.S)
    return (sub.returncode == 0 and listed is not None
            and re.search(rf"^\s+{re.escape(name)}\s", listed.group(1), re.M) is not None)


def fmt_duration(seconds):
    if seconds < 90:
        return f"{seconds:.0f}s"
    if seconds < 5400:
        return f"{seconds / 60:.0f}m"
    return f"{seconds / 3600:.1f}h"


def progress_line(index, total, row, eta):
    delta = row.get("delta_ppl_pct")
    delta_text = f" ({delta:+.1f}%)" if isinstance(delta, (int, float)) and math.isfinite(delta) else ""
    ppl = row.get("ppl")
    ppl_text = f"{ppl:.4g}" if isinstance(ppl, (int, float)) else "?"
    eta_text = f"  ETA {fmt_duration(eta)}" if eta is not None else ""
    return f"[{index}/{total}] {row['variant']}  ppl {ppl_text}{delta_text}{eta_text}"


def run_sweep(args):
    check_binary(args.bin)
    grid = build_grid(args)
    out = args.out
    try:
        os.makedirs(os.path.join(out, "raw"), exist_ok=True)
    except OSError as e:
        raise SweepError(f"--out: cannot create {out}: {e.strerror}", EXIT_IO) from None
    csv_path = os.path.join(out, "results.csv")
    run_path = os.path.join(out, "run.json")

    if args.fresh:
        for p in (csv_path, run_path):
            if os.path.exists(p):
                os.unlink(p)
        shutil.rmtree(os.path.join(out, "raw"), ignore_errors=True)
        os.makedirs(os.path.join(out, "raw"), exist_ok=True)
    rows, old_columns = read_results(csv_path)
    run_info = {}
    if os.path.exists(run_path):
        with open(run_path, encoding="utf-8") as f:
            run_info = json.load(f)
    extra_order = [c for c in old_columns if c not in BASE_COLUMNS]
    done = {r["variant"] for r in rows}
    fp32_row = next((r for r in rows if r["variant"] == "fp32"), None)

    # Layer shapes before the first call, so group sizes that cannot apply are skipped up front;
    # re-read if the CLI reports a different model than the one guessed here.
    home = os.environ.get("QUANTPPL_HOME") or REPO
    shapes_model = args.model or run_info.get("model") or os.path.join(home, "models", "default.pt")
    shapes = linear_shapes(shapes_model, args.include, args.exclude) if os.path.isfile(shapes_model) else None
    shapes_checked = False

    todo = [v for v in grid if v not in done]
    if fp32_row is None:
        todo = ["fp32"] + [v for v in todo if v != "fp32"]
    if rows:
        log(f"sweep: resuming: {len(grid) - len(todo)} of {len(grid)} variants already in {csv_path}, "
            f"{len(todo)} to run (--fresh starts over)")
    else:
        log(f"sweep: {len(grid)} variants (fp32 first), batches of {args.batch_variants}, into {out}")

    total = len(grid)
    finished = len(grid) - len(todo)
    started = time.monotonic()
    computed = 0
    batch_no = len([n for n in os.listdir(os.path.join(out, "raw")) if n.endswith(".json")])
    while todo:
        batch, todo = todo[:args.batch_variants], todo[args.batch_variants:]
        if shapes:  # a group size that does not divide a layer's input dimension: skip, say why
            keep = []
            for v in batch:
                g = variant_fields(v)["group_size"]
                bad = next((n for n, _, i in shapes if g and i % g), None)
                if bad:
                    log(f"sweep: skipping {v}: group size {g} does not divide the input dimension of {bad}")
                    total -= 1
                else:
                    keep.append(v)
            batch = keep
            if not batch:
                continue
        argv = ["compare", *cli_args(args), "--variants", ",".join(batch), "--format", "json", "--quiet"]
        t0 = time.monotonic()
        report = json.loads(run_cli(args.bin, argv))
        settings = {k: v for k, v in report.items() if k != "results"}
        if run_info.get("model_sha256"):
            changed = [k for k in PINNED_SETTINGS if run_info.get(k) != settings.get(k)]
            if changed:
                raise SweepError(f"{out} holds a sweep with different settings ({', '.join(changed)} differ); "
                                 "use another --out or --fresh")
        batch_no += 1
        atomic_write(os.path.join(out, "raw", f"batch-{batch_no:03d}.json"), json.dumps(report, indent=1) + "\n")
        if not shapes_checked:
            shapes_checked = True
            if not os.path.isfile(shapes_model) or not os.path.samefile(shapes_model, settings["model"]):
                shapes = linear_shapes(settings["model"], args.include, args.exclude)
            if shapes and sum(o * i for _, o, i in shapes) != settings.get("parameters_quantized"):
                log("sweep: note: the layer shapes read with torch do not add up to the CLI's "
                    "parameters_quantized; effective bits use the CLI's counts and --in-features")
                shapes = None
        if not run_info.get("model_sha256"):
            run_info = dict(settings)
            run_info["started"] = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
        run_info["updated"] = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
        run_info["sweep_command"] = shlex.join([sys.argv[0], *sys.argv[1:]])
        run_info["last_cli_command"] = shlex.join([args.bin, *argv])
        run_info["quantppl_version"] = settings.get("quantppl_version")
        run_info["libtorch_version"] = settings.get("libtorch_version")
        run_info["layer_shapes"] = "exact (torch)" if shapes else (
            f"assumed in_features={args.in_features}" if args.in_features else "unknown (channel overhead left empty)")

        results = report.get("results", [])
        by_name = {r.get("variant"): r for r in results}
        new_rows = []
        for i, v in enumerate(batch):
            r = by_name.get(v) or (results[i] if i < len(results) else None)
            if r is None:
                raise SweepError(f"quantppl returned no result for {v}", 5)
            row = {"variant": v, **variant_fields(v)}
            for k, val in r.items():
                if k != "variant":
                    row[k] = val
                    if k not in BASE_COLUMNS and k not in extra_order:
                        extra_order.append(k)
            if v == "fp32":
                fp32_row = row
            if fp32_row and isinstance(row.get("ppl"), (int, float)) and row.get("delta_ppl_pct") is None:
                row["delta_ppl_pct"] = 100.0 * (row["ppl"] / fp32_row["ppl"] - 1.0)
            row["effective_bits_per_weight"] = effective_bits(
                v, settings.get("layers_quantized"), settings.get("parameters_quantized"), shapes, args.in_features)
            new_rows.append(row)
        rows.extend(new_rows)
        write_csv(csv_path, rows, columns_for(rows, extra_order))
        atomic_write(run_path, json.dumps(run_info, indent=1) + "\n")

        elapsed_batch = time.monotonic() - t0
        computed += len(batch)
        per_variant = (time.monotonic() - started) / computed
        for row in new_rows:
            finished += 1
            remaining = total - finished
            log(progress_line(finished, total, row, per_variant * remaining if remaining else None))
        log(f"sweep: batch {batch_no} ({len(batch)} variants) took {fmt_duration(elapsed_batch)}")
    if computed == 0:
        log(f"sweep: nothing to run: all {len(grid)} variants are in {csv_path}")
    return rows, run_info


# ---------------------------------------------------------------------------------------------
# Plots


def _pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def save_figure(fig, path):
    """PNG through a temporary file + rename."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=fig.dpi)
    atomic_write(path, buf.getvalue())


def _plain_log_axis(ax):
    """Log-scale y ticks written as plain numbers (1700, not 1.7x10^3); minor ticks are labelled
    only when the axis spans less than a decade (otherwise they crowd)."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter
    formatter = FuncFormatter(lambda v, _: f"{v:.4g}")
    lo, hi = ax.get_ylim()
    if hi >= 10 * lo:
        ax.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        ax.yaxis.set_minor_formatter(NullFormatter())
    else:
        ax.yaxis.set_minor_formatter(formatter)
    ax.yaxis.set_major_formatter(formatter)
    ax.tick_params(axis="y", which="minor", labelsize=7)


def _granularity_colour(label):
    """One colour per granularity (the scheme is the line style), stable across plots."""
    palette = ["tab:green", "tab:blue", "tab:orange", "tab:purple", "tab:red", "tab:brown", "tab:pink", "tab:olive"]
    order = ["tensor", "channel", "group32", "group64", "group128"]
    gran = label.split()[-1]
    return palette[order.index(gran)] if gran in order else palette[5 + sum(map(ord, gran)) % 3]


def _finite(v):
    return isinstance(v, (int, float)) and math.isfinite(v) and v > 0


def _series_label(row):
    g = row["granularity"]
    return f"{row['scheme']} {('group' + str(row['group_size'])) if g == 'group' else g}"


def _curves(rows, range_name, metric):
    """{label: [(bits, value)]} for one range method."""
    curves = {}
    for r in rows:
        if r["variant"] == "fp32" or r.get("range") != range_name or not isinstance(r.get(metric), (int, float)):
            continue
        curves.setdefault(_series_label(r), []).append((r["bits"], r[metric]))
    return {k: sorted(v) for k, v in sorted(curves.items())}


def _pick_range(rows):
    ranges = [r.get("range") for r in rows if r["variant"] != "fp32"]
    return "minmax" if "minmax" in ranges else (ranges[0] if ranges else None)


def _title_suffix(run_info):
    model = os.path.basename(str(run_info.get("model", "")))
    return f"{model}, {run_info.get('text_tokens', '?')} tokens"


def plot_all(out, rows, run_info, sensitivity=None):
    """Writes the PNGs into out; returns [(file, caption)] of those written."""
    plt = _pyplot()
    written = []
    fp32 = next((r for r in rows if r["variant"] == "fp32"), None)
    quant = [r for r in rows if r["variant"] != "fp32" and _finite(r.get("ppl"))]
    rng = _pick_range(quant)
    if not quant or rng is None:
        log("sweep: no quantized variants yet: no plots")
        return written
    styles = {"absmax": "-", "zeropoint": "--"}

    # 1. perplexity vs bits, one line per scheme x granularity, at one range method
    fig, ax = plt.subplots(figsize=(7.5, 4.8), dpi=100)
    for label, pts in _curves(quant, rng, "ppl").items():
        ax.plot([b for b, _ in pts], [p for _, p in pts], styles.get(label.split()[0], "-"), marker="o",
                markersize=4, label=label, color=_granularity_colour(label))
    if fp32:
        ax.axhline(fp32["ppl"], color="black", linewidth=1, linestyle=":", label=f"fp32 ({fp32['ppl']:.4g})")
    ax.set_yscale("log")
    _plain_log_axis(ax)
    ax.set_xlabel("bits per weight code")
    ax.set_ylabel("perplexity (log scale)")
    ax.set_title(f"Perplexity vs bits, {rng} range — {_title_suffix(run_info)}", fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, ncol=2)
    fig.tight_layout()
    save_figure(fig, os.path.join(out, "ppl_vs_bits.png"))
    plt.close(fig)
    written.append(("ppl_vs_bits.png", f"Perplexity vs bits ({rng} range), one line per scheme and granularity; "
                                       "dotted: fp32."))

    # 2. perplexity vs effective bits per weight, every variant; marker per range, colour per scheme
    pts = [r for r in quant if _finite(r.get("effective_bits_per_weight"))]
    if pts:
        fig, ax = plt.subplots(figsize=(7.5, 4.8), dpi=100)
        markers = ["o", "s", "^", "D", "v", "P", "X", "*"]
        ranges = sorted({r["range"] for r in pts}, key=lambda x: (x != "minmax", x))
        colours = {"absmax": "tab:blue", "zeropoint": "tab:orange"}
        for i, rg in enumerate(ranges):
            for scheme in SCHEMES:
                sel = [r for r in pts if r["range"] == rg and r["scheme"] == scheme]
                if sel:
                    ax.scatter([r["effective_bits_per_weight"] for r in sel], [r["ppl"] for r in sel],
                               marker=markers[i % len(markers)], color=colours[scheme], alpha=0.75, s=22,
                               label=f"{scheme}, {rg}")
        if fp32:
            ax.axhline(fp32["ppl"], color="black", linewidth=1, linestyle=":", label="fp32")
        ax.set_yscale("log")
        _plain_log_axis(ax)
        ax.set_xlabel("effective bits per weight (codes + scales + zero points)")
        ax.set_ylabel("perplexity (log scale)")
        ax.set_title(f"Perplexity vs storage — {_title_suffix(run_info)}", fontsize=10)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7, ncol=2)
        fig.tight_layout()
        save_figure(fig, os.path.join(out, "ppl_vs_effective_bits.png"))
        plt.close(fig)
        written.append(("ppl_vs_effective_bits.png", "Perplexity vs effective bits per weight, every variant "
                                                     "(colour: scheme, marker: range method)."))
    else:
        log("sweep: no effective bits per weight known: skipping ppl_vs_effective_bits.png")

    # 3. KL and top-1 agreement vs bits, when the CLI reports them
    have_kl = any(isinstance(r.get("kl_mean"), (int, float)) for r in quant)
    have_top1 = any(isinstance(r.get("top1_agreement"), (int, float)) for r in quant)
    if have_kl or have_top1:
        panels = [(m, t) for m, t, ok in (("kl_mean", "mean KL(fp32 || variant), nats/token", have_kl),
                                          ("top1_agreement", "top-1 agreement with fp32", have_top1)) if ok]
        fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 4.4), dpi=100, squeeze=False)
        for ax, (metric, title) in zip(axes[0], panels):
            for label, cpts in _curves(quant, rng, metric).items():
                xs = [b for b, v in cpts if metric != "kl_mean" or v > 0]
                ys = [v for _, v in cpts if metric != "kl_mean" or v > 0]
                ax.plot(xs, ys, styles.get(label.split()[0], "-"), marker="o", markersize=4, label=label,
                        color=_granularity_colour(label))
            if metric == "kl_mean":
                ax.set_yscale("log")
            ax.set_xlabel("bits per weight code")
            ax.set_title(f"{title} ({rng})", fontsize=9)
            ax.grid(True, which="both", alpha=0.3)
        axes[0][0].legend(fontsize=7)
        fig.tight_layout()
        save_figure(fig, os.path.join(out, "agreement_vs_bits.png"))
        plt.close(fig)
        written.append(("agreement_vs_bits.png", "Distribution damage vs bits: mean KL divergence from fp32 and "
                                                 "the share of positions with the same top-1 token."))
    else:
        log("sweep: the CLI reports no kl_mean/top1_agreement: skipping agreement_vs_bits.png")

    # 4. per-layer sensitivity
    if sensitivity:
        layers = sorted(sensitivity.get("layers", []), key=lambda l: l.get("rank", 0))[:25]
        keep = sensitivity.get("keep", [])
        fig, axes = plt.subplots(1, 2 if keep else 1, figsize=(11 if keep else 7.5, max(4.0, 0.28 * len(layers) + 1.2)),
                                 dpi=100, squeeze=False, gridspec_kw={"width_ratios": [2, 1]} if keep else None)
        ax = axes[0][0]
        names = [l["name"] for l in layers][::-1]
        ax.barh(names, [l["delta_ppl_pct"] for l in layers][::-1], color="tab:red")
        ax.set_xlabel("perplexity change when only this layer is quantized (%)")
        ax.tick_params(axis="y", labelsize=7)
        ax.set_title(f"Most sensitive layers, {sensitivity.get('variant', '')}", fontsize=10)
        ax.grid(True, axis="x", alpha=0.3)
        if keep:
            ax2 = axes[0][1]
            ax2.plot([k["keep"] for k in keep], [k["ppl"] for k in keep], marker="o")
            ax2.axhline(sensitivity.get("fp32_ppl", float("nan")), color="black", linestyle=":", label="fp32")
            ax2.set_xlabel("most sensitive layers kept fp32")
            ax2.set_ylabel("perplexity")
            ax2.set_title("Keeping the worst K in fp32", fontsize=10)
            ax2.grid(True, alpha=0.3)
            ax2.legend(fontsize=8)
        fig.tight_layout()
        save_figure(fig, os.path.join(out, "sensitivity.png"))
        plt.close(fig)
        written.append(("sensitivity.png", f"Per-layer sensitivity to {sensitivity.get('variant', '')}: "
                                           "perplexity change with only that layer quantized, and the "
                                           "perplexity with the K most sensitive layers kept fp32."))
    return written


def run_sensitivity(args, run_info):
    """Runs `quantppl sensitivity --format json`, saves DIR/sensitivity.json, returns the report
    (None with a message when the subcommand does not exist)."""
    if not has_subcommand(args.bin, "sensitivity"):
        log(f"sweep: {args.bin} has no 'sensitivity' subcommand (not built yet?): skipping the sensitivity chart")
        return None
    spec = canonical_variant(args.sensitivity)
    if spec == "fp32":
        raise SweepError("--sensitivity: needs a quantized variant, not fp32")
    argv = ["sensitivity", *cli_args(args), "--variant", spec, "--format", "json", "--quiet"]
    if args.sensitivity_max_tokens:
        argv += ["--max-tokens", str(args.sensitivity_max_tokens)]
    saved_path = os.path.join(args.out, "sensitivity.json")
    if os.path.exists(saved_path):  # a resumed sweep does not redo the (long) sensitivity run
        with open(saved_path, encoding="utf-8") as f:
            saved = json.load(f)
        if (saved.get("variant") == spec and saved.get("model_sha256") == run_info.get("model_sha256")
                and saved.get("text_sha256") == run_info.get("text_sha256")
                and (saved.get("max_tokens") or 0) == (args.sensitivity_max_tokens or 0)):
            log(f"sweep: reusing {saved_path} (same variant, model and text)")
            return saved
    log(f"sweep: per-layer sensitivity to {spec} (one run per layer; can take a while)")
    report = json.loads(run_cli(args.bin, argv))
    if not isinstance(report.get("layers"), list) or not all("name" in l and "delta_ppl_pct" in l
                                                             for l in report["layers"]):
        log("sweep: the sensitivity JSON has no layers[].name/delta_ppl_pct: skipping the chart")
        return None
    atomic_write(os.path.join(args.out, "sensitivity.json"), json.dumps(report, indent=1) + "\n")
    return report


# ---------------------------------------------------------------------------------------------


class OneLineErrorParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (the usage summary is in --help)."""

    def error(self, message):
        log(f"sweep: error: {message} (see --help)")
        sys.exit(EXIT_USAGE)


def parse_args(argv):
    p = OneLineErrorParser(
        prog="sweep.py", description="Run a grid of quantization variants through `quantppl compare` "
        "(one call per batch), write results.csv and PNG plots into --out; rerun to resume. "
        "Formulas, outputs and exit codes: the top of scripts/sweep.py and docs/sweep.md.")
    p.add_argument("--out", "-o", required=True, metavar="DIR", help="output directory (created)")
    p.add_argument("--bin", default=DEFAULT_BIN, help="quantppl binary (default: $QUANTPPL_BIN or %(default)s)")
    p.add_argument("--model", "-m", help="contract model (default: the CLI's, models/default.pt)")
    p.add_argument("--tokenizer", help="sentencepiece model overriding the model's own")
    p.add_argument("--text", "-t", help="evaluation text file (default: the CLI's, data/default_eval.txt)")
    g = p.add_argument_group("grid (ignored with --variants)")
    g.add_argument("--schemes", default="absmax,zeropoint", help="(default: %(default)s)")
    g.add_argument("--bits", default="2-8", help="e.g. 2-8 or 3,4,8 (default: %(default)s)")
    g.add_argument("--granularities", default=DEFAULT_GRANULARITIES, help="tensor, channel, groupN (default: %(default)s)")
    g.add_argument("--ranges", default=DEFAULT_RANGES, help="minmax, pP (percentile), mse (default: %(default)s)")
    g.add_argument("--variants", "-v", help="explicit comma-separated variant list instead of the grid")
    p.add_argument("--batch-variants", type=int, default=8, metavar="N", help="variants per quantppl call (default: %(default)s)")
    p.add_argument("--fresh", action="store_true", help="discard DIR's earlier results instead of resuming")
    p.add_argument("--resume", action="store_true", help="resume (the default; accepted for clarity)")
    p.add_argument("--in-features", type=int, metavar="N",
                   help="assume N inputs per layer for channel overhead when torch cannot read the model")
    p.add_argument("--sensitivity", metavar="SPEC", help="also chart `quantppl sensitivity --variant SPEC`")
    p.add_argument("--sensitivity-max-tokens", type=int, metavar="N", help="--max-tokens for the sensitivity run")
    p.add_argument("--report", action="store_true", help="also write report.html and report.md (scripts/report.py)")
    c = p.add_argument_group("passed through to quantppl compare")
    c.add_argument("--mode", choices=["reconstruct", "prefix"])
    c.add_argument("--max-length", type=int)
    c.add_argument("--batch-size", type=int)
    c.add_argument("--threads", type=int)
    c.add_argument("--include", metavar="REGEX")
    c.add_argument("--exclude", metavar="REGEX")
    args = p.parse_args(argv)
    if args.fresh and args.resume:
        p.error("--fresh and --resume contradict each other")
    if args.batch_variants < 1:
        p.error(f"--batch-variants must be >= 1, got {args.batch_variants}")
    if args.in_features is not None and args.in_features < 1:
        p.error(f"--in-features must be >= 1, got {args.in_features}")
    if args.text == "-":
        p.error("--text -: a sweep reads the text once per batch; save it to a file first")
    for flag in ("include", "exclude"):
        value = getattr(args, flag)
        if value:
            try:
                re.compile(value)
            except re.error as e:
                p.error(f"--{flag}: bad regex '{value}': {e}")
    args.bin = os.path.abspath(args.bin) if os.sep in args.bin else (shutil.which(args.bin) or args.bin)
    return args


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        rows, run_info = run_sweep(args)
        sensitivity = run_sensitivity(args, run_info) if args.sensitivity else None
        if sensitivity is None and os.path.exists(os.path.join(args.out, "sensitivity.json")):
            with open(os.path.join(args.out, "sensitivity.json"), encoding="utf-8") as f:
                sensitivity = json.load(f)
        written = plot_all(args.out, rows, run_info, sensitivity)
        log(f"sweep: wrote {os.path.join(args.out, 'results.csv')} ({len(rows)} rows)"
            + (f" and {', '.join(w for w, _ in written)}" if written else ""))
        if args.report:
            sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
            import report
            for path in report.write_report(args.out):
                log(f"sweep: wrote {path}")
    except SweepError as e:
        log(f"sweep: error: {e}")
        return e.code
    except KeyboardInterrupt:
        log(f"sweep: interrupted; finished variants are in {os.path.join(args.out, 'results.csv')} — "
            "rerun the same command to resume")
        return EXIT_INTERRUPTED
    return 0


if __name__ == "__main__":
    sys.exit(main())
