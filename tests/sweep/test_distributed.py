"""Tests of `scripts/sweep.py --scheduler` (issue 18) with a real Dask scheduler and real workers.

The test starts `dask-scheduler` and two `dask-worker` processes itself, bound to 127.0.0.1 only
(the scheduler on a port the system picks, its address read from --scheduler-file), each in its own
process group, and kills every group at the end. Workers get no PYTHONPATH: the task code reaches
them by value, as on a cluster without this checkout.

- kill one worker while its quantppl call runs: the sweep retries that batch on the other worker
  and finishes with every variant present once, numbers identical to a local sweep's (reference:
  the same grid run by `sweep.py` without --scheduler), provenance checked against hashlib;
- a batch failing beyond --retries becomes `failed` rows with the error, a usage error is not
  retried, and a rerun computes only what is missing;
- `local:N` starts its own cluster; shipped inputs are checked by size and sha256.

    QUANTPPL_BIN=build/quantppl QUANTPPL_FIXTURES=build/fixtures /usr/bin/python3 -m pytest -q tests/sweep/test_distributed.py
"""

import csv
import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import time

import distributed  # python3-distributed (scripts/setup.sh): a missing package fails here, not skips
import psutil
import pytest

from quantppl_tools import distributed_task

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BIN = os.path.abspath(os.environ.get("QUANTPPL_BIN", os.path.join(REPO, "build", "quantppl")))
FIXTURES = os.path.abspath(os.environ.get("QUANTPPL_FIXTURES", os.path.join(REPO, "build", "fixtures")))
TINY = os.path.join(FIXTURES, "tiny.pt")
DEFAULT_MODEL = os.path.join(REPO, "models", "default.pt")
SWEEP = os.path.join(REPO, "scripts", "sweep.py")

# fp32 + 4 variants, one per batch: 5 tasks for 2 workers
VARIANTS = "absmax:4:tensor:minmax,absmax:8:channel:minmax,zeropoint:4:group64:minmax,zeropoint:3:channel:mse"
GRID = ["--variants", VARIANTS, "--batch-variants", "1"]
# columns that may differ between two runs of the same variant: timing, and where/how it ran
# timings and where a row ran (a shipped calibration file's path is the worker's cache) may differ
RUN_COLUMNS = {"seconds", "method_seconds", "host", "attempts", "status", "error", "threads", "calibration",
               "calibration_stats"}
STARTUP_TIMEOUT = 120
SWEEP_TIMEOUT = 900


def sha256(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def dask_command(name):
    """`python -m distributed.cli.dask_NAME` with this interpreter (the Debian package's
    /usr/bin/dask-NAME are the same entry points)."""
    return [sys.executable, "-m", f"distributed.cli.dask_{name}"]


def start(cmd, log_path, env):
    log = open(log_path, "wb")
    try:
        return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    finally:
        log.close()


def stop(proc):
    """Ends a process group the test started: SIGTERM, then SIGKILL after 10 s."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=10)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(timeout=10)


class Cluster:
    def __init__(self, root):
        self.root = root
        self.procs = {}
        self.address = None

    def __enter__(self):
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        env.update(DASK_DISTRIBUTED__SCHEDULER__ALLOWED_FAILURES="0",  # every loss reaches --retries
                   DASK_DISTRIBUTED__COMM__TIMEOUTS__CONNECT="30s")
        scheduler_file = str(self.root / "scheduler.json")
        self.procs["scheduler"] = start(dask_command("scheduler") + [
            "--host", "127.0.0.1", "--port", "0", "--no-dashboard", "--scheduler-file", scheduler_file],
            self.root / "scheduler.log", env)
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while not os.path.exists(scheduler_file):
            assert self.procs["scheduler"].poll() is None, (self.root / "scheduler.log").read_text()
            assert time.monotonic() < deadline, "dask-scheduler did not start"
            time.sleep(0.2)
        time.sleep(0.5)  # the file is written whole before this returns on any sane filesystem
        with open(scheduler_file) as f:
            self.address = json.load(f)["address"]
        assert self.address.startswith("tcp://127.0.0.1:"), self.address
        for name in ("A", "B"):
            work = self.root / f"worker-{name}"
            work.mkdir()
            self.procs[name] = start(dask_command("worker") + [
                self.address, "--host", "127.0.0.1", "--no-dashboard", "--no-nanny", "--nthreads", "1",
                "--resources", "quantppl=1", "--name", name, "--local-directory", str(work)],
                self.root / f"worker-{name}.log", dict(env, TMPDIR=str(work)))
        with distributed.Client(self.address, timeout="60s") as client:
            client.wait_for_workers(2, timeout=STARTUP_TIMEOUT)
        return self

    def __exit__(self, *exc):
        for name in reversed(list(self.procs)):
            stop(self.procs[name])

    def kill_worker_mid_task(self, name, sweep, timeout=SWEEP_TIMEOUT):
        """SIGKILLs worker NAME's process group as soon as a quantppl call runs under it; returns
        whether it did (False if the sweep ended first)."""
        worker = psutil.Process(self.procs[name].pid)
        deadline = time.monotonic() + timeout
        while sweep.poll() is None and time.monotonic() < deadline:
            try:
                running = [p for p in worker.children(recursive=True) if "quantppl" in " ".join(p.cmdline())]
            except psutil.Error:
                running = []
            if running:
                os.killpg(self.procs[name].pid, signal.SIGKILL)
                self.procs[name].wait(timeout=10)
                return True
            time.sleep(0.02)
        return False


@pytest.fixture(scope="module")
def text_file(tmp_path_factory):
    """The first ~1,500 characters of the shipped evaluation text: a few windows, a short test."""
    with open(os.path.join(REPO, "data", "default_eval.txt"), encoding="utf-8") as f:
        text = f.read()
    cut = text.index("\n", 1500)
    path = tmp_path_factory.mktemp("text") / "short.txt"
    path.write_text(text[:cut + 1], encoding="utf-8")
    return str(path)


@pytest.fixture(scope="module")
def binary():
    if not os.access(BIN, os.X_OK):
        pytest.skip(f"no quantppl binary at {BIN}")
    return BIN


def sweep_cmd(out, *extra, binary=BIN):
    return [sys.executable, SWEEP, "--bin", binary, "--out", str(out), *extra]


@pytest.fixture(scope="module")
def local_reference(tmp_path_factory, binary, text_file):
    """The same grid without --scheduler: the numbers the distributed runs must reproduce."""
    out = tmp_path_factory.mktemp("local") / "out"
    r = subprocess.run(sweep_cmd(out, "--model", DEFAULT_MODEL, "--text", text_file, "--threads", "1", *GRID),
                       capture_output=True, text=True, timeout=SWEEP_TIMEOUT)
    assert r.returncode == 0, r.stderr
    return {row["variant"]: row for row in read_csv(out / "results.csv")}


def assert_same_numbers(rows, reference):
    assert sorted(r["variant"] for r in rows) == sorted(reference)  # every variant, each once
    for row in rows:
        ref = reference[row["variant"]]
        for column, value in ref.items():
            if column not in RUN_COLUMNS:
                assert row[column] == value, (row["variant"], column, row[column], value)


def test_a_worker_killed_mid_sweep_changes_nothing_but_the_attempt_count(tmp_path, binary, text_file,
                                                                           local_reference):
    out = tmp_path / "out"
    with Cluster(tmp_path) as cluster:
        cmd = sweep_cmd(out, "--model", DEFAULT_MODEL, "--text", text_file, *GRID,
                        "--scheduler", cluster.address, "--ship-inputs", "--retries", "2")
        with open(tmp_path / "sweep.log", "w") as log:
            sweep = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        try:
            killed = cluster.kill_worker_mid_task("A", sweep)
            sweep.wait(timeout=SWEEP_TIMEOUT)
        finally:
            if sweep.poll() is None:
                sweep.kill()
        stderr = (tmp_path / "sweep.log").read_text()
        assert killed, "worker A never ran a quantppl call:\n" + stderr
        assert sweep.returncode == 0, stderr
        assert "task lost" in stderr and "retrying" in stderr, stderr

        rows = read_csv(out / "results.csv")
        assert_same_numbers(rows, local_reference)
        assert [r["variant"] for r in rows] == list(local_reference)  # grid order, as the local sweep
        assert {r["status"] for r in rows} == {"ok"}
        assert max(int(r["attempts"]) for r in rows) == 2  # the batch A was running, done again on B
        for r in rows:
            assert r["host"] == socket.gethostname()
            assert r["model_sha256"] == sha256(DEFAULT_MODEL)
            assert r["text_sha256"] == sha256(text_file)
            assert r["quantppl_version"] and r["threads"] == "1"  # the workers' --nthreads
        run = json.loads((out / "run.json").read_text())
        assert run["model"] == DEFAULT_MODEL and run["text"] == text_file  # the client's paths, not a worker's cache
        assert len(list((out / "raw").glob("batch-*.json"))) == len(rows)

        # resume with the one worker left: only the rows removed are computed again
        with open(out / "results.csv", newline="") as f:
            lines = f.readlines()
        with open(out / "results.csv", "w", newline="") as f:
            f.writelines(lines[:-2])
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=SWEEP_TIMEOUT)
        assert r.returncode == 0, r.stderr
        assert "3 variants already in" in r.stderr and "2 to run" in r.stderr, r.stderr
        assert_same_numbers(read_csv(out / "results.csv"), local_reference)


def fake_binary(path, code, message):
    path.write_text(f"#!/bin/sh\necho 'quantppl: error: {message}' >&2\nexit {code}\n")
    path.chmod(0o755)
    return str(path)


def test_failures_beyond_retries_are_rows_with_their_error_and_a_rerun_completes_them(tmp_path, binary,
                                                                                     text_file):
    out = tmp_path / "out"
    common = ["--model", TINY, "--text", text_file, "--variants", "absmax:4,absmax:8", "--batch-variants", "2",
              "--threads", "1"]
    with Cluster(tmp_path) as cluster:
        # an I/O error (exit 4) may be transient: retried, then recorded
        flaky = fake_binary(tmp_path / "io-error", 4, "cannot read model 'x': Input/output error")
        r = subprocess.run(sweep_cmd(out, *common, "--scheduler", cluster.address, "--retries", "1", binary=flaky),
                           capture_output=True, text=True, timeout=SWEEP_TIMEOUT)
        assert r.returncode == 4, r.stderr
        assert r.stderr.count("retrying") == 2, r.stderr  # two batches (fp32 + absmax:4, absmax:8), once each
        rows = read_csv(out / "results.csv")
        assert sorted(row["variant"] for row in rows) == ["absmax:4", "absmax:8", "fp32"]
        for row in rows:
            assert row["status"] == "failed" and row["ppl"] == "" and row["attempts"] == "2"
            assert "Input/output error" in row["error"] and "exit 4" in row["error"]

        # a usage error (exit 2) fails the same way anywhere: not retried
        usage = fake_binary(tmp_path / "usage-error", 2, "--variants: bad spec")
        r = subprocess.run(sweep_cmd(out, *common, "--scheduler", cluster.address, "--retries", "3", binary=usage),
                           capture_output=True, text=True, timeout=SWEEP_TIMEOUT)
        assert r.returncode == 2 and "retrying" not in r.stderr, r.stderr
        assert {row["attempts"] for row in read_csv(out / "results.csv")} == {"1"}

        # the real binary: failed rows are missing rows, computed now
        r = subprocess.run(sweep_cmd(out, *common, "--scheduler", cluster.address), capture_output=True, text=True,
                           timeout=SWEEP_TIMEOUT)
        assert r.returncode == 0, r.stderr
        rows = read_csv(out / "results.csv")
        assert sorted(row["variant"] for row in rows) == ["absmax:4:tensor:minmax", "absmax:8:tensor:minmax", "fp32"]
        assert {row["status"] for row in rows} == {"ok"} and all(float(row["ppl"]) > 1 for row in rows)


def test_local_cluster_matches_a_local_sweep(tmp_path, binary, text_file):
    common = ["--model", TINY, "--text", text_file, "--variants", "absmax:4,zeropoint:8:group64", "--batch-variants",
              "1", "--threads", "1"]
    r = subprocess.run(sweep_cmd(tmp_path / "local", *common), capture_output=True, text=True, timeout=SWEEP_TIMEOUT)
    assert r.returncode == 0, r.stderr
    reference = {row["variant"]: row for row in read_csv(tmp_path / "local" / "results.csv")}
    r = subprocess.run(sweep_cmd(tmp_path / "dask", *common, "--scheduler", "local:2", "--ship-inputs"),
                       capture_output=True, text=True, timeout=SWEEP_TIMEOUT)
    assert r.returncode == 0, r.stderr
    assert "2 workers" in r.stderr, r.stderr
    assert_same_numbers(read_csv(tmp_path / "dask" / "results.csv"), reference)


def test_shipped_inputs_are_checked_by_size_and_sha256(tmp_path):
    data = b"model bytes"
    digest = hashlib.sha256(data).hexdigest()
    with pytest.raises(ValueError, match="expected 12 bytes, received 11"):
        distributed_task.materialize(data, "m.pt", 12, digest, str(tmp_path))
    with pytest.raises(ValueError, match="expected sha256 0+, received " + digest):
        distributed_task.materialize(data, "m.pt", len(data), "0" * 64, str(tmp_path))
    assert not any(tmp_path.iterdir())  # nothing written for refused bytes
    path = distributed_task.materialize(data, "m.pt", len(data), digest, str(tmp_path))
    assert path == str(tmp_path / digest / "m.pt") and open(path, "rb").read() == data


class FakeClient:
    def __init__(self, workers):
        self.workers = workers

    def scheduler_info(self):
        return {"workers": self.workers}


def test_a_cluster_without_the_quantppl_resource_is_refused_and_an_empty_one_waited_for():
    from quantppl_tools import distributed as dist
    from quantppl_tools.sweep_results import SweepError
    with pytest.raises(SweepError, match="--resources quantppl=1"):
        dist.check_workers(FakeClient({"tcp://127.0.0.1:1": {"nthreads": 4, "resources": {}}}))
    assert dist.check_workers(FakeClient({})) == (0, 0)
    assert dist.check_workers(FakeClient({"a": {"nthreads": 4, "resources": {"quantppl": 1}},
                                          "b": {"nthreads": 8, "resources": {}}})) == (1, 4)


def test_scheduler_flag_errors_are_one_line_usage_errors(tmp_path):
    for args, needle in ((["--scheduler", "local:0"], "local:N"), (["--ship-inputs"], "--ship-inputs needs --scheduler"),
                         (["--scheduler", "local:1", "--retries", "-1"], "--retries")):
        r = subprocess.run(sweep_cmd(tmp_path / "x", *args), capture_output=True, text=True, timeout=120)
        assert r.returncode == 2 and needle in r.stderr and "Traceback" not in r.stderr, r.stderr
