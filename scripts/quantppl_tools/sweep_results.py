"""The files of a sweep directory: results.csv (one row per variant) and their atomic writes.

Shared by sweep.py, which writes them, and report.py and sweep_plots.py, which read them. A row
is keyed by `variant`, the canonical spec the CLI reports (`compare --format json`, field `spec`:
every field explicit, e.g. absmax:4:tensor:minmax); rerunning a sweep skips the variants already
in results.csv.
"""

import csv
import io
import math
import os
import re
import subprocess
import sys
import tempfile

# Columns every results.csv has, in this order; metric fields of the CLI's JSON that are not
# listed here (kl_mean, top1_agreement, packed_bytes, ... as the CLI grows) follow, in its order.
BASE_COLUMNS = ["variant", "scheme", "bits", "granularity", "group_size", "range", "ppl", "nll", "tokens",
                "delta_ppl_pct", "weight_mse", "weight_sqnr_db", "seconds", "effective_bits_per_weight"]
TEXT_COLUMNS = ("variant", "scheme", "granularity", "range", "method", "calibration", "calibration_text",
                "calibration_sha256", "calibration_mode", "calibration_stats")

EXIT_USAGE, EXIT_IO, EXIT_INTERRUPTED = 2, 4, 130


class SweepError(Exception):
    """A user-facing error: printed as one line, exits with `code`."""

    def __init__(self, message, code=EXIT_USAGE):
        super().__init__(message)
        self.code = code


def log(message):
    print(message, file=sys.stderr, flush=True)


def variant_columns(spec):
    """The scheme/bits/granularity/group_size/range columns of a canonical spec as the CLI
    spells it: SCHEME:BITS:GRANULARITY:RANGE[:ARITH] for the integer grids, FAMILY[:FIELD...]
    for the other formats (scheme = the family, e.g. nf4, mxfp4, q4_0; bits when the second
    field is a number; granularity and range wherever such a field appears), fp32; methods
    (+NAME...) do not change them. Blank where the spec has no such field."""
    if spec == "fp32":
        return {"scheme": "fp32", "bits": 32, "granularity": "", "group_size": None, "range": ""}
    parts = spec.split("+")[0].split(":")
    if parts[0] in ("absmax", "zeropoint") and len(parts) != 4:
        # The tutorial arithmetic (a 5th field): its own points, kept out of the numpy curves.
        return {"scheme": parts[0], "bits": None, "granularity": "", "group_size": None, "range": ""}
    out = {"scheme": parts[0], "bits": int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else None,
           "granularity": "", "group_size": None, "range": ""}
    for field in parts[1:]:
        m = re.fullmatch(r"group([0-9]+)", field)
        if not out["granularity"] and (m or field in ("tensor", "channel")):
            out["granularity"] = "group" if m else field
            out["group_size"] = int(m.group(1)) if m else None
        elif not out["range"] and (field in ("minmax", "mse") or re.fullmatch(r"p[0-9.]+", field)):
            out["range"] = field
    return out


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
            rows.append({k: (raw[k] if k in TEXT_COLUMNS else to_number(raw[k])) for k in columns if k is not None})
    if columns and "variant" not in columns:
        raise SweepError(f"{path} is not a sweep results.csv (no 'variant' column)")
    return rows, columns


def columns_for(rows, extra_order):
    cols = list(BASE_COLUMNS)
    for c in extra_order:
        if c not in cols and any(c in r for r in rows):
            cols.append(c)
    return cols


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
