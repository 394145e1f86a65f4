"""Sweep a grid of quantization variants with `quantppl compare` and plot the results.

    scripts/sweep.py --out sweeps/default                      # the full grid on the default model/text
    scripts/sweep.py --out sweeps/quick --schemes absmax --bits 4,8 --granularities tensor,group64 \
        --ranges minmax --report
    scripts/sweep.py --out sweeps/mine --variants absmax:4:channel:mse,zeropoint:3:group32
    scripts/sweep.py --out sweeps/methods --schemes zeropoint --bits 3,4 --granularities group128 \
        --ranges minmax --methods rtn,awq,hqq,gptq --calibration data/calibration.txt

The grid is schemes x bits x granularities x ranges, each spec written SCHEME:BITS:GRAN:RANGE,
or an explicit --variants list, crossed with --methods (rtn = the spec, else SPEC+METHOD; a spec's
methods in one batch; GPTQ/AWQ statistics from one `quantppl calibrate` per sweep: sweep_methods.py); the CLI alone knows the variant grammar: it validates the specs
and reports each one's canonical spelling (`spec`) and storage (`packed_bytes`, `fp32_bytes`,
`compression_ratio`), which the sweep copies. fp32 is always evaluated, first, once; every delta
is against that row. Variants run in batches of --batch-variants in ONE
`quantppl compare --format json --quiet` call each, so the model is loaded and the text tokenized
once per batch. After every batch DIR/results.csv is rewritten (temporary file + rename: a kill
never leaves half a row), so an interrupted sweep resumes where it stopped: rerunning the same
command skips every variant already in results.csv (--fresh starts over), except that a done RTN
row is evaluated again with its format's pending methods, which the CLI pairs with it only in the
same call (sweep_methods.pending_variants). run.json remembers the
canonical spelling of every spec the CLI has seen, so a short spec (absmax:4) is found again.

Outputs in DIR: results.csv (one row per variant, sweep_results.py), run.json (settings of the
run), raw/ (the JSON of every compare call), PNG plots (sweep_plots.py), and with --report
report.html + report.md (report.py).

With --scheduler (tcp://host:8786, or local:N) the batches run as tasks on a Dask cluster instead,
results streaming back into the same results.csv; that path is distributed.py.

Effective bits per weight (column effective_bits_per_weight): the storage a variant needs per
quantized weight, codes plus quantization parameters, as the CLI counts it for a .qpack file
(packed_size_bytes, docs/qpack-format.md): the CLI's bits_per_weight when it reports one, else

    effective_bits = 8 * packed_bytes / (fp32_bytes / 4) = 32 * packed_bytes / fp32_bytes

(fp32: 32). Layer shapes are read from the model with torch (when importable) for one purpose
only: to skip a group size that does not divide some layer's input dimension instead of failing
its whole batch.

Exit codes: 0 done; 2 usage error (bad flag, grid or variant spec); 4 missing binary or unwritable
DIR; 130 interrupted (rerun to resume); a failing `quantppl` call passes its own code through (with
--scheduler: after the other batches; 1 when a worker was lost beyond --retries).
"""

import argparse
import datetime
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time

from . import distributed, report
from .paths import REPO
from .sweep_grid import (PINNED_SETTINGS, build_grid, cli_args, fmt_duration,
                         group_size, linear_shapes, progress_line, rows_of_results)
from .sweep_methods import (METHODS, check_pinned_methods, make_batches, note_rerun_changes,
                            pending_variants, prepare_calibration, sweep_settings)
from .sweep_plots import plot_all
from .sweep_results import run_cli
from .sweep_results import (BASE_COLUMNS, EXIT_INTERRUPTED, EXIT_IO, EXIT_USAGE, SweepError, atomic_write,
                            columns_for, log, read_results, write_csv)

DEFAULT_BIN = os.environ.get("QUANTPPL_BIN") or os.path.join(REPO, "build", "quantppl")

DEFAULT_GRANULARITIES = "tensor,channel,group32,group64,group128"
DEFAULT_RANGES = "minmax,p99.9,p99.99,mse"



# ---------------------------------------------------------------------------------------------
# Running quantppl


def check_binary(binary):
    if not (os.path.isfile(binary) and os.access(binary, os.X_OK)):
        raise SweepError(f"quantppl binary not found or not executable: {binary} "
                         "(build it, or pass --bin / set QUANTPPL_BIN)", EXIT_IO)


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
    msettings = sweep_settings(args)
    check_pinned_methods(run_info, msettings, out)
    if run_info.get("model_sha256"):
        run_info.update(msettings)  # a run.json from before methods existed: an RTN-only sweep
    # spec as given -> canonical spec, as the CLI reported it (a canonical spec maps to itself)
    canonical = dict(run_info.get("canonical_specs", {}))
    extra_order = [c for c in old_columns if c not in BASE_COLUMNS]
    done = {r["variant"] for r in rows}
    fp32_row = next((r for r in rows if r["variant"] == "fp32"), None)

    # Layer shapes before the first call, so group sizes that cannot apply are skipped up front;
    # re-read if the CLI reports a different model than the one guessed here.
    home = os.environ.get("QUANTPPL_HOME") or REPO
    shapes_model = args.model or run_info.get("model") or os.path.join(home, "models", "default.pt")
    shapes = linear_shapes(shapes_model, args.include, args.exclude) if os.path.isfile(shapes_model) else None
    shapes_checked = False

    # reruns: RTN specs already done, sent again with their format's pending methods (pairing)
    todo, reruns, partners = pending_variants(grid, done, canonical)
    if fp32_row is None:
        todo = ["fp32"] + [v for v in todo if v != "fp32"]
    if rows:
        pending = len(todo) - len(reruns)
        log(f"sweep: resuming: {len(grid) - pending} of {len(grid)} variants already in {csv_path}, "
            f"{pending} to run (--fresh starts over)")
        for v in reruns:
            log(f"sweep: {v} is done but evaluated again with its pending methods (their rtn_delta_nll_* "
                "pair them with their format's RTN row in the same call)")
    else:
        log(f"sweep: {len(grid)} variants (fp32 first), batches of {args.batch_variants}, into {out}")

    total = len(grid)
    finished = len(grid) - (len(todo) - len(reruns))
    started = time.monotonic()
    computed = 0
    batch_no = len([n for n in os.listdir(os.path.join(out, "raw")) if n.endswith(".json")])
    calibration = prepare_calibration(args, run_info, run_cli) if todo else []
    for batch in make_batches(todo, args.batch_variants, partners):
        if shapes:  # a group size that does not divide a layer's input dimension: skip, say why
            keep = []
            for v in batch:
                g = group_size(v)
                bad = next((n for n, _, i in shapes if g and i % g), None)
                if bad:
                    log(f"sweep: skipping {v}: group size {g} does not divide the input dimension of {bad}")
                    total -= v not in reruns
                else:
                    keep.append(v)
            batch = keep
            if not batch:
                continue
        argv = ["compare", *cli_args(args), *calibration, "--variants", ",".join(batch), "--format", "json",
                "--quiet"]
        t0 = time.monotonic()
        cli_report = json.loads(run_cli(args.bin, argv))
        settings = {**{k: v for k, v in cli_report.items() if k != "results"}, **msettings}
        if run_info.get("model_sha256"):
            changed = [k for k in PINNED_SETTINGS if run_info.get(k) != settings.get(k)]
            if changed:
                raise SweepError(f"{out} holds a sweep with different settings ({', '.join(changed)} differ); "
                                 "use another --out or --fresh")
        batch_no += 1
        atomic_write(os.path.join(out, "raw", f"batch-{batch_no:03d}.json"), json.dumps(cli_report, indent=1) + "\n")
        if not shapes_checked:
            shapes_checked = True
            if not os.path.isfile(shapes_model) or not os.path.samefile(shapes_model, settings["model"]):
                shapes = linear_shapes(settings["model"], args.include, args.exclude)
        if not run_info.get("model_sha256"):
            run_info = dict(settings)
            run_info["started"] = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
        run_info["updated"] = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
        run_info["sweep_command"] = shlex.join([sys.argv[0], *sys.argv[1:]])
        run_info["last_cli_command"] = shlex.join([args.bin, *argv])
        run_info["quantppl_version"] = settings.get("quantppl_version")
        run_info["libtorch_version"] = settings.get("libtorch_version")

        results = cli_report.get("results", [])
        if len(results) != len(batch):
            raise SweepError(f"quantppl returned {len(results)} results for {len(batch)} variants", 5)
        new_rows, fp32_row = rows_of_results(batch, results, canonical, fp32_row, extra_order)
        note_rerun_changes(batch, new_rows, rows, reruns)
        # a spec written two ways (absmax:4, absmax:4:tensor:minmax) is one row: the newer one; a
        # re-evaluated RTN row (reruns) too: the one its methods were paired with (pending_variants)
        renamed = {row["variant"] for row in new_rows}
        rows = [row for row in rows if row["variant"] not in renamed] + new_rows
        run_info["canonical_specs"] = canonical
        write_csv(csv_path, rows, columns_for(rows, extra_order))
        atomic_write(run_path, json.dumps(run_info, indent=1) + "\n")

        elapsed_batch = time.monotonic() - t0
        computed += len(batch)
        per_variant = (time.monotonic() - started) / computed
        for v, row in zip(batch, new_rows):
            if v in reruns:  # done before: not progress
                continue
            finished += 1
            remaining = total - finished
            log(progress_line(finished, total, row, per_variant * remaining if remaining else None))
        log(f"sweep: batch {batch_no} ({len(batch)} variants) took {fmt_duration(elapsed_batch)}")
    if computed == 0:
        log(f"sweep: nothing to run: all {len(grid)} variants are in {csv_path}")
    return rows, run_info


def run_sensitivity(args, run_info):
    """Runs `quantppl sensitivity --format json`, saves DIR/sensitivity.json, returns the report
    (None with a message when the subcommand does not exist)."""
    if not has_subcommand(args.bin, "sensitivity"):
        log(f"sweep: {args.bin} has no 'sensitivity' subcommand (not built yet?): skipping the sensitivity chart")
        return None
    spec = args.sensitivity.strip()
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
        "Formulas, outputs and exit codes: the top of scripts/quantppl_tools/sweep.py and docs/sweep.md.")
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
    p.add_argument("--sensitivity", metavar="SPEC", help="also chart `quantppl sensitivity --variant SPEC`")
    p.add_argument("--sensitivity-max-tokens", type=int, metavar="N", help="--max-tokens for the sensitivity run")
    p.add_argument("--report", action="store_true", help="also write report.html and report.md (scripts/report.py)")
    c = p.add_argument_group("passed through to quantppl compare")
    c.add_argument("--mode", choices=["reconstruct", "prefix", "causal", "llamacpp"],
                   help="default: the model's (reconstruct for T5, causal for causal models)")
    c.add_argument("--stride", type=int, help="with --mode causal: the Hugging Face sliding window")
    c.add_argument("--max-length", type=int)
    c.add_argument("--batch-size", type=int)
    c.add_argument("--threads", type=int)
    c.add_argument("--include", metavar="REGEX")
    c.add_argument("--exclude", metavar="REGEX")
    m = p.add_argument_group("methods (a grid dimension) and their calibration")
    m.add_argument("--methods", default="rtn", metavar="LIST",
                   help=f"comma-separated methods crossed with every spec: {', '.join(METHODS)} (rtn: the spec "
                   "itself; hqq only on zero-point specs, skipped on others); a spec's methods run in one "
                   "compare call (default: %(default)s)")
    m.add_argument("--calibration", metavar="FILE", help="calibration text for gptq/awq (default: the CLI's)")
    m.add_argument("--calibration-tokens", type=int, metavar="N", help="calibration tokens (default: the CLI's)")
    m.add_argument("--calibration-mode", choices=["fp32", "sequential"],
                   help="fp32 (default): `quantppl calibrate` runs once into DIR/calibration.qcal, passed as "
                   "--calibration-stats to every call; sequential: every compare call recalibrates")
    distributed.add_arguments(p)
    args = p.parse_args(argv)
    distributed.check_arguments(p, args)
    if args.fresh and args.resume:
        p.error("--fresh and --resume contradict each other")
    if args.batch_variants < 1:
        p.error(f"--batch-variants must be >= 1, got {args.batch_variants}")
    try:
        sweep_settings(args)
    except SweepError as e:
        p.error(str(e))
    if args.calibration_tokens is not None and args.calibration_tokens < 1:
        p.error(f"--calibration-tokens must be >= 1, got {args.calibration_tokens}")
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
        rows, run_info = distributed.run_distributed_sweep(args) if args.scheduler else run_sweep(args)
        sensitivity = run_sensitivity(args, run_info) if args.sensitivity else None
        if sensitivity is None and os.path.exists(os.path.join(args.out, "sensitivity.json")):
            with open(os.path.join(args.out, "sensitivity.json"), encoding="utf-8") as f:
                sensitivity = json.load(f)
        written = plot_all(args.out, rows, run_info, sensitivity)
        log(f"sweep: wrote {os.path.join(args.out, 'results.csv')} ({len(rows)} rows)"
            + (f" and {', '.join(w for w, _ in written)}" if written else ""))
        if args.report:
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
