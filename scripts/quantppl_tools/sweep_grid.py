"""The grid of a sweep and the pieces of its batches that the local runner (sweep.py) and the
Dask runner (distributed.py) share: spec strings, layer shapes for the group-size check, the flags
of every compare call, storage per weight, progress lines. Formulas: sweep.py's module doc.
"""

import json
import math
import re

from .sweep_methods import base_spec, parse_methods, with_methods
from .sweep_results import BASE_COLUMNS, SweepError, log, variant_columns

# Settings recorded in run.json; a resumed sweep must match them. methods and calibration are the
# sweep's own (sweep_methods.sweep_settings), the others the CLI's.
PINNED_SETTINGS = ["model_sha256", "text_sha256", "mode", "max_length", "include", "exclude", "methods",
                   "calibration"]


# ---------------------------------------------------------------------------------------------
# The grid: spec strings for the CLI (which validates them)


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
        if lo > hi:
            raise SweepError(f"--bits: empty range '{item}'")
        bits.extend(b for b in range(lo, hi + 1) if b not in bits)
    return bits


def build_grid(args):
    """The specs of the sweep, fp32 first, without duplicates, as the CLI will be given them: each
    grid spec crossed with --methods (sweep_methods.with_methods), a spec's methods together."""
    if args.variants:
        specs = parse_list("--variants", args.variants)
    else:
        schemes = parse_list("--schemes", args.schemes)
        bits = parse_bits(args.bits)
        grans = parse_list("--granularities", args.granularities)
        ranges = parse_list("--ranges", args.ranges)
        specs = [f"{s}:{b}:{g}:{r}" for s in schemes for g in grans for r in ranges for b in bits]
    grid = ["fp32"]
    for spec in with_methods(specs, parse_methods(getattr(args, "methods", None))):
        if spec not in grid:
            grid.append(spec)
    return grid


def group_size(spec):
    """N of a groupN field of a spec (of its format: SPEC+METHOD too), or None: only to skip a
    size that cannot apply."""
    m = re.search(r":group([0-9]+)(?::|$)", base_spec(spec))
    return int(m.group(1)) if m else None


# ---------------------------------------------------------------------------------------------
# Layer shapes (for the group-size check) and storage per weight


def linear_shapes(model_path, include, exclude):
    """[(name, out_features, in_features)] of the Linear layers quantppl would quantize, or None
    (with a message) when torch cannot read the model."""
    try:
        import torch  # noqa: deferred: only for the shapes
    except ImportError:
        log("sweep: note: torch is not importable; group sizes are checked by the CLI")
        return None
    try:
        module = torch.jit.load(model_path, map_location="cpu")
    except Exception as e:  # a model the CLI can read but torch here cannot: not fatal
        log(f"sweep: note: cannot read layer shapes from {model_path} ({str(e).splitlines()[0]}); "
            "group sizes are checked by the CLI")
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


def effective_bits(result):
    """Bits per quantized weight of one result of the CLI's JSON: its bits_per_weight, else
    32 * packed_bytes / fp32_bytes (formula in the module doc); None when it reports neither."""
    if isinstance(result.get("bits_per_weight"), (int, float)):
        return float(result["bits_per_weight"])
    packed, fp32 = result.get("packed_bytes"), result.get("fp32_bytes")
    if isinstance(packed, int) and isinstance(fp32, int) and fp32 > 0:
        return 32.0 * packed / fp32
    return None


def cli_args(args):
    """The flags passed to every quantppl call besides --variants."""
    out = []
    for flag, value in (("--model", args.model), ("--tokenizer", args.tokenizer), ("--text", args.text),
                        ("--mode", args.mode), ("--stride", getattr(args, "stride", None)),
                        ("--max-length", args.max_length),
                        ("--batch-size", args.batch_size), ("--threads", args.threads),
                        ("--include", args.include), ("--exclude", args.exclude)):
        if value is not None:
            out += [flag, str(value)]
    return out


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


def canonical_name(result):
    """The canonical spec of one result of the CLI's JSON (`spec`; `variant` from a CLI too old
    to report it, which then labels the row as the spec was written)."""
    return result.get("spec") or result.get("variant")


CALIBRATION_FIELDS = ("text", "sha256", "tokens", "mode", "stats")


def flatten_calibration(result):
    """A compare result with its `calibration` object (null for fp32, RTN and HQQ rows) as CSV
    cells: `calibration` the compact JSON, and calibration_text/sha256/tokens/mode/stats."""
    cal = result.get("calibration")
    if "calibration" not in result:
        return result
    out = {}
    for k, v in result.items():
        out[k] = v
        if k == "calibration":
            out[k] = json.dumps(v, sort_keys=True, separators=(",", ":")) if isinstance(v, dict) else None
            for f in CALIBRATION_FIELDS:
                out[f"calibration_{f}"] = v.get(f) if isinstance(v, dict) else None
    return out


def rows_of_results(batch, results, canonical, fp32_row, extra_order):
    """The results.csv rows of one batch's `compare --format json` results (one per spec of
    `batch`, in the order given), keyed by the CLI's canonical name; records spec -> name in
    `canonical` and new JSON fields in `extra_order`. Returns (rows, the fp32 row seen last)."""
    rows = []
    for v, r in zip(batch, results):  # the CLI reports the variants in the order given
        name = canonical_name(r)
        canonical[v] = name
        row = {"variant": name, **variant_columns(name)}
        for k, val in flatten_calibration(r).items():
            if k not in ("variant", "spec"):
                row[k] = val
                if k not in BASE_COLUMNS and k not in extra_order:
                    extra_order.append(k)
        if name == "fp32":
            fp32_row = row
        if fp32_row and isinstance(row.get("ppl"), (int, float)) and row.get("delta_ppl_pct") is None:
            row["delta_ppl_pct"] = 100.0 * (row["ppl"] / fp32_row["ppl"] - 1.0)
        row["effective_bits_per_weight"] = effective_bits(r)
        rows.append(row)
    return rows, fp32_row
