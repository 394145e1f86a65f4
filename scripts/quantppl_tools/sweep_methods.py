"""Methods as a sweep dimension (`--methods rtn,awq,hqq,gptq`) and the one calibration of a sweep.

Every grid spec (and --variants item without a method of its own) is crossed with the methods:
rtn is the spec itself, any other method is appended (SPEC+gptq, SPEC+gptq:actorder, SPEC+awq,
SPEC+awq+gptq, SPEC+hqq). HQQ optimises a zero point, so it exists only on the zero-point grids
(zeropoint:B:..., q4_1, q5_1); on any other spec it is skipped with one log line rather than sent
to the CLI, where one invalid spec would fail its whole batch.

A spec's methods run in ONE compare call (batches never split a spec's group), so every method
row is paired token by token with its format's RTN row (the CLI's rtn_delta_nll_mean/ci95, which
it fills only when the same call lists the RTN row). A resume whose pending method rows belong to
a format whose RTN row is already done sends that RTN spec again with them (pending_variants).

Calibration: GPTQ and AWQ read activation statistics. With --calibration-mode fp32 (the default)
the sweep runs `quantppl calibrate --output DIR/calibration.qcal` once and passes
--calibration-stats to every compare call (a resumed sweep reuses the file when its recorded model
sha256 is run.json's). With --calibration-mode sequential the statistics depend on the already
quantized blocks of each variant, so no file can be shared: every compare call recalibrates from
the --calibration text.
"""

import hashlib
import json
import os
import struct

from .sweep_results import SweepError, log

METHODS = ["rtn", "gptq", "gptq:actorder", "awq", "awq+gptq", "hqq"]
CALIBRATION_FILE = "calibration.qcal"
CALIBRATION_MAGIC = b"QPPLCAL1"


def parse_methods(text):
    """The --methods list, in the order given, without duplicates; unknown names are usage errors."""
    items = [x.strip() for x in (text or "rtn").split(",") if x.strip()]
    if not items:
        raise SweepError("--methods: empty list")
    out = []
    for m in items:
        m = m.lstrip("+")
        if m not in METHODS:
            raise SweepError(f"--methods: unknown method '{m}' (expected one of {', '.join(METHODS)})")
        if m not in out:
            out.append(m)
    return out


def needs_calibration(methods):
    return any(m.startswith("gptq") or m.startswith("awq") for m in methods)


def base_spec(spec):
    """The format part of a spec (before the first +METHOD)."""
    return spec.split("+", 1)[0]


def hqq_applies(spec):
    """Whether SPEC+hqq is valid: HQQ optimises a zero point, so only zero-point grids."""
    family = base_spec(spec).split(":", 1)[0]
    return family in ("zeropoint", "q4_1", "q5_1")


def with_methods(specs, methods):
    """specs crossed with methods, grouped by spec (its RTN row first when listed). A spec that
    already names a method is kept as it is."""
    out = []
    for spec in specs:
        if spec == "fp32" or "+" in spec:
            out.append(spec)
            continue
        for m in methods:
            if m == "rtn":
                out.append(spec)
            elif m == "hqq" and not hqq_applies(spec):
                log(f"sweep: skipping {spec}+hqq: HQQ needs a zero-point grid (zeropoint:B:..., q4_1, q5_1)")
            else:
                out.append(f"{spec}+{m}")
    return out


def rtn_partners(grid, canonical):
    """method spec -> the RTN spec of its format in `grid` (for the pairing), for every method
    spec of the grid whose format has one: the spec as written before +METHOD, else (a format
    written two ways, as in --variants absmax:8:tensor:minmax,absmax:8+gptq) the RTN spec that
    the CLI reported under the same canonical name (`canonical`, run.json's canonical_specs)."""
    rtn_specs = [g for g in grid if g != "fp32" and "+" not in g]
    by_name = {canonical[g]: g for g in rtn_specs if g in canonical}
    out = {}
    for v in grid:
        if v == "fp32" or "+" not in v:
            continue
        base = base_spec(v)
        if base in rtn_specs:
            out[v] = base
        else:
            name = canonical.get(base) or (base_spec(canonical[v]) if v in canonical else None)
            if name in by_name:
                out[v] = by_name[name]
            elif name in rtn_specs:
                out[v] = name
    return out


def pending_variants(grid, done, canonical):
    """(todo, reruns, partners): the variants of `grid` not in `done` (results.csv's canonical
    names; a spec is found through `canonical` too), in grid order, plus, in front of the first
    pending method spec of a format whose RTN row IS done, that RTN spec again (`reruns`).

    The CLI pairs a method row with its format's RTN row (rtn_delta_nll_mean/ci95) only when the
    same compare call lists both, so a resume that sent the pending methods alone (a sweep killed
    or a results.csv cut short after the RTN row was written) got empty pairing columns. The
    re-evaluated RTN row replaces the stored one (sweep.py, distributed.py): evaluation is
    deterministic, so both are the same numbers at the same --threads, and at another thread
    count (last digits differ) only the new one is the row the method rows were paired with."""
    def is_done(v):
        return v in done or canonical.get(v) in done

    partners = rtn_partners(grid, canonical)
    todo, reruns = [], []
    for v in grid:
        if is_done(v):
            continue
        rtn = partners.get(v)
        if rtn and is_done(rtn) and rtn not in todo:
            todo.append(rtn)
            reruns.append(rtn)
        todo.append(v)
    return todo, reruns, partners


def note_rerun_changes(batch, new_rows, rows, reruns):
    """Says when a re-evaluated RTN row (pending_variants) differs from the stored one: the same
    settings give the same numbers, except in the last digits at another --threads."""
    old = {r["variant"]: r for r in rows}
    for v, row in zip(batch, new_rows):
        before = old.get(row["variant"]) if v in reruns else None
        if before is not None and before.get("nll") != row.get("nll"):
            log(f"sweep: note: {row['variant']} evaluated again gives nll {row.get('nll')!r}, results.csv had "
                f"{before.get('nll')!r} (another --threads?): the new row, the one its methods are paired "
                "with, replaces it")


def make_batches(todo, size, partners=None):
    """Batches of up to `size` variants that never split one spec's group (its RTN spec and its
    methods: `partners` as pending_variants returns them, else the spec before +METHOD), in the
    order of todo; a group larger than `size` is a batch of its own. A group's members need not be
    adjacent in todo (an explicit --variants list may scatter them): each joins its group at the
    group's first position."""
    partners = partners or {}

    def key(v):
        return "fp32" if v == "fp32" else partners.get(v) or base_spec(v)

    groups, index = [], {}
    for v in todo:
        k = key(v)
        if k in index:
            groups[index[k]].append(v)
        else:
            index[k] = len(groups)
            groups.append([v])
    batches = []
    for g in groups:
        if batches and len(batches[-1]) + len(g) <= size:
            batches[-1].extend(g)
        else:
            batches.append(list(g))
    return batches


def sweep_settings(args):
    """The method settings pinned in run.json: a resume with other methods or another
    calibration is refused (its rows would not be comparable)."""
    methods = parse_methods(getattr(args, "methods", None))
    calibration = None
    if needs_calibration(methods):
        calibration = {"text": os.path.abspath(args.calibration) if args.calibration else None,
                       "tokens": args.calibration_tokens, "mode": args.calibration_mode or "fp32"}
    return {"methods": methods, "calibration": calibration}


def check_pinned_methods(run_info, settings, out):
    """Refuses, before any work, a resume whose methods or calibration differ from run.json's (a
    run.json written before methods existed holds an RTN-only sweep)."""
    if not run_info.get("model_sha256"):
        return
    old = {"methods": run_info.get("methods", ["rtn"]), "calibration": run_info.get("calibration")}
    changed = [k for k in ("methods", "calibration") if old[k] != settings[k]]
    if changed:
        raise SweepError(f"{out} holds a sweep with different settings ({', '.join(changed)} differ: "
                         f"run.json has {json.dumps(old[changed[0]])}, this run {json.dumps(settings[changed[0]])}); "
                         "use another --out or --fresh")


def file_sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def calibration_header(path):
    """The header of a well-formed calibration file (docs/calibration.md: magic, header length,
    JSON header, data, then the SHA-256 of every byte before it), or None. The trailing checksum
    is verified so that a damaged file is made again instead of failing every compare call."""
    try:
        size = os.path.getsize(path)
        h = hashlib.sha256()
        with open(path, "rb") as f:
            head = f.read(16)
            if len(head) != 16 or head[:8] != CALIBRATION_MAGIC or size < 16 + 32:
                return None
            (n,) = struct.unpack("<Q", head[8:])
            if n > min(16 << 20, size - 16 - 32):
                return None
            header = f.read(n)
            h.update(head + header)
            left = size - 32 - 16 - n
            while left:
                chunk = f.read(min(1 << 20, left))
                if not chunk:
                    return None
                h.update(chunk)
                left -= len(chunk)
            if f.read(32) != h.digest():
                return None
        header = json.loads(header.decode("utf-8"))
        return header if isinstance(header, dict) else None
    except (OSError, ValueError, UnicodeDecodeError):
        return None


def calibration_model_sha256(path):
    """The model_sha256 recorded in a well-formed calibration file's header, or None."""
    return (calibration_header(path) or {}).get("model_sha256")


def calibration_flags(args, stats_path):
    """The calibration flags of every compare call (none when no method calibrates)."""
    settings = sweep_settings(args)
    if settings["calibration"] is None:
        return []
    if settings["calibration"]["mode"] == "sequential":
        out = ["--calibration-mode", "sequential"]
        if args.calibration:
            out += ["--calibration", args.calibration]
        if args.calibration_tokens:
            out += ["--calibration-tokens", str(args.calibration_tokens)]
        return out
    return ["--calibration-stats", stats_path]


def calibrate_argv(args, path):
    argv = ["calibrate", "--output", path, "--force", "--quiet"]
    for flag, value in (("--model", args.model), ("--tokenizer", args.tokenizer),
                        ("--calibration", args.calibration), ("--calibration-tokens", args.calibration_tokens),
                        ("--max-length", args.max_length), ("--batch-size", args.batch_size),
                        ("--threads", args.threads), ("--include", args.include), ("--exclude", args.exclude)):
        if value is not None:
            argv += [flag, str(value)]
    return argv


def prepare_calibration(args, run_info, run_cli):
    """Once per sweep: DIR/calibration.qcal for the fp32 calibration mode (reused when its model
    sha256 is run.json's), then args.calibration_stats set for the compare calls. Returns the
    flags of every compare call."""
    settings = sweep_settings(args)
    if settings["calibration"] is None:
        if args.calibration or args.calibration_tokens or args.calibration_mode:
            log("sweep: note: no method in --methods reads calibration data: the calibration flags are unused")
        return []
    path = os.path.abspath(os.path.join(args.out, CALIBRATION_FILE))
    # The model is pinned by run.json, but the CLI reports its sha256 only after a compare call:
    # checked here first, so that statistics of the pinned model are not passed with another one
    # (and no calibration runs for a sweep that will be refused).
    pinned = run_info.get("model_sha256")
    if pinned and args.model and os.path.isfile(args.model):
        got = file_sha256(args.model)
        if got != pinned:
            raise SweepError(f"{args.out} holds a sweep with different settings (model_sha256 differ: run.json has "
                             f"{pinned[:12]}..., --model {args.model} has {got[:12]}...); use another --out or --fresh")
    if settings["calibration"]["mode"] == "sequential":
        log("sweep: --calibration-mode sequential: every compare call recalibrates (block by block, per "
            "variant); no shared statistics file")
        return calibration_flags(args, path)
    header = calibration_header(path) if os.path.isfile(path) else None
    sha = (header or {}).get("model_sha256")
    if sha and sha == run_info.get("model_sha256"):
        # run.json pins the calibration text by path; the statistics hold its sha256: an edited
        # text is refused like an edited evaluation text (new statistics would mix the table)
        text_sha = file_sha256(args.calibration) if args.calibration and os.path.isfile(args.calibration) else None
        if text_sha and header.get("text_sha256") and text_sha != header["text_sha256"]:
            raise SweepError(f"--calibration {args.calibration} changed since {path} was made from it (sha256 "
                             f"{header['text_sha256'][:12]}..., now {text_sha[:12]}...): the rows done would not "
                             f"be comparable; use another --out or --fresh")
        log(f"sweep: reusing {path} (calibration statistics of the same model)")
    else:
        log(f"sweep: calibrating once into {path} (GPTQ/AWQ statistics for every compare call)")
        run_cli(args.bin, calibrate_argv(args, path))
    return calibration_flags(args, path)
