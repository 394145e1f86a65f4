"""What a Dask worker runs for a distributed sweep (distributed.py): one `quantppl compare` call on
one batch of variants, which loads the model and tokenizes the text once for the whole batch.

Standard library only, on purpose: the client registers this module with cloudpickle to be shipped
BY VALUE, so a worker needs Python, Dask's `distributed` and the quantppl binary, but not this
package. The task never raises for a failing quantppl call: it returns a dict saying what failed,
and the client decides whether to retry (its --retries); only the loss of the worker itself
surfaces as a Dask error.
"""

import hashlib
import os
import re
import shutil
import socket
import subprocess
import tempfile
import time

CHUNK = 1 << 20


def sha256_bytes(data):
    return hashlib.sha256(data).hexdigest()


def materialize(blob, name, size, sha256, cache_dir):
    """The path of a shipped input on this worker: CACHE/SHA256/NAME, written once per worker
    (temporary file + rename, so a killed task never leaves a half-written input another task
    would trust). The bytes are checked against the client's size and sha256 on every arrival,
    before anything is written or reused."""
    if len(blob) != size:
        raise ValueError(f"shipped {name}: expected {size} bytes, received {len(blob)}")
    got = sha256_bytes(blob)
    if got != sha256:
        raise ValueError(f"shipped {name}: expected sha256 {sha256}, received {got}")
    folder = os.path.join(cache_dir, sha256)
    path = os.path.join(folder, name)
    if os.path.isfile(path) and os.path.getsize(path) == size:
        return path
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix="." + name + ".", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(blob)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def worker_threads():
    """The thread count of the Dask worker running this task (os.cpu_count() outside one)."""
    try:
        from distributed import get_worker
        worker = get_worker()
        n = getattr(getattr(worker, "state", None), "nthreads", None) or getattr(worker, "nthreads", None)
        if n:
            return int(n)
    except Exception:  # not inside a worker (a direct call, as in a test): the machine's cores
        pass
    return os.cpu_count() or 1


def command_prefix():
    """`setpriv --pdeathsig KILL` when available: quantppl dies with the worker thread that started
    it, so a worker killed mid-task leaves no orphan burning the machine's cores."""
    setpriv = shutil.which("setpriv")
    return [setpriv, "--pdeathsig", "KILL"] if setpriv else []


def run_batch(job, blobs):
    """One batch. job: {"bin", "flags" (compare flags besides the inputs, --threads and
    --variants), "variants", "threads" (None: the worker's), "paths" (flag -> path on shared
    storage), "shipped" ([flag, name, size, sha256] in the order of `blobs`), "cache_dir"}.
    Returns {"ok", "stdout" | "error", "code", "host", "threads", "seconds"}."""
    started = time.monotonic()
    host = socket.gethostname()
    threads = job.get("threads") or worker_threads()
    out = {"host": host, "threads": threads}
    try:
        argv = ["compare"]
        for flag, path in job.get("paths", {}).items():
            argv += [flag, path]
        cache_dir = job.get("cache_dir") or os.path.join(tempfile.gettempdir(), "quantppl-inputs")
        for (flag, name, size, sha256), blob in zip(job.get("shipped", []), blobs):
            argv += [flag, materialize(blob, name, size, sha256, cache_dir)]
        argv += [*job["flags"], "--threads", str(threads), "--variants", ",".join(job["variants"]),
                 "--format", "json", "--quiet"]
        binary = job["bin"]
        if not (os.path.isfile(binary) and os.access(binary, os.X_OK)):
            return {**out, "ok": False, "code": 4, "seconds": time.monotonic() - started,
                    "error": f"quantppl binary not found or not executable on {host}: {binary}"}
        r = subprocess.run([*command_prefix(), binary, *argv], capture_output=True, text=True)
    except Exception as e:  # a bad shipped input, a full disk: this batch failed on this worker
        return {**out, "ok": False, "code": 4, "seconds": time.monotonic() - started,
                "error": f"{type(e).__name__}: {e}"}
    out["seconds"] = time.monotonic() - started
    if r.returncode != 0:
        lines = [l for l in r.stderr.strip().splitlines() if l.strip()]
        message = re.sub(r"^quantppl: error: ", "", lines[-1]) if lines else ""
        if not message:
            message = f"killed by signal {-r.returncode}" if r.returncode < 0 else "no message"
        return {**out, "ok": False, "code": r.returncode,
                "error": f"quantppl compare failed (exit {r.returncode}): {message}"}
    return {**out, "ok": True, "code": 0, "stdout": r.stdout}
