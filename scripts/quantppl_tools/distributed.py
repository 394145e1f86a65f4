"""A sweep's batches as tasks on a Dask cluster (`scripts/sweep.py --scheduler ...`, docs/sweep.md).

The variants of a sweep are independent, so the engine is Dask's `distributed` scheduler, not a
home-made one. The grid, the batches (--batch-variants, fp32 in the first), the resume rules and
the rows are the local sweep's (sweep.py); what changes is where a batch runs:

- each batch is ONE task, distributed_task.run_batch: one `quantppl compare` call on one worker,
  with --threads = that worker's thread count (unless --threads is given). Every task asks for the
  worker resource `quantppl=1`, and workers are started with `--resources quantppl=1`, so a worker
  runs one batch at a time on all its threads: one forward pass using a machine's cores beats
  several small ones competing for them (memory bandwidth, one model copy per call);
- inputs: by default the workers read --model/--text/--tokenizer at the client's absolute paths
  (shared storage); with --ship-inputs the client reads them, scatters the bytes to the workers,
  and a worker checks size and sha256 before writing them to its cache and running quantppl;
- results come back as tasks finish, in any order; only the client writes the sweep directory,
  each write a temporary file + rename (results.csv, run.json, raw/batch-NNN.json), so a kill of
  the client or of any worker never leaves half a row, and rerunning the command resumes;
- failures: a task whose quantppl call fails (non-zero exit) or whose worker is lost (Dask's
  KilledWorker) is submitted again, up to --retries times; usage and data errors (exit 2, 3) are
  not retried, as the same batch fails the same way anywhere. A batch failed beyond that becomes
  one row per variant with status `failed` and the error, never a dropped variant; such rows
  have no perplexity, so the next run computes them again (sweep_results.read_results). A
  scheduler counts a lost worker against its own `distributed.scheduler.allowed-failures` before
  the client sees anything; `local:N` sets it to 0 so that --retries is the only count.

Every row carries its provenance: model_sha256, text_sha256, quantppl_version, threads (from the
CLI's JSON of that batch), host (the worker's host name) and status. The thread count is part of
it because it changes the order of floating-point sums, so the last digits of a number: rows are
identical to a local sweep's when both run with the same --threads (pass --threads to the sweep
to pin it on a cluster whose machines differ).
"""

import argparse
import datetime
import hashlib
import json
import os
import shlex
import sys
import time

from . import distributed_task
from .paths import REPO
from .sweep_grid import (PINNED_SETTINGS, build_grid, cli_args, fmt_duration,
                         group_size, linear_shapes, progress_line, rows_of_results)
from .sweep_methods import (check_pinned_methods, make_batches, note_rerun_changes, pending_variants,
                            prepare_calibration, sweep_settings)
from .sweep_results import run_cli
from .sweep_results import (BASE_COLUMNS, EXIT_IO, SweepError, atomic_write, columns_for, log,
                            read_results, variant_columns, write_csv)

RESOURCE = "quantppl"          # the worker resource a batch needs one unit of
NOT_RETRIED = (2, 3)           # quantppl UsageError, DataError: deterministic, would fail again
PROVENANCE_COLUMNS = ["status", "error", "attempts", "host", "threads", "model_sha256", "text_sha256",
                      "quantppl_version"]
SHIPPED_FLAGS = ("--model", "--text", "--tokenizer", "--calibration-stats", "--calibration")


def parse_scheduler(text):
    """('local', N) for local:N, ('address', ADDRESS) otherwise."""
    if text.startswith("local:"):
        n = text[len("local:"):]
        if not n.isdigit() or int(n) < 1:
            raise SweepError(f"--scheduler: expected local:N with N >= 1 worker processes, got '{text}'")
        return "local", int(n)
    if not text or text.startswith("-"):
        raise SweepError(f"--scheduler: expected an address like tcp://host:8786 or local:N, got '{text}'")
    return "address", text


def input_paths(args):
    """flag -> client-side path of the inputs; the CLI's defaults made explicit for --ship-inputs
    (a worker's own default would be a different file, or none)."""
    home = os.environ.get("QUANTPPL_HOME") or REPO
    paths = {"--model": args.model, "--text": args.text, "--tokenizer": args.tokenizer}
    if args.ship_inputs:
        paths["--model"] = paths["--model"] or os.path.join(home, "models", "default.pt")
        paths["--text"] = paths["--text"] or os.path.join(home, "data", "default_eval.txt")
    return {flag: os.path.abspath(p) for flag, p in paths.items() if p}


def connect(args):
    """(client, cluster or None). local:N starts N worker processes on this machine, each with
    cores/N threads and one `quantppl` resource, listening on 127.0.0.1 only."""
    try:
        import dask
        from distributed import Client, LocalCluster
    except ImportError:
        raise SweepError("--scheduler needs Dask's distributed package "
                         "(Debian: apt-get install python3-distributed; PyPI: pip install distributed)",
                         EXIT_IO) from None
    kind, value = parse_scheduler(args.scheduler)
    if kind == "local":
        threads = args.threads or max(1, (os.cpu_count() or 1) // value)
        dask.config.set({"distributed.scheduler.allowed-failures": 0})
        cluster = LocalCluster(n_workers=value, threads_per_worker=threads, processes=True, host="127.0.0.1",
                               dashboard_address=None, resources={RESOURCE: 1}, silence_logs=40)
        return Client(cluster), cluster
    try:
        return Client(value, timeout="30s"), None
    except (OSError, TimeoutError) as e:
        raise SweepError(f"--scheduler: cannot reach the Dask scheduler at {value}: {e}", EXIT_IO) from None


def check_workers(client):
    """Refuses a cluster whose workers all lack the `quantppl` resource (the tasks would wait
    forever); a cluster with no worker yet (jobqueue, adaptive) is waited for."""
    workers = client.scheduler_info().get("workers", {})
    able = [w for w in workers.values() if w.get("resources", {}).get(RESOURCE, 0) >= 1]
    if workers and not able:
        raise SweepError(f"none of the {len(workers)} Dask workers offers the resource {RESOURCE}=1 a batch "
                         f"needs: start them with `dask worker ADDRESS --resources {RESOURCE}=1 --nthreads CORES`")
    if not workers:
        log("sweep: no Dask worker connected yet: the batches wait for one")
    return len(able), sum(w.get("nthreads", 0) for w in able)


class Ship:
    """The inputs scattered to every worker (--ship-inputs): size + sha256 computed here, the bytes
    sent once per worker (a worker joining later gets them from another one), scattered again if
    every copy was lost with its workers."""

    def __init__(self, client, paths):
        self.client = client
        self.paths = [(flag, paths[flag]) for flag in SHIPPED_FLAGS if flag in paths]
        self.meta, self.blobs = [], []
        for flag, path in self.paths:
            data = self.read(flag, path)
            digest = hashlib.sha256(data).hexdigest()
            self.meta.append([flag, os.path.basename(path), len(data), digest])
            self.blobs.append(client.scatter(data, broadcast=True, hash=False))
            log(f"sweep: shipping {path} ({len(data)} bytes, sha256 {digest[:12]}...) to the workers")

    @staticmethod
    def read(flag, path):
        try:
            with open(path, "rb") as f:
                return f.read()
        except OSError as e:
            raise SweepError(f"{flag}: cannot read {path}: {e.strerror}", EXIT_IO) from None

    def futures(self):
        for i, blob in enumerate(self.blobs):
            if blob.status != "finished":
                flag, path = self.paths[i]
                # the worker checks the client's size and sha256, so a file changed since is refused there
                self.blobs[i] = self.client.scatter(self.read(flag, path), broadcast=True, hash=False)
                log(f"sweep: every copy of {path} was lost with its workers: shipped again")
        return self.blobs


def rows_of_report(batch, report, canonical, fp32_row, extra_order, host):
    """The rows of one batch's compare JSON, as sweep.run_sweep builds them, plus provenance."""
    rows, _ = rows_of_results(batch, report.get("results", []), canonical, fp32_row, extra_order)
    for row in rows:
        row.update(status="ok", host=host, threads=report.get("threads"), model_sha256=report.get("model_sha256"),
                   text_sha256=report.get("text_sha256"), quantppl_version=report.get("quantppl_version"))
    return rows


def run_distributed_sweep(args):
    """sweep.run_sweep with the batches run as Dask tasks; returns (rows with a perplexity, run_info)."""
    grid = build_grid(args)
    out = args.out
    try:
        os.makedirs(os.path.join(out, "raw"), exist_ok=True)
    except OSError as e:
        raise SweepError(f"--out: cannot create {out}: {e.strerror}", EXIT_IO) from None
    csv_path, run_path = os.path.join(out, "results.csv"), os.path.join(out, "run.json")
    if args.fresh:
        for p in (csv_path, run_path):
            if os.path.exists(p):
                os.unlink(p)
        for n in os.listdir(os.path.join(out, "raw")):
            os.unlink(os.path.join(out, "raw", n))
    rows, old_columns = read_results(csv_path)  # failed rows have no ppl: dropped, computed again
    run_info = {}
    if os.path.exists(run_path):
        with open(run_path, encoding="utf-8") as f:
            run_info = json.load(f)
    msettings = sweep_settings(args)
    check_pinned_methods(run_info, msettings, out)
    if run_info.get("model_sha256"):
        run_info.update(msettings)  # a run.json from before methods existed: an RTN-only sweep
    canonical = dict(run_info.get("canonical_specs", {}))
    extra_order = [c for c in old_columns if c not in BASE_COLUMNS and c not in PROVENANCE_COLUMNS]
    done = {r["variant"] for r in rows}
    fp32_row = next((r for r in rows if r["variant"] == "fp32"), None)

    paths = input_paths(args)
    home = os.environ.get("QUANTPPL_HOME") or REPO
    shapes_model = paths.get("--model") or run_info.get("model") or os.path.join(home, "models", "default.pt")
    shapes = linear_shapes(shapes_model, args.include, args.exclude) if os.path.isfile(shapes_model) else None
    # reruns: RTN specs already done, sent again with their format's pending methods (pairing)
    todo, reruns, partners = pending_variants(grid, done, canonical)
    if fp32_row is None:
        todo = ["fp32"] + [v for v in todo if v != "fp32"]
    if shapes:
        keep = []
        for v in todo:
            g = group_size(v)
            bad = next((n for n, _, i in shapes if g and i % g), None)
            if bad:
                log(f"sweep: skipping {v}: group size {g} does not divide the input dimension of {bad}")
            else:
                keep.append(v)
        todo = keep
    batches = make_batches(todo, args.batch_variants, partners)
    pending = len([v for v in todo if v not in reruns])
    total = len(done) + pending
    if rows:
        log(f"sweep: resuming: {len(done)} variants already in {csv_path}, {pending} to run (--fresh starts over)")
        for v in reruns:
            log(f"sweep: {v} is done but evaluated again with its pending methods (their rtn_delta_nll_* "
                "pair them with their format's RTN row in the same call)")
    if not batches:
        log(f"sweep: nothing to run: all {len(grid)} variants are in {csv_path}")
        return rows, run_info

    # the calibration runs once, here (`quantppl calibrate` on the client); its statistics file (or,
    # in sequential mode, the calibration text) is an input like the model: a path or shipped
    calibration = prepare_calibration(args, run_info, run_cli)
    calibration_flags = []
    for flag, value in zip(calibration[::2], calibration[1::2]):
        if flag in SHIPPED_FLAGS:
            paths[flag] = os.path.abspath(value)
        else:
            calibration_flags += [flag, value]
    # what every task gets besides its variants
    shared_args = argparse.Namespace(**{**vars(args), "model": None, "text": None, "tokenizer": None, "threads": None})
    job_base = {"bin": args.bin, "flags": cli_args(shared_args) + calibration_flags, "threads": args.threads,
                "paths": {} if args.ship_inputs else paths, "shipped": []}
    try:
        import cloudpickle
        cloudpickle.register_pickle_by_value(distributed_task)  # workers need no quantppl_tools
    except (ImportError, AttributeError, ValueError):
        pass

    client, cluster = connect(args)
    first_failure, all_rows = None, rows
    try:
        from distributed import as_completed
        n_workers, n_threads = check_workers(client)
        ship = None
        if args.ship_inputs:
            ship = Ship(client, paths)
            job_base["shipped"] = ship.meta
        log(f"sweep: {len(todo)} variants in {len(batches)} batches of up to {args.batch_variants} on the Dask "
            f"scheduler {client.scheduler.address} ({n_workers} workers, {n_threads} threads), into {out}")

        attempts = [0] * len(batches)
        owner = {}
        pending = as_completed()

        def submit(b):
            attempts[b] += 1
            blobs = ship.futures() if ship else []
            fut = client.submit(distributed_task.run_batch, {**job_base, "variants": batches[b]}, blobs,
                                key=f"quantppl-batch-{b}-try{attempts[b]}-{os.getpid()}-{time.time_ns()}",
                                resources={RESOURCE: 1}, pure=False)
            owner[fut.key] = b
            pending.add(fut)

        for b in range(len(batches)):
            submit(b)
        new_rows = {}          # batch index -> its rows, for the order of results.csv
        started = time.monotonic()
        finished = len(done)
        batch_no = len([n for n in os.listdir(os.path.join(out, "raw")) if n.endswith(".json")])
        for fut in pending:
            b = owner.pop(fut.key)
            batch = batches[b]
            try:
                res = fut.result()
            except Exception as e:  # the worker was lost (KilledWorker), or the task could not run
                detail = str(e).strip().splitlines()[0] if str(e).strip() else ""
                res = {"ok": False, "code": None, "host": "", "error": f"task lost: {type(e).__name__}: {detail}"}
            if not res["ok"]:
                if attempts[b] <= args.retries and res.get("code") not in NOT_RETRIED:
                    log(f"sweep: batch {b + 1} ({', '.join(batch)}) failed on {res.get('host') or 'a lost worker'} "
                        f"(attempt {attempts[b]} of {args.retries + 1}): {res['error']}; retrying")
                    submit(b)
                    continue
                log(f"sweep: batch {b + 1} ({', '.join(batch)}) failed after {attempts[b]} attempt(s): {res['error']}")
                first_failure = first_failure or res
                # a re-evaluated RTN row keeps its good stored row: only the pending ones failed
                new_rows[b] = [{"variant": canonical.get(v, v), **variant_columns(canonical.get(v, v)),
                                "status": "failed", "error": res["error"], "attempts": attempts[b],
                                "host": res.get("host", "")} for v in batch if v not in reruns]
            else:
                report = json.loads(res["stdout"])
                settings = {**{k: v for k, v in report.items() if k != "results"}, **msettings}
                if run_info.get("model_sha256"):
                    changed = [k for k in PINNED_SETTINGS if run_info.get(k) != settings.get(k)]
                    if changed:
                        raise SweepError(f"{out} holds a sweep with different settings ({', '.join(changed)} differ); "
                                         "use another --out or --fresh")
                if len(report.get("results", [])) != len(batch):
                    raise SweepError(f"quantppl returned {len(report.get('results', []))} results for "
                                     f"{len(batch)} variants", 5)
                batch_no += 1
                atomic_write(os.path.join(out, "raw", f"batch-{batch_no:03d}.json"), json.dumps(report, indent=1) + "\n")
                now = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
                if not run_info.get("model_sha256"):
                    run_info = dict(settings, started=now)
                    for flag, key in (("--model", "model"), ("--text", "text")):  # the client's paths, not a worker cache
                        if flag in paths:
                            run_info[key] = paths[flag]
                run_info.update(updated=now, sweep_command=shlex.join(sys.argv), scheduler=args.scheduler,
                                quantppl_version=settings.get("quantppl_version"),
                                libtorch_version=settings.get("libtorch_version"))
                new_rows[b] = rows_of_report(batch, report, canonical, fp32_row, extra_order, res["host"])
                note_rerun_changes(batch, new_rows[b], rows, reruns)
                for r in new_rows[b]:
                    r["attempts"] = attempts[b]
                    if r["variant"] == "fp32":
                        fp32_row = r
                log(f"sweep: batch {b + 1} ({len(batch)} variants) took {fmt_duration(res['seconds'])} "
                    f"on {res['host']} with {res['threads']} threads")
            # results.csv: earlier rows, then this run's in grid order; rewritten whole, atomically (a
            # re-evaluated RTN row replaces the stored one, as in sweep.py: pending_variants says why)
            fresh = [r for k in sorted(new_rows) for r in new_rows[k]]
            renamed = {r["variant"] for r in fresh}
            all_rows = [r for r in rows if r["variant"] not in renamed] + fresh
            write_csv(csv_path, all_rows, columns_for(all_rows, extra_order + PROVENANCE_COLUMNS))
            if run_info:
                run_info["canonical_specs"] = canonical
                atomic_write(run_path, json.dumps(run_info, indent=1) + "\n")
            rerun_names = {canonical.get(v, v) for v in batch if v in reruns}
            for r in new_rows[b]:
                if r["variant"] in rerun_names:  # done before: not progress
                    continue
                finished += 1
                remaining = total - finished
                per_variant = (time.monotonic() - started) / max(1, finished - len(done))
                if r["status"] == "ok":
                    log(progress_line(finished, total, r, per_variant * remaining if remaining else None))
                else:
                    log(f"[{finished}/{total}] {r['variant']}  FAILED")
    finally:
        client.close()
        if cluster is not None:
            cluster.close()
    rows = [r for r in all_rows if r.get("status", "ok") == "ok"]
    failed = [r for r in all_rows if r.get("status") == "failed"]
    if failed:
        code = first_failure.get("code")
        raise SweepError(f"{len(failed)} variants failed after --retries {args.retries} "
                         f"(first: {first_failure['error']}); results.csv lists them with status 'failed'; "
                         "rerun the same command to compute only them", code if code and code > 0 else 1)
    return rows, run_info


def add_arguments(parser):
    """The flags of sweep.py that select this path."""
    d = parser.add_argument_group("distributed (Dask; docs/sweep.md)")
    d.add_argument("--scheduler", metavar="ADDRESS",
                   help="run the batches as tasks on a Dask scheduler (tcp://host:8786), or on a LocalCluster "
                   "of N worker processes started here (local:N); workers need --resources quantppl=1")
    d.add_argument("--ship-inputs", action="store_true",
                   help="send model, text and tokenizer to the workers (checked by size and sha256) instead of "
                   "reading them at the same paths on shared storage")
    d.add_argument("--retries", type=int, default=2, metavar="N",
                   help="resubmit a failed batch or one whose worker died up to N times (default: %(default)s)")


def check_arguments(parser, args):
    if args.scheduler is None:
        if args.ship_inputs:
            parser.error("--ship-inputs needs --scheduler")
        return
    if args.retries < 0:
        parser.error(f"--retries must be >= 0, got {args.retries}")
    try:
        parse_scheduler(args.scheduler)
    except SweepError as e:
        parser.error(str(e))
