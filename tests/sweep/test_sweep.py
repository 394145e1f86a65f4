"""Tests of scripts/sweep.py and scripts/report.py against the real quantppl binary.

Run by CTest (see CMakeLists.txt) with QUANTPPL_BIN (the binary) and QUANTPPL_FIXTURES (the
directory tests/fixtures/make_tiny_model.py generated) in the environment:

    QUANTPPL_BIN=build/quantppl QUANTPPL_FIXTURES=build/fixtures /usr/bin/python3 -m pytest -q tests/sweep

One small sweep (tiny random model, a short text, 8 variants + fp32 in batches of 4) is shared by
the tests; the resume tests copy its directory.
"""

import base64
import csv
import json
import math
import os
import re
import shutil
import struct
import subprocess
import sys

import pytest

from quantppl_tools import sweep, sweep_grid

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BIN = os.path.abspath(os.environ.get("QUANTPPL_BIN", os.path.join(REPO, "build", "quantppl")))
FIXTURES = os.path.abspath(os.environ.get("QUANTPPL_FIXTURES", os.path.join(REPO, "build", "fixtures")))
TINY = os.path.join(FIXTURES, "tiny.pt")
SWEEP = os.path.join(REPO, "scripts", "sweep.py")
REPORT = os.path.join(REPO, "scripts", "report.py")
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

# About 250 words: enough for a few windows of the tiny model, short enough to keep the test fast.
TEXT = """\
The lighthouse keeper kept a notebook of every ship that passed the point in the year the harbour
was rebuilt. Most entries are short: a name, a time, the direction of the wind, and whether the
vessel answered the lamp. Some pages hold longer notes about fog that lay on the water for three
days, about a schooner that anchored too close to the rocks and was warned off with a bell, and
about the winter evening when the lamp itself failed and had to be trimmed by hand until morning.

Reading the notebook now, one notices how carefully the numbers were kept. The keeper counted the
hours of light and the gallons of oil, and at the end of each month he added the columns twice,
once from the top and once from the bottom, so that a mistake in either direction would show. When
the two sums disagreed he wrote both of them down and circled the difference rather than choosing
the one he liked better.

The harbour master later said that the notebook was more useful than the official log, because it
recorded what actually happened rather than what was supposed to happen. Ships that were expected
but never came are listed with a question mark. Ships that came without being expected are listed
with the word "unannounced" and the hour they were first seen. A small sketch of the coastline sits
on the last page, with the rocks marked in pencil and the safe channel drawn in ink.
"""

GRID = ["--schemes", "absmax,zeropoint", "--bits", "4,8", "--granularities", "tensor,group64", "--ranges", "minmax"]
VARIANTS = [f"{s}:{b}:{g}:minmax" for s in ("absmax", "zeropoint") for g in ("tensor", "group64") for b in (4, 8)]
REQUIRED_COLUMNS = ["variant", "scheme", "bits", "granularity", "group_size", "range", "ppl", "nll", "tokens",
                    "delta_ppl_pct", "weight_mse", "weight_sqnr_db", "seconds", "effective_bits_per_weight"]
PLOTS = ["ppl_vs_bits.png", "ppl_vs_effective_bits.png"]


def run_sweep(out, text, *extra, binary=BIN):
    cmd = [sys.executable, SWEEP, "--bin", binary, "--model", TINY, "--text", text, "--out", str(out),
           "--batch-variants", "4", "--threads", "1", *extra]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600)


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def progress_variants(stderr):
    """Variants named in the [i/n] progress lines."""
    return re.findall(r"^\[\d+/\d+\] (\S+)  ppl", stderr, re.M)


def assert_one_line_error(result, code, *needles):
    assert result.returncode == code, (result.returncode, result.stderr)
    err = result.stderr.strip()
    assert "Traceback" not in err, err
    errors = [line for line in err.splitlines() if "error:" in line]
    assert len(errors) == 1 and err.splitlines()[-1] == errors[0], err  # one line, the last
    for needle in needles:
        assert needle in errors[0], err


@pytest.fixture(scope="session")
def text_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("text") / "short.txt"
    path.write_text(TEXT, encoding="utf-8")
    return str(path)


@pytest.fixture(scope="session")
def sweep_dir(tmp_path_factory, text_file):
    if not os.access(BIN, os.X_OK):
        pytest.skip(f"no quantppl binary at {BIN}")
    out = tmp_path_factory.mktemp("sweep") / "out"
    r = run_sweep(out, text_file, *GRID, "--report")
    assert r.returncode == 0, r.stderr
    return out, r.stderr


def test_csv_has_expected_columns_and_one_row_per_variant(sweep_dir):
    out, stderr = sweep_dir
    rows = read_csv(out / "results.csv")
    columns = list(rows[0].keys())
    assert columns[:len(REQUIRED_COLUMNS)] == REQUIRED_COLUMNS
    # the CLI's extra metric fields are carried over, whatever they are
    assert "ppl_stderr" in columns or len(columns) == len(REQUIRED_COLUMNS)
    assert [r["variant"] for r in rows] == ["fp32", *VARIANTS]
    assert rows[0]["delta_ppl_pct"] in ("0.0", "0")
    fp32_ppl = float(rows[0]["ppl"])
    for r in rows[1:]:
        assert r["scheme"] in ("absmax", "zeropoint") and r["range"] == "minmax"
        assert abs(float(r["delta_ppl_pct"]) - 100 * (float(r["ppl"]) / fp32_ppl - 1)) < 1e-6
        assert float(r["weight_sqnr_db"]) > 0
        assert int(r["tokens"]) == int(rows[0]["tokens"])
    # three calls of 4 variants (fp32 first), one progress line per variant
    assert progress_variants(stderr) == ["fp32", *VARIANTS]
    assert len(os.listdir(out / "raw")) == 3


def qpack_bytes(shapes, bits, granularity, zero_points):
    """Bytes of the quantized layers as docs/qpack-format.md defines them, from the layer shapes:
    per layer ceil(numel * b / 8) code bytes + 4 per block (fp32 scale) + 2 per block (int16 zero
    point, zeropoint only; the tiny model's zero points all fit int16)."""
    total = 0
    for _, rows, cols in shapes:
        blocks = {"tensor": 1, "channel": rows}.get(granularity) or rows * cols // int(granularity[5:])
        total += math.ceil(rows * cols * bits / 8) + 4 * blocks + (2 * blocks if zero_points else 0)
    return total


def test_storage_columns_are_the_clis_and_match_the_qpack_formula(sweep_dir):
    out, _ = sweep_dir
    rows = {r["variant"]: r for r in read_csv(out / "results.csv")}
    # the same variants through compare directly, written short: the CLI's canonical names key the rows
    short = {"absmax:4": "absmax:4:tensor:minmax", "zeropoint:4": "zeropoint:4:tensor:minmax",
             "absmax:8:group64": "absmax:8:group64:minmax", "zeropoint:4:group64": "zeropoint:4:group64:minmax"}
    r = subprocess.run([BIN, "compare", "--model", TINY, "--text", os.path.join(REPO, "data", "default_eval.txt"),
                        "--variants", ",".join(short), "--max-length", "16", "--format", "json", "--quiet"],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    results = json.loads(r.stdout)["results"]
    assert [x["spec"] for x in results] == list(short.values())
    for x in results:
        row = rows[x["spec"]]
        for field in ("packed_bytes", "fp32_bytes"):
            assert int(row[field]) == x[field], (x["spec"], field)
        assert float(row["compression_ratio"]) == pytest.approx(x["compression_ratio"], rel=1e-15)
        assert float(row["effective_bits_per_weight"]) == pytest.approx(32 * x["packed_bytes"] / x["fp32_bytes"],
                                                                        rel=1e-15)
    # ... and both agree with the storage counted independently from the layer shapes
    shapes = sweep.linear_shapes(TINY, None, None)
    params = sum(o * i for _, o, i in shapes)
    assert float(rows["fp32"]["effective_bits_per_weight"]) == 32
    assert int(rows["fp32"]["packed_bytes"]) == int(rows["fp32"]["fp32_bytes"]) == 4 * params
    for variant in VARIANTS:
        scheme, bits, gran, _ = variant.split(":")
        expected = qpack_bytes(shapes, int(bits), gran, scheme == "zeropoint")
        assert int(rows[variant]["packed_bytes"]) == expected, variant
        assert float(rows[variant]["effective_bits_per_weight"]) == pytest.approx(8 * expected / params, rel=1e-12)
    assert float(rows["zeropoint:4:group64:minmax"]["effective_bits_per_weight"]) == pytest.approx(4 + 48 / 64)


def test_effective_bits_prefer_the_clis_bits_per_weight():
    assert sweep_grid.effective_bits({"bits_per_weight": 4.5, "packed_bytes": 1, "fp32_bytes": 4}) == 4.5
    assert sweep_grid.effective_bits({"packed_bytes": 36, "fp32_bytes": 256}) == pytest.approx(32 * 36 / 256)
    assert sweep_grid.effective_bits({"packed_bytes": None, "fp32_bytes": 256}) is None
    assert sweep_grid.effective_bits({}) is None


def test_short_specs_are_keyed_by_their_canonical_name_and_resume(sweep_dir, text_file, tmp_path):
    out, _ = sweep_dir
    copy = tmp_path / "short"
    shutil.copytree(out, copy)
    # absmax:4 is absmax:4:tensor:minmax, already in results.csv; the sweep cannot know that before
    # the CLI says so (it does not parse specs), so it runs once and replaces that row
    r = run_sweep(copy, text_file, "--variants", "absmax:4,absmax:3:channel")
    assert r.returncode == 0, r.stderr
    assert progress_variants(r.stderr) == ["absmax:4:tensor:minmax", "absmax:3:channel:minmax"]
    rows = [x["variant"] for x in read_csv(copy / "results.csv")]
    assert rows.count("absmax:4:tensor:minmax") == 1 and "absmax:3:channel:minmax" in rows
    assert "absmax:4" not in rows and "absmax:3:channel" not in rows
    again = run_sweep(copy, text_file, "--variants", "absmax:4,absmax:3:channel")
    assert again.returncode == 0, again.stderr
    assert "nothing to run" in again.stderr


def test_pngs_are_valid_images(sweep_dir):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.image as mpimg
    out, _ = sweep_dir
    pngs = sorted(n for n in os.listdir(out) if n.endswith(".png"))
    for name in PLOTS:
        assert name in pngs
    for name in pngs:
        data = (out / name).read_bytes()
        assert data[:8] == PNG_SIGNATURE, name
        width, height = struct.unpack(">II", data[16:24])  # IHDR
        assert width > 100 and height > 100
        image = mpimg.imread(str(out / name))
        assert image.shape[0] == height and image.shape[1] == width


def test_html_report_embeds_the_plots_and_the_table(sweep_dir):
    out, _ = sweep_dir
    page = (out / "report.html").read_text()
    embedded = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    pngs = sorted(n for n in os.listdir(out) if n.endswith(".png"))
    assert len(embedded) == len(pngs)
    assert base64.b64decode(embedded[0]) == (out / "ppl_vs_bits.png").read_bytes()
    assert 'src="ppl' not in page  # nothing refers to a file beside it
    for variant in VARIANTS:
        assert variant in page
    assert "sha256" in page and "LibTorch" in page
    md = (out / "report.md").read_text()
    assert "](ppl_vs_bits.png)" in md and "| variant |" in md
    # rows sorted by perplexity after fp32
    ppls = [float(line.split("|")[2]) for line in md.splitlines() if re.match(r"\| (absmax|zeropoint):", line)]
    assert ppls == sorted(ppls)


def test_report_script_rebuilds_the_page(sweep_dir, tmp_path):
    out, _ = sweep_dir
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    for name in ("report.html", "report.md", "ppl_vs_bits.png", "ppl_vs_effective_bits.png",
                 "agreement_vs_bits.png"):
        if (copy / name).exists():
            (copy / name).unlink()
    r = subprocess.run([sys.executable, REPORT, str(copy)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert (copy / "report.html").exists() and (copy / "ppl_vs_bits.png").exists()


def test_resume_computes_only_missing_variants(sweep_dir, text_file, tmp_path):
    out, _ = sweep_dir
    copy = tmp_path / "resume"
    shutil.copytree(out, copy)
    lines = (copy / "results.csv").read_text().splitlines(keepends=True)
    removed = lines.pop(3).split(",")[0]  # the third variant after fp32
    # ... and a kill mid-write of the last line (a user-truncated file): that row is redone too
    last = lines[-1].split(",")[0]
    lines[-1] = lines[-1][: len(lines[-1]) // 3]
    (copy / "results.csv").write_text("".join(lines))
    before = {r["variant"]: r["seconds"] for r in read_csv(copy / "results.csv") if r["seconds"]}

    r = run_sweep(copy, text_file, *GRID)
    assert r.returncode == 0, r.stderr
    assert "resuming: 7 of 9 variants already in" in r.stderr
    assert sorted(progress_variants(r.stderr)) == sorted([removed, last])
    rows = read_csv(copy / "results.csv")
    assert sorted(x["variant"] for x in rows) == sorted(["fp32", *VARIANTS])
    # Finished rows were kept, not recomputed. (The cut-short last row may still hold its
    # "seconds" cell, depending on where the cut falls among the columns: it was redone.)
    for x in rows:
        if x["variant"] in before and x["variant"] not in (removed, last):
            assert x["seconds"] == before[x["variant"]], x["variant"]

    again = run_sweep(copy, text_file, *GRID)
    assert again.returncode == 0, again.stderr
    assert progress_variants(again.stderr) == []
    assert "nothing to run" in again.stderr


def test_resume_refuses_a_different_text(sweep_dir, tmp_path):
    out, _ = sweep_dir
    copy = tmp_path / "other"
    shutil.copytree(out, copy)
    other = tmp_path / "other.txt"
    other.write_text(TEXT.replace("lighthouse", "windmill"))
    r = run_sweep(copy, str(other), "--variants", "absmax:2")
    assert_one_line_error(r, 2, "different settings", "text_sha256")


def test_missing_binary_is_a_one_line_error(tmp_path, text_file):
    r = run_sweep(tmp_path / "x", text_file, binary=str(tmp_path / "no-such-quantppl"))
    assert_one_line_error(r, 4, "quantppl binary not found")


@pytest.mark.parametrize("flags,needle", [
    # the sweep's own flags
    (["--bits", "4-x"], "--bits"),
    (["--batch-variants", "0"], "--batch-variants"),
    # specs: the CLI's grammar, its message passed through
    (["--bits", "9"], "invalid variant 'absmax:9:tensor:minmax'"),
    (["--variants", "absmax:4:rows"], "invalid variant 'absmax:4:rows'"),
    (["--schemes", "lloyd"], "invalid variant 'lloyd:2:tensor:minmax'"),
])
def test_bad_flags_are_one_line_usage_errors(tmp_path, text_file, flags, needle):
    r = run_sweep(tmp_path / "x", text_file, *flags)
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr
    assert needle in r.stderr.strip().splitlines()[-1]


def test_cli_errors_pass_through_with_their_exit_code(tmp_path):
    r = run_sweep(tmp_path / "x", str(tmp_path / "missing.txt"), "--variants", "absmax:8")
    assert_one_line_error(r, 4, "quantppl compare failed (exit 4)", "missing.txt")


def test_sensitivity_chart_when_the_subcommand_exists(sweep_dir, text_file, tmp_path):
    out, _ = sweep_dir
    copy = tmp_path / "sens"
    shutil.copytree(out, copy)
    if not sweep.has_subcommand(BIN, "sensitivity"):
        pytest.skip("this quantppl has no sensitivity subcommand")
    r = run_sweep(copy, text_file, *GRID, "--sensitivity", "absmax:4", "--sensitivity-max-tokens", "64")
    assert r.returncode == 0, r.stderr
    assert progress_variants(r.stderr) == []  # the grid itself was resumed, not recomputed
    data = (copy / "sensitivity.png").read_bytes()
    assert data[:8] == PNG_SIGNATURE


def test_missing_sensitivity_subcommand_is_reported_not_fatal(sweep_dir, text_file, tmp_path):
    out, _ = sweep_dir
    copy = tmp_path / "nosens"
    shutil.copytree(out, copy)
    fake = tmp_path / "old-quantppl"  # a quantppl without `sensitivity`: its help lists no such command
    fake.write_text("#!/bin/sh\n"
                    "case \"$1\" in sensitivity|--help) printf 'Usage: quantppl\\nSubcommands:\\n"
                    "  compare   c\\n'; exit 0;; esac\n"
                    f"exec {BIN} \"$@\"\n")
    fake.chmod(0o755)
    r = run_sweep(copy, text_file, *GRID, "--sensitivity", "absmax:4", binary=str(fake))
    assert r.returncode == 0, r.stderr
    assert "no 'sensitivity' subcommand" in r.stderr
    assert not (copy / "sensitivity.png").exists()


def test_sweep_and_report_on_a_causal_model_with_llamacpp_mode(tmp_path, text_file):
    """The sweep, its sensitivity chart and the report on the tiny causal fixture (issue 17), with
    the causal flags passed through to every quantppl call."""
    causal = os.path.join(FIXTURES, "tiny_causal.pt")
    out = tmp_path / "causal"
    cmd = [sys.executable, SWEEP, "--bin", BIN, "--model", causal, "--text", text_file, "--out", str(out),
           "--variants", "absmax:8,absmax:4", "--mode", "llamacpp", "--max-length", "16", "--threads", "1",
           "--sensitivity", "absmax:4", "--report"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    rows = read_csv(out / "results.csv")
    assert [row["variant"] for row in rows] == ["fp32", "absmax:8:tensor:minmax", "absmax:4:tensor:minmax"]
    direct = subprocess.run([BIN, "compare", "--model", causal, "--text", text_file, "--variants", "absmax:4",
                             "--mode", "llamacpp", "--max-length", "16", "--format", "json", "--quiet"],
                            capture_output=True, text=True, timeout=600)
    ppl = json.loads(direct.stdout)["results"][0]["ppl"]
    assert any(row["variant"].startswith("absmax:4") and abs(float(row["ppl"]) / ppl - 1) < 1e-9 for row in rows)
    with open(out / "sensitivity.json", encoding="utf-8") as f:
        parts = [p["part"] for p in json.load(f)["parts"]]
    assert parts == ["layers.0", "layers.1", "lm_head"]
    assert (out / "report.html").exists()
def test_variant_columns_of_every_format_family():
    from quantppl_tools.sweep_results import variant_columns
    assert variant_columns("absmax:4:group64:minmax") == {"scheme": "absmax", "bits": 4, "granularity": "group",
                                                          "group_size": 64, "range": "minmax"}
    assert variant_columns("nf4:group64:mse") == {"scheme": "nf4", "bits": None, "granularity": "group",
                                                  "group_size": 64, "range": "mse"}
    assert variant_columns("mxfp4") == {"scheme": "mxfp4", "bits": None, "granularity": "", "group_size": None,
                                        "range": ""}
    # A method does not change the format's columns; the tutorial arithmetic keeps its own points.
    assert variant_columns("absmax:4:channel:minmax+gptq")["granularity"] == "channel"
    assert variant_columns("absmax:4:channel:minmax:tutorial")["bits"] is None


def test_bits_per_weight_plot_puts_every_format_on_one_chart(tmp_path):
    from quantppl_tools.sweep_plots import plot_all
    from quantppl_tools.sweep_results import variant_columns
    rows = [{"variant": "fp32", "ppl": 20.0, "effective_bits_per_weight": 32.0, **variant_columns("fp32")}]
    for spec, bits, ppl in (("absmax:4:group64:minmax", 4.5, 22.0), ("absmax:8:tensor:minmax", 8.0, 20.1),
                            ("nf4:group64:minmax", 4.5, 21.5), ("mxfp4", 4.25, 23.0), ("q4_0", 4.5, 21.9)):
        rows.append({"variant": spec, "ppl": ppl, "effective_bits_per_weight": bits, **variant_columns(spec)})
    written = dict(plot_all(str(tmp_path), rows, {"model": "m.pt", "text_tokens": 10}))
    assert "ppl_vs_effective_bits.png" in written and "every format" in written["ppl_vs_effective_bits.png"]
    assert (tmp_path / "ppl_vs_effective_bits.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
