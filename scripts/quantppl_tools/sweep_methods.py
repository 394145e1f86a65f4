"""Methods as a sweep dimension (`--methods rtn,awq,hqq,gptq`) and the one calibration of a sweep.

Every grid spec (and --variants item without a method of its own) is crossed with the methods:
rtn is the spec itself, any other method is appended (SPEC+gptq, SPEC+gptq:actorder, SPEC+awq,
SPEC+awq+gptq, SPEC+hqq). HQQ optimises a zero point, so it exists only on the zero-point grids
(zeropoint:B:..., q4_1, q5_1); on any other spec it is skipped with one log line rather than sent
to the CLI, where one invalid spec would fail its whole batch.

A spec's methods run in ONE compare call (batches never split a spec's group), so every method
row is paired token by token with its format's RTN row (the CLI's rtn_delta_nll_mean/ci95, which
it fills only when the same call lists the RTN row).

Calibration: GPTQ and AWQ read activation statistics. With --calibration-mode fp32 (the default)
the sweep runs `quantppl calibrate --output DIR/calibration.qcal` once and passes
--calibration-stats to every compare call (a resumed sweep reuses the file when its recorded model
sha256 is run.json's). With --calibration-mode sequential the statistics depend on the already
quantized blocks of each variant, so no file can be shared: every compare call recalibrates from
the --calibration text.
"""

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


def make_batches(todo, size):
    """Batches of up to `size` variants that never split one spec's methods (a group larger than
    `size` is a batch of its own), in the order of todo."""
    groups = []
    for v in todo:
        if groups and base_spec(groups[-1][0]) == base_spec(v) and v != "fp32":
            groups[-1].append(v)
        else:
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


def calibration_model_sha256(path):
    """The model_sha256 recorded in a calibration file's header (docs/calibration.md), or None
    when the file is not one."""
    try:
        with open(path, "rb") as f:
            head = f.read(16)
            if len(head) != 16 or head[:8] != CALIBRATION_MAGIC:
                return None
            (n,) = struct.unpack("<Q", head[8:])
            if n > 16 << 20:
                return None
            return json.loads(f.read(n).decode("utf-8")).get("model_sha256")
    except (OSError, ValueError, UnicodeDecodeError, AttributeError):
        return None


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
    if settings["calibration"]["mode"] == "sequential":
        log("sweep: --calibration-mode sequential: every compare call recalibrates (block by block, per "
            "variant); no shared statistics file")
        return calibration_flags(args, path)
    sha = calibration_model_sha256(path) if os.path.isfile(path) else None
    if sha and sha == run_info.get("model_sha256"):
        log(f"sweep: reusing {path} (calibration statistics of the same model)")
    else:
        log(f"sweep: calibrating once into {path} (GPTQ/AWQ statistics for every compare call)")
        run_cli(args.bin, calibrate_argv(args, path))
    return calibration_flags(args, path)
