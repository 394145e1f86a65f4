"""Interrupted runs (issue 6): SIGINT / SIGTERM leave no partial or temporary output file, exit
130 / 143 and print one line, `quantppl: interrupted (SIGINT)`. See include/quantppl/output_file.h.

Run by CTest as part of `cli_reliability` (QUANTPPL_BIN, QUANTPPL_FIXTURES in the environment).
"""

import os
import pty
import re
import select
import shutil
import signal
import subprocess
import time

import pytest

from cli.conftest import BIN, CRASH_MARKERS, DEFAULT_MODEL, DEFAULT_TEXT, TINY

VARIANTS = "fp32,absmax:8,zeropoint:4:group64,absmax:4:channel:mse,zeropoint:8:tensor:p99.9"
SIGNALS = [(signal.SIGINT, 130, "SIGINT"), (signal.SIGTERM, 143, "SIGTERM")]


def long_compare(tmp_path):
    """A compare that runs for a minute or more, writing JSON to tmp_path/r.json."""
    text = tmp_path / "long.txt"
    with open(DEFAULT_TEXT, encoding="utf-8") as f:
        text.write_text(f.read() * 3, encoding="utf-8")
    model = DEFAULT_MODEL if os.path.exists(DEFAULT_MODEL) else TINY
    return [BIN, "compare", "--model", model, "--text", str(text), "--variants", VARIANTS, "--format", "json",
            "--output", str(tmp_path / "r.json"), "--threads", "1"]


def assert_nothing_written(tmp_path):
    # Neither r.json nor r.json.tmp.*: only the input text.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["long.txt"]


@pytest.mark.parametrize("sig,code,name", SIGNALS)
def test_signal_during_progress_on_a_terminal(tmp_path, sig, code, name):
    """As a user at a terminal sees it: the progress bar runs, Ctrl-C (or a kill) ends it."""
    master, slave = pty.openpty()
    proc = subprocess.Popen(long_compare(tmp_path), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=slave)
    os.close(slave)
    seen = b""
    deadline = time.monotonic() + 300
    try:
        # Wait until the progress bar shows a batch done ("1/..." after "[" and "]").
        while not re.search(rb"\] [1-9][0-9]*/[0-9]+", seen):
            assert time.monotonic() < deadline, seen[-500:]
            assert proc.poll() is None, ("the run ended before it could be interrupted", seen[-500:])
            if select.select([master], [], [], 0.5)[0]:
                seen += os.read(master, 4096)
        proc.send_signal(sig)
        stdout, _ = proc.communicate(timeout=120)
        while True:  # the rest of the terminal's output, until the child side is closed
            try:
                chunk = os.read(master, 4096) if select.select([master], [], [], 1.0)[0] else b""
            except OSError:  # EIO: no process holds the terminal any more
                chunk = b""
            if not chunk:
                break
            seen += chunk
    finally:
        if proc.poll() is None:
            proc.kill()
        os.close(master)
    assert proc.returncode == code, (proc.returncode, seen[-500:])
    assert stdout == b""
    # The last line replaces the progress bar ("\r\033[K", as the bar clears itself) and is the only
    # thing printed after it.
    last = seen.rsplit(b"\r\x1b[K", 1)[-1].decode()
    assert last.replace("\r\n", "\n") == f"quantppl: interrupted ({name})\n", seen[-500:]
    for marker in CRASH_MARKERS:
        assert marker not in seen.decode(errors="replace")
    assert_nothing_written(tmp_path)


@pytest.mark.parametrize("sig,code,name", SIGNALS)
def test_signal_without_a_terminal_prints_exactly_one_line(tmp_path, sig, code, name):
    proc = subprocess.Popen(long_compare(tmp_path), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    # No progress bar without a terminal: give it time to load the model and start evaluating.
    time.sleep(2.0)
    assert proc.poll() is None, "the run finished before it could be interrupted: give it more work"
    proc.send_signal(sig)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == code, (proc.returncode, stderr)
    assert stdout == ""
    assert stderr == f"quantppl: interrupted ({name})\n"
    assert_nothing_written(tmp_path)


def build_preload(tmp_path_factory, name, source):
    """Compiles `source` into an LD_PRELOAD library lib<name>.so; skips the test without a compiler."""
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        pytest.skip("no C compiler to build the LD_PRELOAD helper")
    d = tmp_path_factory.mktemp("preload")
    src = d / f"{name}.c"
    src.write_text(source)
    lib = d / f"lib{name}.so"
    subprocess.run([cc, "-shared", "-fPIC", "-O1", str(src), "-o", str(lib), "-ldl"], check=True)
    return str(lib)


def preload_env(lib, **extra):
    env = dict(os.environ, LD_PRELOAD=lib, **extra)
    # A sanitized binary wants its runtime first in the library list; the helper does not need it.
    env["ASAN_OPTIONS"] = ":".join(filter(None, [os.environ.get("ASAN_OPTIONS", ""), "verify_asan_link_order=0"]))
    return env


@pytest.fixture(scope="module")
def slow_fsync(tmp_path_factory):
    """An LD_PRELOAD library whose fsync() sleeps: it holds a run inside write_file_atomically, with
    the temporary file on disk, for as long as the test needs to interrupt it there."""
    return build_preload(tmp_path_factory, "slow_fsync",
                         "#include <unistd.h>\nint fsync(int fd) { (void)fd; sleep(60); return 0; }\n")


# Files LibTorch writes (ContractModel::save, through output_file.h's stream: fsync()ed only at the
# end) or that are handed to a loader by path (an embedded .qpack model, never fsync()ed): to hold a run in the middle of
# writing one, write() and writev() sleep once, right after the first write to a file whose path
# contains $SLOW_WRITE_PATH_CONTAINS. The file is then on disk, partly written.
SLOW_WRITE_SOURCE = r"""
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/uio.h>
#include <unistd.h>

static int held;

static void hold_after_first_write_to_the_file(int fd) {
  const char* needle = getenv("SLOW_WRITE_PATH_CONTAINS");
  char link[64], target[4096];
  if (held || needle == NULL || *needle == '\0') return;
  snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
  const ssize_t n = readlink(link, target, sizeof target - 1);
  if (n <= 0) return;
  target[n] = '\0';
  if (strstr(target, needle) == NULL) return;
  held = 1;
  sleep(60);
}

ssize_t write(int fd, const void* buf, size_t count) {
  static ssize_t (*real)(int, const void*, size_t);
  if (real == NULL) real = (ssize_t (*)(int, const void*, size_t))dlsym(RTLD_NEXT, "write");
  const ssize_t r = real(fd, buf, count);
  if (r > 0) hold_after_first_write_to_the_file(fd);
  return r;
}

ssize_t writev(int fd, const struct iovec* iov, int iovcnt) {
  static ssize_t (*real)(int, const struct iovec*, int);
  if (real == NULL) real = (ssize_t (*)(int, const struct iovec*, int))dlsym(RTLD_NEXT, "writev");
  const ssize_t r = real(fd, iov, iovcnt);
  if (r > 0) hold_after_first_write_to_the_file(fd);
  return r;
}
"""


@pytest.fixture(scope="module")
def slow_write(tmp_path_factory):
    return build_preload(tmp_path_factory, "slow_write", SLOW_WRITE_SOURCE)


def wait_for_partial_file(proc, directory, matches):
    """Waits until a non-empty file whose name `matches` is in `directory` (the preload then holds
    the run right after writing its first bytes); returns its path."""
    deadline = time.monotonic() + 120
    while True:
        assert time.monotonic() < deadline
        assert proc.poll() is None, proc.communicate()
        found = [p for p in directory.iterdir() if matches(p.name) and p.stat().st_size > 0]
        if found:
            return found[0]
        time.sleep(0.05)


def interrupt_while_writing(args, env, directory, matches, sig, code, name, blocked_in):
    """Runs quantppl `args`, waits until the temporary file `matches` names is being written in
    `directory` (held there by a preload), sends `sig`, and checks the one-line exit."""
    proc = subprocess.Popen([BIN, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        temp = wait_for_partial_file(proc, directory, matches)
        time.sleep(0.2)  # well inside the sleeping call
        assert temp.exists(), "the temporary file went away before the signal: %s did not block" % blocked_in
        proc.send_signal(sig)
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == code, (proc.returncode, stderr)
    assert stdout == ""
    assert stderr == f"quantppl: interrupted ({name})\n"


@pytest.mark.parametrize("sig,code,name", SIGNALS)
def test_signal_while_the_output_is_written_removes_the_temporary_file(tmp_path, slow_fsync, sig, code, name):
    out = tmp_path / "r.json"
    interrupt_while_writing(["compare", "--model", TINY, "--variants", "fp32", "--format", "json", "--output", str(out)],
                            preload_env(slow_fsync), tmp_path, lambda n: n.startswith("r.json.tmp."), sig, code,
                            name, "fsync()")
    assert list(tmp_path.iterdir()) == []  # neither r.json nor r.json.tmp.*


@pytest.mark.parametrize("sig,code,name", SIGNALS)
def test_signal_while_quantize_writes_the_model_removes_the_temporary_file(tmp_path, slow_write, sig, code, name):
    # ContractModel::save: LibTorch's archive goes to "q.pt.tmp.XXXXXXXX" beside q.pt (output_file.h), then it is renamed.
    out = tmp_path / "q.pt"
    interrupt_while_writing(["quantize", "--model", TINY, "--variant", "absmax:4", "--output", str(out)],
                            preload_env(slow_write, SLOW_WRITE_PATH_CONTAINS="/q.pt.tmp."), tmp_path,
                            lambda n: n.startswith("q.pt.tmp."), sig, code, name, "write()")
    assert list(tmp_path.iterdir()) == []  # neither q.pt nor q.pt.tmp.*


@pytest.mark.parametrize("sig,code,name", SIGNALS)
def test_signal_while_an_embedded_model_is_unpacked_removes_the_temporary_file(tmp_path, slow_write, sig, code,
                                                                                 name):
    # A .qpack embedding its model is loaded through a temporary copy in $TMPDIR (packed_model.cpp).
    packed = tmp_path / "m.qpack"
    r = subprocess.run([BIN, "quantize", "--model", TINY, "--variant", "absmax:4", "--packed", str(packed)],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    tmpdir = tmp_path / "tmpdir"
    tmpdir.mkdir()
    interrupt_while_writing(["compare", "--model", str(packed), "--variants", "fp32", "--format", "json"],
                            preload_env(slow_write, TMPDIR=str(tmpdir), SLOW_WRITE_PATH_CONTAINS="/quantppl-embedded-"),
                            tmpdir, lambda n: n.startswith("quantppl-embedded-"), sig, code, name, "write()")
    assert list(tmpdir.iterdir()) == []
