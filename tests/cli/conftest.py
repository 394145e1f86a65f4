"""What the end-to-end tests of the real quantppl binary share (tests/cli and tests/reliability):
where the binary and the fixtures are, running it, the shape of a clean error, reading its JSON.

CTest sets QUANTPPL_BIN (the binary) and QUANTPPL_FIXTURES (the directory
tests/fixtures/make_tiny_model.py generated); by hand:

    QUANTPPL_BIN=build/quantppl QUANTPPL_FIXTURES=build/fixtures /usr/bin/python3 -m pytest -q tests/cli

tests/cli and tests/reliability are packages (an empty __init__.py), so pytest imports this file
as `cli.conftest` with tests/ on sys.path: tests/cli's modules say `from .conftest import run`,
tests/reliability's `from cli.conftest import run`.
"""

import json
import os
import subprocess

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BIN = os.environ.get("QUANTPPL_BIN") or os.path.join(REPO, "build", "quantppl")
FIXTURES = os.environ.get("QUANTPPL_FIXTURES") or os.path.join(REPO, "build", "fixtures")
TINY = os.path.join(FIXTURES, "tiny.pt")
DEFAULT_MODEL = os.path.join(REPO, "models", "default.pt")
DEFAULT_TEXT = os.path.join(REPO, "data", "default_eval.txt")

# Exit codes documented in README.md.
EXIT_REGRESSION, EXIT_USAGE, EXIT_DATA, EXIT_IO = 1, 2, 3, 4
# What a crash, an uncaught exception or a sanitizer report prints; a clean error prints none.
CRASH_MARKERS = ("terminate called", "Exception raised from", "frame #", "Segmentation", "Aborted",
                 "AddressSanitizer", "runtime error")


def run(*args, stdin=None):
    """quantppl ARGS, with stdin text; the CompletedProcess (text mode, output captured)."""
    return subprocess.run([BIN, *args], input=stdin, capture_output=True, text=True, timeout=600)


def assert_clean_error(result, code, *needles):
    """Exit `code`, one line on stderr holding every needle, nothing on stdout, no crash."""
    assert result.returncode == code, (result.returncode, result.stderr)
    err = result.stderr.strip()
    assert len(err.splitlines()) == 1, err  # one line
    for needle in needles:
        assert needle in err, err
    for crash in CRASH_MARKERS:
        assert crash not in result.stderr
    assert result.stdout == ""


def load_json(result):
    """The JSON a successful run printed."""
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def compare_json(*args, model=TINY):
    """`quantppl compare --format json --quiet` on `model` (the tiny fixture) with ARGS."""
    return load_json(run("compare", "--model", str(model), "--format", "json", "--quiet", *args))
