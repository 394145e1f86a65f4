"""`quantppl compare`'s distribution statistics end to end: every field in JSON and CSV, the
values against tests/reference/distribution_metrics.py (numpy in float64 from the logits of the
fixture model, its weights fake-quantized in Python), `--stats`'s blocks, and N = 1.

Run with QUANTPPL_BIN and QUANTPPL_FIXTURES as tests/cli/test_cli.py.
"""

import csv
import io
import json
import math
import os
import subprocess
import sys

import pytest

from .conftest import FIXTURES, REPO, TINY, run

REFERENCE = os.path.join(REPO, "tests", "reference", "distribution_metrics.py")
TEXT = os.path.join(REPO, "data", "default_eval.txt")
PYTHON = sys.executable  # the interpreter running pytest (CTest: Debian's, with torch, numpy, sentencepiece)
MAX_LENGTH = 64

PERCENTILES = ["p001", "p01", "p05", "p10", "p25", "median", "p75", "p90", "p95", "p99", "p999"]
STATISTICS = (["kl_mean", "kl_mean_stderr", "kl_min"] + ["kl_" + p for p in PERCENTILES] + ["kl_max"] +
              ["top1_agreement", "top1_agreement_stderr", "delta_nll_mean", "delta_nll_ci95", "ppl_ratio",
               "ppl_ratio_ci95_low", "ppl_ratio_ci95_high", "nll_correlation", "delta_p_mean",
               "delta_p_mean_stderr", "delta_p_rms", "delta_p_rms_stderr", "delta_p_min"] +
              ["delta_p_" + p for p in PERCENTILES] + ["delta_p_max"])
# The list (llama.cpp's statistics); STATISTICS adds 0.1/25/75% and the RMS's error.
REQUIRED = ["kl_mean", "kl_mean_stderr", "kl_min", "kl_p01", "kl_p05", "kl_p10", "kl_median", "kl_p90", "kl_p95",
            "kl_p99", "kl_p999", "kl_max", "delta_p_mean", "delta_p_mean_stderr", "delta_p_rms", "delta_p_min",
            "delta_p_p01", "delta_p_p05", "delta_p_p10", "delta_p_median", "delta_p_p90", "delta_p_p95",
            "delta_p_p99", "delta_p_max", "top1_agreement", "top1_agreement_stderr", "ppl_ratio",
            "ppl_ratio_ci95_low", "ppl_ratio_ci95_high", "nll_correlation"]
# Python and C++ quantize the same weights with formulas that may round a rare tie differently,
# and sum in different orders (compare_test.cpp allows 1e-4 on perplexity).
REL_TOL, ABS_TOL = 1e-4, 1e-7


def compare(fmt, *args):
    r = run("compare", "--model", TINY, "--text", TEXT, "--max-length", str(MAX_LENGTH), "--format", fmt, "--quiet",
            *args)
    assert r.returncode == 0, r.stderr
    return r.stdout


@pytest.fixture(scope="module")
def report():
    return json.loads(compare("json", "--variants", "fp32,absmax:4"))


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The statistics of numpy-absmax:4 (per-tensor absmax, 4 bits) from Python's own logits."""
    import sentencepiece as spm

    tok = spm.SentencePieceProcessor(model_file=os.path.join(FIXTURES, "tiny.model"))
    # text_windows.h: each line (with its '\n') encoded alone, then one EOS; windows of MAX_LENGTH.
    with open(TEXT, encoding="utf-8") as f:
        lines = f.read().splitlines(keepends=True)
    ids = [i for line in lines for i in tok.encode(line)] + [1]
    windows = [ids[i:i + MAX_LENGTH] for i in range(0, len(ids), MAX_LENGTH)]
    path = tmp_path_factory.mktemp("stats") / "windows.json"
    path.write_text(json.dumps(windows))
    out = subprocess.run([PYTHON, REFERENCE, "--model", TINY, "--windows", str(path), "--variant", "numpy-absmax:4"],
                         capture_output=True, text=True, timeout=600, check=True).stdout
    return json.loads(out)


def test_json_has_every_statistic_for_every_variant(report):
    for field in REQUIRED:
        assert field in STATISTICS
    for r in report["results"]:
        keys = list(r.keys())
        for field in STATISTICS:
            assert field in keys, field
        # Spreads are in ascending order of the percentile.
        for prefix in ("kl", "delta_p"):
            values = [r[prefix + "_min"]] + [r[prefix + "_" + p] for p in PERCENTILES] + [r[prefix + "_max"]]
            assert values == sorted(values), (prefix, values)
    fp32, a4 = report["results"]
    # fp32 against itself.
    assert fp32["kl_max"] == 0 and fp32["delta_p_rms"] == 0 and fp32["ppl_ratio"] == 1
    assert fp32["nll_correlation"] == 1 and fp32["top1_agreement_stderr"] == 0
    assert fp32["ppl_ratio_ci95_low"] == fp32["ppl_ratio_ci95_high"] == 1
    # The variant: its ratio is its perplexity over fp32's, inside its own interval.
    assert a4["ppl_ratio"] == pytest.approx(a4["ppl"] / fp32["ppl"], rel=1e-9)
    assert a4["ppl_ratio_ci95_low"] < a4["ppl_ratio"] < a4["ppl_ratio_ci95_high"]
    assert a4["ppl_ratio_ci95_high"] == pytest.approx(math.exp(a4["delta_nll_mean"] + a4["delta_nll_ci95"]), rel=1e-12)
    n = a4["tokens"]
    p = a4["top1_agreement"]
    assert a4["top1_agreement_stderr"] == pytest.approx(math.sqrt(p * (1 - p) / n), rel=1e-12)


def test_json_matches_the_python_reference_from_logits(report, reference):
    a4 = report["results"][1]
    assert reference["tokens"] == a4["tokens"]
    assert reference["kl_mean"] > 1e-3  # the variant does move the distributions
    assert a4["nll"] == pytest.approx(reference["nll_mean"], rel=1e-4)
    for field in STATISTICS:
        theirs = reference[field]
        assert abs(a4[field] - theirs) <= REL_TOL * abs(theirs) + ABS_TOL, (field, a4[field], theirs)


def test_csv_carries_the_same_statistics(report):
    rows = list(csv.DictReader(io.StringIO(compare("csv", "--variants", "fp32,absmax:4"))))
    assert [r["variant"] for r in rows] == ["fp32", "absmax:4"]
    for row, j in zip(rows, report["results"]):
        for field in STATISTICS:
            assert float(row[field]) == j[field], field  # 17 significant digits: the same double


def test_stats_prints_llama_cpp_blocks_per_variant(report):
    out = compare("table", "--variants", "fp32,absmax:4", "--stats")
    for variant in ("fp32", "absmax:4"):
        assert "====== {} against fp32: {} tokens ======".format(variant, report["results"][0]["tokens"]) in out
    blocks = out.split("====== absmax:4 against fp32")[1]
    a4 = report["results"][1]
    for line in ("====== Perplexity statistics ======", "====== KL divergence statistics ======",
                 "====== Token probability statistics ======", "Mean PPL(Q)                   :",
                 "Cor(ln(PPL(Q)), ln(PPL(base))):", "Maximum KLD:", "99.9%   KLD:", "Median  KLD:", " 0.1%   KLD:",
                 "Minimum KLD:", "75.0%   Δp:", "RMS Δp    :"):
        assert line in blocks, line
    lines = {l.split(":")[0].strip(): l.split(":", 1)[1] for l in blocks.splitlines() if ":" in l}
    assert float(lines["Mean    KLD"].split("±")[0]) == pytest.approx(a4["kl_mean"], abs=1e-6)
    assert float(lines["99.0%   KLD"]) == pytest.approx(a4["kl_p99"], abs=1e-6)
    assert float(lines["Median  Δp"].rstrip("%")) == pytest.approx(100 * a4["delta_p_median"], abs=1e-3)
    assert float(lines["Same top p"].split("±")[0]) == pytest.approx(100 * a4["top1_agreement"], abs=1e-3)
    assert float(lines["Cor(ln(PPL(Q)), ln(PPL(base)))"].rstrip("%")) == pytest.approx(
        100 * a4["nll_correlation"], abs=0.01)
    ratio = lines["Mean PPL(Q)/PPL(base)"]
    assert float(ratio.split("±")[0]) == pytest.approx(a4["ppl_ratio"], abs=1e-6)
    assert "95% CI [{:.6f}, {:.6f}]".format(a4["ppl_ratio_ci95_low"], a4["ppl_ratio_ci95_high"]) in ratio


def test_stats_needs_the_table_format():
    r = run("compare", "--model", TINY, "--format", "json", "--stats", "--quiet")
    assert r.returncode == 2, r.stderr
    assert r.stderr.count("\n") == 1 and "--stats" in r.stderr and "json" in r.stderr
    assert r.stdout == ""


def test_one_token_gives_null_standard_errors(tmp_path):
    # prefix mode on a two-token text (one piece + EOS): the encoder gets the piece, EOS is the one label.
    text = tmp_path / "one.txt"
    text.write_text("the")
    r = run("compare", "--model", TINY, "--text", str(text), "--mode", "prefix", "--variants", "absmax:4",
            "--format", "json", "--quiet")
    assert r.returncode == 0, r.stderr
    v = json.loads(r.stdout)["results"][0]
    assert v["tokens"] == 1
    for field in ("kl_mean_stderr", "delta_p_mean_stderr", "delta_p_rms_stderr", "delta_nll_ci95",
                  "ppl_ratio_ci95_low", "ppl_ratio_ci95_high", "nll_correlation"):
        assert v[field] is None, field
    assert v["top1_agreement_stderr"] == 0
    for p in PERCENTILES:
        assert v["kl_" + p] == v["kl_min"] == v["kl_max"]
        assert v["delta_p_" + p] == v["delta_p_min"]
    assert v["ppl_ratio"] == pytest.approx(math.exp(v["delta_nll_mean"]), rel=1e-12)


def test_help_describes_the_flag_and_the_fields():
    r = run("compare", "--help")
    assert r.returncode == 0
    for needle in ("--stats", "kl_p999", "ppl_ratio_ci95_low", "nll_correlation", "delta_p_rms", "top1_agreement(_stderr)"):
        assert needle in r.stdout, needle
