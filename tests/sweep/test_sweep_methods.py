"""Tests of methods as a sweep dimension (scripts/sweep.py --methods) against the real binary.

    QUANTPPL_BIN=build/quantppl QUANTPPL_FIXTURES=build/fixtures /usr/bin/python3 -m pytest -q tests/sweep -k methods

The binary is wrapped by a shell script that logs every argv, so the tests see how many times
`quantppl calibrate` ran and which flags every compare call got. The tiny model with
--max-length 32 and 256 calibration tokens keeps every call to a few seconds.
"""

import argparse
import csv
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys

import pytest

from quantppl_tools import sweep_grid, sweep_methods
from quantppl_tools.calibration_file import read_calibration_file

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BIN = os.path.abspath(os.environ.get("QUANTPPL_BIN", os.path.join(REPO, "build", "quantppl")))
FIXTURES = os.path.abspath(os.environ.get("QUANTPPL_FIXTURES", os.path.join(REPO, "build", "fixtures")))
TINY = os.path.join(FIXTURES, "tiny.pt")
SWEEP = os.path.join(REPO, "scripts", "sweep.py")
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

EVAL_TEXT = ("The keeper counted the hours of light and the gallons of oil, and at the end of each month he "
             "added the columns twice, once from the top and once from the bottom. ") * 12
CALIBRATION_TEXT = ("A list is a mutable sequence; a tuple is an immutable one. Dictionaries map hashable keys "
                    "to values, and sets hold unique elements without order. ") * 12
SPECS = ["absmax:4:group64", "zeropoint:4:group64"]
METHODS = "rtn,awq,hqq,gptq"


def grid_args(**kw):
    base = dict(variants=None, schemes="absmax,zeropoint", bits="4", granularities="group64", ranges="minmax",
                methods="rtn")
    base.update(kw)
    return argparse.Namespace(**base)


def test_grid_crosses_every_spec_with_the_methods_and_skips_hqq_on_absmax(capsys):
    grid = sweep_grid.build_grid(grid_args(methods="rtn,awq,hqq,gptq:actorder,awq+gptq"))
    assert grid == ["fp32",
                    "absmax:4:group64:minmax", "absmax:4:group64:minmax+awq",
                    "absmax:4:group64:minmax+gptq:actorder", "absmax:4:group64:minmax+awq+gptq",
                    "zeropoint:4:group64:minmax", "zeropoint:4:group64:minmax+awq",
                    "zeropoint:4:group64:minmax+hqq", "zeropoint:4:group64:minmax+gptq:actorder",
                    "zeropoint:4:group64:minmax+awq+gptq"]
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["sweep: skipping absmax:4:group64:minmax+hqq: HQQ needs a zero-point grid "
                   "(zeropoint:B:..., q4_1, q5_1)"]
    # --variants items too; llama.cpp's zero-point blocks take hqq, a spec with its own method is kept
    grid = sweep_grid.build_grid(grid_args(variants="q4_1,q4_0,nf4,absmax:8+gptq", methods="hqq"))
    assert grid == ["fp32", "q4_1+hqq", "absmax:8+gptq"]
    assert sweep_grid.build_grid(grid_args())[1:] == ["absmax:4:group64:minmax", "zeropoint:4:group64:minmax"]


def test_unknown_method_is_a_usage_error():
    with pytest.raises(sweep_grid.SweepError, match="--methods: unknown method 'lloyd'"):
        sweep_grid.build_grid(grid_args(methods="rtn,lloyd"))


def test_batches_never_split_a_specs_methods():
    todo = ["fp32", "a", "a+awq", "a+gptq", "b", "b+awq", "b+gptq", "c", "c+awq", "c+gptq", "c+hqq", "c+awq+gptq"]
    batches = sweep_methods.make_batches(todo, 4)
    assert batches == [["fp32", "a", "a+awq", "a+gptq"], ["b", "b+awq", "b+gptq"],
                       ["c", "c+awq", "c+gptq", "c+hqq", "c+awq+gptq"]]
    assert sweep_methods.make_batches(["fp32", "a", "b", "c"], 2) == [["fp32", "a"], ["b", "c"]]


# ---------------------------------------------------------------------------------------------
# The real binary


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    if not os.access(BIN, os.X_OK) or not os.path.isfile(TINY):
        pytest.skip(f"no quantppl binary at {BIN} or fixture at {TINY}")
    d = tmp_path_factory.mktemp("methods-inputs")
    (d / "eval.txt").write_text(EVAL_TEXT, encoding="utf-8")
    (d / "cal.txt").write_text(CALIBRATION_TEXT, encoding="utf-8")
    log = d / "calls.log"
    wrapper = d / "quantppl"
    # one line per call: the argv, tab-separated
    wrapper.write_text(f'#!/bin/sh\n(IFS="$(printf "\\t")"; echo "$*") >> "{log}"\nexec "{BIN}" "$@"\n')
    wrapper.chmod(0o755)
    return d


def calls(inputs):
    path = inputs / "calls.log"
    lines = path.read_text().splitlines() if path.exists() else []
    path.write_text("")
    return [l.split("\t") for l in lines]


def run_sweep(inputs, out, *extra):
    cmd = [sys.executable, SWEEP, "--bin", str(inputs / "quantppl"), "--model", TINY,
           "--text", str(inputs / "eval.txt"), "--out", str(out), "--max-length", "32", "--threads", "1",
           "--batch-variants", "4", *extra]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300)


def flag_value(argv, flag):
    return argv[argv.index(flag) + 1] if flag in argv else None


@pytest.fixture(scope="module")
def methods_sweep(inputs, tmp_path_factory):
    out = tmp_path_factory.mktemp("methods") / "out"
    calls(inputs)
    r = run_sweep(inputs, out, "--variants", ",".join(SPECS), "--methods", METHODS,
                  "--calibration", str(inputs / "cal.txt"), "--calibration-tokens", "256")
    assert r.returncode == 0, r.stderr
    return out, r.stderr, calls(inputs)


def read_rows(out):
    with open(out / "results.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_one_calibrate_call_and_its_stats_file_in_every_compare_call(methods_sweep, inputs):
    out, stderr, argvs = methods_sweep
    calibrate = [a for a in argvs if a[0] == "calibrate"]
    compare = [a for a in argvs if a[0] == "compare"]
    assert len(calibrate) == 1, argvs
    stats = str(out / "calibration.qcal")
    assert os.path.samefile(flag_value(calibrate[0], "--output"), stats)
    assert flag_value(calibrate[0], "--calibration") == str(inputs / "cal.txt")
    assert flag_value(calibrate[0], "--calibration-tokens") == "256"
    assert flag_value(calibrate[0], "--max-length") == "32"
    assert compare and all(os.path.samefile(flag_value(a, "--calibration-stats"), stats) for a in compare)
    assert argvs.index(calibrate[0]) < argvs.index(compare[0])
    # a spec's methods in the same call as its RTN row; hqq never sent for absmax
    sent = [flag_value(a, "--variants").split(",") for a in compare]
    for spec in SPECS:
        holding = [b for b in sent if spec in b]
        assert len(holding) == 1 and f"{spec}+awq" in holding[0] and f"{spec}+gptq" in holding[0], sent
    assert not any("absmax:4:group64+hqq" in b for b in sent)
    assert "skipping absmax:4:group64+hqq" in stderr
    # the file is the model's statistics of the calibration text (read by the independent numpy reader)
    cal = read_calibration_file(stats)
    run = json.loads((out / "run.json").read_text())
    assert cal["model_sha256"] == run["model_sha256"]
    assert cal["tokens"] == 256


def test_rows_carry_method_and_calibration(methods_sweep, inputs):
    out, _, _ = methods_sweep
    rows = {r["variant"]: r for r in read_rows(out)}
    expected = {"fp32": "none"}
    for spec in SPECS:
        canon = spec + ":minmax"
        expected.update({canon: "rtn", canon + "+awq": "awq", canon + "+gptq": "gptq"})
    expected["zeropoint:4:group64:minmax+hqq"] = "hqq"
    assert {v: r["method"] for v, r in rows.items()} == expected
    stats = str(out / "calibration.qcal")
    for v, r in rows.items():
        calibrated = r["method"] in ("awq", "gptq")
        if calibrated:
            cal = json.loads(r["calibration"])
            assert os.path.samefile(cal["stats"], stats) and os.path.samefile(r["calibration_stats"], stats)
            assert cal["tokens"] == 256 and r["calibration_tokens"] == "256"
            assert r["calibration_mode"] == "fp32" and r["calibration_text"] == cal["text"]
        else:
            assert r["calibration"] == "" and r["calibration_stats"] == ""
        if r["method"] in ("awq", "gptq", "hqq"):
            # paired with the same call's RTN row: the mean of per-token differences is the
            # difference of the two rows' mean delta NLL against fp32 (same tokens)
            rtn = rows[v.split("+")[0]]
            want = float(r["delta_nll_mean"]) - float(rtn["delta_nll_mean"])
            assert float(r["rtn_delta_nll_mean"]) == pytest.approx(want, rel=1e-6, abs=1e-9), v
            assert float(r["rtn_delta_nll_ci95"]) > 0
            assert float(r["method_seconds"]) >= 0
        else:
            assert r["rtn_delta_nll_mean"] == ""
        # the format's columns ignore the method
        if v != "fp32":
            assert r["scheme"] == v.split(":")[0] and r["bits"] == "4" and r["group_size"] == "64"
    run = json.loads((out / "run.json").read_text())
    assert run["methods"] == ["rtn", "awq", "hqq", "gptq"]
    assert run["calibration"] == {"text": str(inputs / "cal.txt"), "tokens": 256, "mode": "fp32"}


def test_plots_per_method(methods_sweep):
    out, stderr, _ = methods_sweep
    for name in ("ppl_vs_effective_bits.png", "methods_4bit.png", "ppl_vs_bits.png"):
        data = (out / name).read_bytes()
        assert data[:8] == PNG_SIGNATURE and len(data) > 5000, name
    assert "methods_4bit.png" in stderr
    r = subprocess.run([sys.executable, os.path.join(REPO, "scripts", "report.py"), str(out)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    md = (out / "report.md").read_text()
    assert "](methods_4bit.png)" in md and '| methods | `["rtn", "awq", "hqq", "gptq"]` |' in md
    assert "| variant | ppl | delta_ppl_pct | method |" in md  # ppl stays the second column


def test_resume_reuses_the_calibration_and_refuses_other_methods(methods_sweep, inputs, tmp_path):
    out, _, _ = methods_sweep
    copy = tmp_path / "resume"
    shutil.copytree(out, copy)
    lines = (copy / "results.csv").read_text().splitlines(keepends=True)
    dropped = [l for l in lines if l.startswith("zeropoint:4:group64:minmax+gptq,")]
    assert len(dropped) == 1
    (copy / "results.csv").write_text("".join(l for l in lines if l not in dropped))
    before = (copy / "calibration.qcal").stat().st_mtime_ns
    calls(inputs)
    r = run_sweep(inputs, copy, "--variants", ",".join(SPECS), "--methods", METHODS,
                  "--calibration", str(inputs / "cal.txt"), "--calibration-tokens", "256")
    assert r.returncode == 0, r.stderr
    argvs = calls(inputs)
    assert [a[0] for a in argvs] == ["compare"], argvs  # the statistics file was reused
    # the method again with its (done) RTN row, for the pairing; the RTN row not duplicated
    assert flag_value(argvs[0], "--variants") == "zeropoint:4:group64,zeropoint:4:group64+gptq"
    assert sorted(r["variant"] for r in read_rows(copy)) == sorted(r["variant"] for r in read_rows(out))
    assert (copy / "calibration.qcal").stat().st_mtime_ns == before

    for extra in (["--methods", "rtn,gptq"], ["--methods", METHODS, "--calibration-tokens", "128"]):
        r = run_sweep(inputs, copy, "--variants", ",".join(SPECS), "--calibration", str(inputs / "cal.txt"),
                      "--calibration-tokens", "256", *extra)
        assert r.returncode == 2, r.stderr
        last = r.stderr.strip().splitlines()[-1]
        assert "different settings" in last and ("methods" in last if "rtn,gptq" in extra else "calibration" in last)
        assert "Traceback" not in r.stderr
        assert calls(inputs) == []  # refused before any call


def test_sequential_mode_recalibrates_per_call_without_a_stats_file(inputs, tmp_path):
    calls(inputs)
    out = tmp_path / "seq"
    # sequential calibration is one pass per block: a few layers and 64 tokens keep it short
    r = run_sweep(inputs, out, "--variants", "zeropoint:4:group64", "--methods", "gptq",
                  "--calibration", str(inputs / "cal.txt"), "--calibration-tokens", "64",
                  "--calibration-mode", "sequential", "--batch-variants", "1", "--include", r"block\.0\.")
    assert r.returncode == 0, r.stderr
    argvs = calls(inputs)
    assert [a[0] for a in argvs] == ["compare", "compare"]
    for a in argvs:
        assert flag_value(a, "--calibration-mode") == "sequential"
        assert flag_value(a, "--calibration") == str(inputs / "cal.txt")
        assert "--calibration-stats" not in a
    assert "recalibrates" in r.stderr
    assert not (out / "calibration.qcal").exists()
    rows = {x["variant"]: x for x in read_rows(out)}
    assert rows["zeropoint:4:group64:minmax+gptq"]["calibration_mode"] == "sequential"


def test_bad_method_is_a_one_line_usage_error(inputs, tmp_path):
    r = run_sweep(inputs, tmp_path / "x", "--methods", "rtn,lloyd")
    assert r.returncode == 2
    assert "Traceback" not in r.stderr
    assert "--methods: unknown method 'lloyd'" in r.stderr.strip().splitlines()[-1]


def test_dask_sweep_ships_the_one_calibration_file(inputs, tmp_path):
    pytest.importorskip("distributed")
    calls(inputs)
    out = tmp_path / "dask"
    r = run_sweep(inputs, out, "--variants", "zeropoint:4:group64", "--methods", "rtn,hqq,gptq",
                  "--calibration", str(inputs / "cal.txt"), "--calibration-tokens", "256",
                  "--scheduler", "local:1", "--ship-inputs")
    assert r.returncode == 0, r.stderr
    argvs = calls(inputs)
    assert [a[0] for a in argvs].count("calibrate") == 1
    compare = [a for a in argvs if a[0] == "compare"]
    stats_sha = hashlib.sha256((out / "calibration.qcal").read_bytes()).hexdigest()
    # the worker got the client's file: its cache path is named by the file's sha256
    assert all(f"/{stats_sha}/calibration.qcal" in flag_value(a, "--calibration-stats") for a in compare), compare
    # fp32 and the spec's three methods fit one batch of 4
    assert [flag_value(a, "--variants") for a in compare] == \
        ["fp32,zeropoint:4:group64,zeropoint:4:group64+hqq,zeropoint:4:group64+gptq"]
    rows = {x["variant"]: x for x in read_rows(out)}
    assert rows["zeropoint:4:group64:minmax+gptq"]["method"] == "gptq"
    assert rows["zeropoint:4:group64:minmax+gptq"]["rtn_delta_nll_mean"] != ""
    assert rows["zeropoint:4:group64:minmax+hqq"]["status"] == "ok"


# ---------------------------------------------------------------------------------------------
# Resume: the method rows keep their pairing with RTN


def test_pending_methods_of_a_done_rtn_row_are_sent_with_it():
    grid = ["fp32", "a", "a+awq", "a+gptq", "b", "b+awq", "c", "c+gptq"]
    # a and its awq done, b done, c not started
    todo, reruns, partners = sweep_methods.pending_variants(grid, {"fp32", "a", "a+awq", "b"}, {})
    assert todo == ["a", "a+gptq", "b", "b+awq", "c", "c+gptq"]
    assert reruns == ["a", "b"]
    assert partners == {"a+awq": "a", "a+gptq": "a", "b+awq": "b", "c+gptq": "c"}
    # methods listed before rtn (--methods gptq,rtn): the RTN spec still goes with them
    todo, reruns, _ = sweep_methods.pending_variants(["fp32", "a+gptq", "a+awq", "a"], {"fp32", "a"}, {})
    assert (todo, reruns) == (["a", "a+gptq", "a+awq"], ["a"])
    # done rows are found by their canonical names; a format written two ways pairs through them
    canonical = {"absmax:8:tensor:minmax": "absmax:8:tensor:minmax", "absmax:8+gptq": "absmax:8:tensor:minmax+gptq"}
    grid = ["fp32", "absmax:8:tensor:minmax", "q4_0", "absmax:8+gptq"]
    todo, reruns, partners = sweep_methods.pending_variants(grid, {"fp32", "absmax:8:tensor:minmax"}, canonical)
    assert (todo, reruns) == (["q4_0", "absmax:8:tensor:minmax", "absmax:8+gptq"], ["absmax:8:tensor:minmax"])
    assert sweep_methods.make_batches(todo, 1, partners) == [["q4_0"], ["absmax:8:tensor:minmax", "absmax:8+gptq"]]
    # no RTN row in the sweep (--methods gptq): nothing to pair, nothing sent again
    todo, reruns, _ = sweep_methods.pending_variants(["fp32", "a+gptq", "b+gptq"], {"fp32", "a+gptq"}, {})
    assert (todo, reruns) == (["b+gptq"], [])
    # nothing done: the grid itself
    grid = ["fp32", "a", "a+gptq"]
    assert sweep_methods.pending_variants(grid, set(), {})[:2] == (grid, [])


def test_no_batch_size_splits_a_group_even_when_its_members_are_scattered():
    import random
    rng = random.Random(7)
    for _ in range(300):
        specs = [f"s{i}" for i in range(rng.randint(1, 6))]
        todo = ["fp32"] + [f"{s}{m}" for s in specs for m in ("", "+awq", "+gptq", "+hqq")
                           if rng.random() < 0.7]
        if rng.random() < 0.5:  # an explicit --variants list in any order
            rest = todo[1:]
            rng.shuffle(rest)
            todo = ["fp32"] + rest
        size = rng.randint(1, 6)
        batches = sweep_methods.make_batches(todo, size)
        assert sorted(v for b in batches for v in b) == sorted(todo)  # every variant once
        assert batches[0][0] == "fp32"
        holder = {}
        for i, b in enumerate(batches):
            for v in b:
                assert holder.setdefault(sweep_methods.base_spec(v), i) == i, (todo, size, batches)
            # a batch exceeds the size only as one whole group
            assert len(b) <= size or len({sweep_methods.base_spec(v) for v in b}) == 1, (todo, size, batches)
    assert sweep_methods.make_batches(["fp32", "a+gptq", "b", "a"], 3) == [["fp32", "a+gptq", "a"], ["b"]]


PENDING = ["absmax:4:group64:minmax+gptq", "zeropoint:4:group64:minmax+awq", "zeropoint:4:group64:minmax+hqq",
           "zeropoint:4:group64:minmax+gptq"]


def interrupted_copy(out, dest):
    """A copy of a finished methods sweep as a kill leaves it after the zeropoint spec's RTN row
    was written but before its methods were (results.csv cut there), with absmax's gptq row gone too."""
    shutil.copytree(out, dest)
    lines = (dest / "results.csv").read_text().splitlines(keepends=True)
    cut = next(i for i, l in enumerate(lines) if l.startswith("zeropoint:4:group64:minmax,"))
    kept = [l for l in lines[:cut + 1] if not l.startswith("absmax:4:group64:minmax+gptq,")]
    assert len(lines) - len(kept) == len(PENDING)
    (dest / "results.csv").write_text("".join(kept))
    return dest


def progress_variants(stderr):
    return re.findall(r"^\[\d+/\d+\] (\S+)  ppl", stderr, re.M)


def check_resumed_like_uninterrupted(reference, resumed, stderr, argvs):
    ref = {r["variant"]: r for r in read_rows(reference)}
    rows = read_rows(resumed)
    assert sorted(r["variant"] for r in rows) == sorted(ref)  # one row per variant: no RTN row twice
    got = {r["variant"]: r for r in rows}
    for v in PENDING:
        r, rtn = got[v], got[v.split("+")[0]]
        assert r["rtn_delta_nll_mean"] != "" and r["rtn_delta_nll_ci95"] != "", v
        # as the uninterrupted sweep printed them (same --threads: the same numbers)
        assert r["rtn_delta_nll_mean"] == ref[v]["rtn_delta_nll_mean"], v
        assert r["rtn_delta_nll_ci95"] == ref[v]["rtn_delta_nll_ci95"], v
        # and paired with the RTN row results.csv holds: method minus RTN over the same tokens
        want = float(r["delta_nll_mean"]) - float(rtn["delta_nll_mean"])
        assert float(r["rtn_delta_nll_mean"]) == pytest.approx(want, rel=1e-6, abs=1e-9), v
    for v, r in got.items():
        assert r["ppl"] == ref[v]["ppl"] and r["delta_nll_mean"] == ref[v]["delta_nll_mean"], v
    compare = [flag_value(a, "--variants").split(",") for a in argvs if a[0] == "compare"]
    sent = [v for b in compare for v in b]
    assert sorted(sent) == sorted(["absmax:4:group64", "absmax:4:group64+gptq", "zeropoint:4:group64",
                                   "zeropoint:4:group64+awq", "zeropoint:4:group64+hqq",
                                   "zeropoint:4:group64+gptq"]), compare
    for b in compare:
        for v in b:
            assert "+" not in v or v.split("+")[0] in b, compare  # every method with its RTN spec
    assert sorted(progress_variants(stderr)) == sorted(PENDING)  # the RTN rows were done already
    assert "zeropoint:4:group64 is done but evaluated again with its pending methods" in stderr
    assert "evaluated again gives nll" not in stderr


def test_resume_sends_pending_methods_with_their_done_rtn_row(methods_sweep, inputs, tmp_path):
    out, _, _ = methods_sweep
    copy = interrupted_copy(out, tmp_path / "resume")
    calls(inputs)
    r = run_sweep(inputs, copy, "--variants", ",".join(SPECS), "--methods", METHODS,
                  "--calibration", str(inputs / "cal.txt"), "--calibration-tokens", "256")
    assert r.returncode == 0, r.stderr
    assert "resuming: 4 of 8 variants already in" in r.stderr
    argvs = calls(inputs)
    assert [a[0] for a in argvs] == ["compare", "compare"], argvs  # batches of 4: absmax's pair, zeropoint's 4
    check_resumed_like_uninterrupted(out, copy, r.stderr, argvs)


def test_dask_resume_sends_pending_methods_with_their_done_rtn_row(methods_sweep, inputs, tmp_path):
    pytest.importorskip("distributed")
    out, _, _ = methods_sweep
    copy = interrupted_copy(out, tmp_path / "dask-resume")
    calls(inputs)
    r = run_sweep(inputs, copy, "--variants", ",".join(SPECS), "--methods", METHODS,
                  "--calibration", str(inputs / "cal.txt"), "--calibration-tokens", "256", "--scheduler", "local:1")
    assert r.returncode == 0, r.stderr
    assert "4 to run" in r.stderr
    check_resumed_like_uninterrupted(out, copy, r.stderr, calls(inputs))
    assert all(x["status"] == "ok" for x in read_rows(copy) if x["variant"] in PENDING)


# ---------------------------------------------------------------------------------------------
# Resume: the calibration statistics file


def rewrite_calibration_header(path, **fields):
    """The file with header fields replaced (same lengths), its trailing SHA-256 made again: a
    well-formed statistics file saying something else (docs/calibration.md)."""
    data = bytearray(path.read_bytes())
    n = int.from_bytes(data[8:16], "little")
    header = data[16:16 + n].decode()
    for key, value in fields.items():
        old = json.loads(header)[key]
        assert len(old) == len(value)
        header = header.replace(old, value)
    data[16:16 + n] = header.encode()
    data[-32:] = hashlib.sha256(bytes(data[:-32])).digest()
    path.write_bytes(bytes(data))


def sha256_file(path):
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def copy_without_the_gptq_row(out, copy):
    """A copy of a finished sweep whose results lack zeropoint's gptq row: a resume has one row to run."""
    shutil.copytree(out, copy)
    lines = (copy / "results.csv").read_text().splitlines(keepends=True)
    (copy / "results.csv").write_text("".join(l for l in lines if not l.startswith("zeropoint:4:group64:minmax+gptq,")))


@pytest.mark.parametrize("damage", ["another model", "truncated", "checksum"])
def test_resume_calibrates_again_when_the_stats_file_is_not_the_models(methods_sweep, inputs, tmp_path, damage):
    out, _, _ = methods_sweep
    copy = tmp_path / "recal"
    copy_without_the_gptq_row(out, copy)
    stats = copy / "calibration.qcal"
    if damage == "another model":  # well-formed, but made from uniform.pt
        rewrite_calibration_header(stats, model_sha256=sha256_file(os.path.join(FIXTURES, "uniform.pt")))
    elif damage == "truncated":
        stats.write_bytes(stats.read_bytes()[:4096])
    else:  # one flipped data byte: the C++ reader would refuse it in every compare call
        data = bytearray(stats.read_bytes())
        data[len(data) // 2] ^= 1
        stats.write_bytes(bytes(data))
    calls(inputs)
    r = run_sweep(inputs, copy, "--variants", ",".join(SPECS), "--methods", METHODS,
                  "--calibration", str(inputs / "cal.txt"), "--calibration-tokens", "256")
    assert r.returncode == 0, r.stderr
    argvs = calls(inputs)
    assert [a[0] for a in argvs] == ["calibrate", "compare"], argvs
    assert "reusing" not in r.stderr and "calibrating once into" in r.stderr
    # the file made again is the original (same model, text, tokens), read by the numpy reader
    assert read_calibration_file(str(stats))["model_sha256"] == sha256_file(TINY)
    assert stats.read_bytes() == (out / "calibration.qcal").read_bytes()
    ref = {x["variant"]: x for x in read_rows(out)}
    got = {x["variant"]: x for x in read_rows(copy)}
    v = "zeropoint:4:group64:minmax+gptq"
    assert got[v]["ppl"] == ref[v]["ppl"] and got[v]["rtn_delta_nll_mean"] == ref[v]["rtn_delta_nll_mean"]


def test_resume_with_another_model_is_refused_before_any_call(methods_sweep, inputs, tmp_path):
    out, _, _ = methods_sweep
    copy = tmp_path / "othermodel"
    copy_without_the_gptq_row(out, copy)
    before = (copy / "calibration.qcal").read_bytes()
    calls(inputs)
    cmd = [sys.executable, SWEEP, "--bin", str(inputs / "quantppl"), "--model", os.path.join(FIXTURES, "uniform.pt"),
           "--text", str(inputs / "eval.txt"), "--out", str(copy), "--max-length", "32", "--threads", "1",
           "--variants", ",".join(SPECS), "--methods", METHODS, "--calibration", str(inputs / "cal.txt"),
           "--calibration-tokens", "256"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert r.returncode == 2, r.stderr
    last = r.stderr.strip().splitlines()[-1]
    assert "different settings (model_sha256 differ" in last and "Traceback" not in r.stderr
    assert sha256_file(TINY)[:12] in last and sha256_file(os.path.join(FIXTURES, "uniform.pt"))[:12] in last
    assert calls(inputs) == []  # neither the stale statistics passed on nor a calibration run
    assert (copy / "calibration.qcal").read_bytes() == before
    assert "reusing" not in r.stderr


def test_resume_with_an_edited_calibration_text_is_refused(methods_sweep, inputs, tmp_path):
    out, _, _ = methods_sweep
    copy = tmp_path / "edited"
    copy_without_the_gptq_row(out, copy)
    text = inputs / "cal.txt"
    original = text.read_bytes()
    calls(inputs)
    try:
        text.write_bytes(original.replace(b"mutable", b"mutable!", 1))
        r = run_sweep(inputs, copy, "--variants", ",".join(SPECS), "--methods", METHODS,
                      "--calibration", str(text), "--calibration-tokens", "256")
    finally:
        text.write_bytes(original)
    assert r.returncode == 2, r.stderr
    last = r.stderr.strip().splitlines()[-1]
    assert f"--calibration {text} changed since" in last and hashlib.sha256(original).hexdigest()[:12] in last
    assert "Traceback" not in r.stderr
    assert calls(inputs) == []


def test_group_size_check_covers_method_specs(inputs, tmp_path):
    assert sweep_grid.group_size("zeropoint:4:group64+gptq") == 64
    assert sweep_grid.group_size("absmax:4:group32:mse+awq+gptq") == 32
    assert sweep_grid.group_size("q4_0+gptq") is None
    # tiny.pt's Linear layers have 128 or 256 inputs: 48 does not divide them, so the spec and its
    # method are skipped (one invalid spec would fail the whole batch in the CLI)
    calls(inputs)
    out = tmp_path / "g48"
    r = run_sweep(inputs, out, "--variants", "zeropoint:4:group48,zeropoint:4:group64", "--methods", "rtn,hqq")
    assert r.returncode == 0, r.stderr
    assert "skipping zeropoint:4:group48+hqq: group size 48 does not divide" in r.stderr
    sent = [v for a in calls(inputs) if a[0] == "compare" for v in flag_value(a, "--variants").split(",")]
    assert sent == ["fp32", "zeropoint:4:group64", "zeropoint:4:group64+hqq"]
    assert sorted(x["variant"] for x in read_rows(out)) == \
        ["fp32", "zeropoint:4:group64:minmax", "zeropoint:4:group64:minmax+hqq"]
