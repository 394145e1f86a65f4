"""Start-up of the quantppl binary: OpenMP's wait policy is passive from libgomp's own
initialisation on (src/openmp_wait_policy.h: re-executed before any library constructor runs),
a user's own setting wins, and the rest of the environment reaches the libraries and main().

libgomp prints the settings it initialised with when OMP_DISPLAY_ENV is set, once per
initialisation: the number of blocks counts how often LibTorch's libraries were initialised (a
re-execution from main() printed two), and GOMP_SPINCOUNT (VERBOSE) is the policy in effect: 0
for passive. (Its line OMP_WAIT_POLICY = 'PASSIVE' is printed for an unset variable too.)
"""

import json
import os
import shutil
import subprocess

import pytest

from .conftest import BIN, TINY

BEGIN = "OPENMP DISPLAY ENVIRONMENT BEGIN"


def run(args, underscore=True, **env_extra):
    """Runs quantppl with OMP_DISPLAY_ENV=VERBOSE; `underscore`: with the shell's "_" variable
    (bash exports it to every command), whose slot carries the policy while the libraries start."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("OMP_") and k != "_"}
    if underscore:
        env["_"] = BIN
    env.update(env_extra)
    env["OMP_DISPLAY_ENV"] = "VERBOSE"
    return subprocess.run([BIN, *args], env=env, capture_output=True, text=True, timeout=600)


def execve_count(underscore):
    """How many times the program is executed (strace), or None without strace."""
    if not shutil.which("strace"):
        return None
    env = {k: v for k, v in os.environ.items() if not k.startswith("OMP_") and k != "_"}
    if underscore:
        env["_"] = BIN
    r = subprocess.run(["strace", "-f", "-e", "trace=execve", BIN, "--version"], env=env, capture_output=True,
                       text=True, timeout=600)
    return sum(1 for line in r.stderr.splitlines() if "execve(" in line and "= 0" in line)


def test_libgomp_starts_passive_and_is_initialised_once():
    for underscore in (True, False):
        r = run(["--version"], underscore=underscore)
        assert r.returncode == 0, r.stderr
        assert r.stderr.count(BEGIN) == 1, r.stderr
        assert "GOMP_SPINCOUNT = '0'" in r.stderr, r.stderr
        assert r.stdout.startswith("quantppl ")


def test_no_reexecution_when_the_shell_variable_lends_its_slot():
    with_slot, without = execve_count(True), execve_count(False)
    if with_slot is None:
        pytest.skip("strace is not installed")
    assert with_slot == 1
    assert without == 2  # re-executed from .preinit_array, before any library initialised


def test_a_users_wait_policy_wins():
    for policy in ("ACTIVE", "passive"):
        r = run(["--version"], OMP_WAIT_POLICY=policy)
        assert r.returncode == 0, r.stderr
        assert r.stderr.count(BEGIN) == 1, r.stderr
        assert ("GOMP_SPINCOUNT = '0'" in r.stderr) == (policy == "passive"), r.stderr


def test_the_rest_of_the_environment_reaches_the_libraries_and_main():
    # OMP_NUM_THREADS is read by libgomp's constructor, from the environment quantppl extended;
    # TMPDIR is read in main(), long after (--backup file creates its file there).
    r = run(["--version"], OMP_NUM_THREADS="3")
    assert "OMP_NUM_THREADS = '3'" in r.stderr, r.stderr
    r = run(["compare", "--model", TINY, "--variants", "fp32,absmax:8", "--backup", "file", "--format", "json",
             "--quiet", "--verbose"], TMPDIR="/nonexistent-quantppl-startup-dir")
    assert r.returncode == 4, r.stderr
    assert "/nonexistent-quantppl-startup-dir" in r.stderr, r.stderr


def test_verbose_reports_the_policy_and_the_backup_maps_the_model_file():
    r = run(["compare", "--model", TINY, "--variants", "fp32,absmax:8", "--format", "json", "--quiet", "--verbose"])
    assert r.returncode == 0, r.stderr
    assert r.stderr.count(BEGIN) == 1, r.stderr
    assert "GOMP_SPINCOUNT = '0'" in r.stderr, r.stderr
    assert "quantppl: OMP_WAIT_POLICY: PASSIVE" in r.stderr, r.stderr
    assert "quantppl: weight backup: model" in r.stderr, r.stderr
    assert json.loads(r.stdout)["backup"] == "model"
