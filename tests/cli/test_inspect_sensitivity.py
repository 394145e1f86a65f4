"""End-to-end tests of `quantppl inspect` and `quantppl sensitivity`: the real binary on the tiny fixture.

Environment as for test_cli.py: QUANTPPL_BIN (the binary), QUANTPPL_FIXTURES (build/fixtures).
"""

import csv
import io
import json

import pytest

from .conftest import EXIT_IO, EXIT_USAGE, TINY, assert_clean_error, load_json, run

TINY_LAYERS = 37


INSPECT_FIELDS = ["name", "shape", "scale", "zero_point", "clipped_fraction", "mse", "max_abs_error", "sqnr_db",
                  "parameters", "min", "max", "absmax", "std", "kurtosis", "outlier_fraction_6sigma",
                  "scale_min", "scale_median", "scale_max", "zero_point_min", "zero_point_median", "zero_point_max"]


def inspect_json(*args):
    return load_json(run("inspect", "--model", TINY, "--format", "json", "--quiet", *args))


def sensitivity_json(*args, max_tokens=150):
    return load_json(run("sensitivity", "--model", TINY, "--format", "json", "--quiet", "--max-tokens",
                         str(max_tokens), *args))


# ---- inspect ----

def test_inspect_json_fields_per_tensor():
    j = inspect_json()  # default variant absmax:8
    for key in ("model", "model_sha256", "variant", "layers", "summary"):
        assert key in j, key
    assert j["variant"] == "absmax:8"
    assert len(j["layers"]) == TINY_LAYERS
    for row in j["layers"]:
        for key in INSPECT_FIELDS:
            assert key in row, key
        assert isinstance(row["shape"], list) and len(row["shape"]) == 2
        assert row["parameters"] == row["shape"][0] * row["shape"][1]
        assert row["zero_point"] == 0 and row["scale"] > 0
        assert abs(row["scale"] - row["absmax"] / 127) <= 1e-6 * row["scale"]
        assert row["clipped_fraction"] == 0
        assert row["min"] <= row["max"] and row["absmax"] == max(-row["min"], row["max"])
    s = j["summary"]
    assert s["layers"] == TINY_LAYERS
    assert s["parameters"] == sum(r["parameters"] for r in j["layers"])
    assert s["worst_layer"] == min(j["layers"], key=lambda r: r["sqnr_db"])["name"]
    mse = sum(r["mse"] * r["parameters"] for r in j["layers"]) / s["parameters"]
    assert abs(s["mse"] - mse) <= 1e-9 * mse


def test_inspect_per_group_has_min_median_max_and_percentile_clips():
    j = inspect_json("--variant", "zeropoint:4:group32:p99", "--include", "^encoder")
    assert all(r["name"].startswith("encoder.") for r in j["layers"])
    for row in j["layers"]:
        assert row["scale"] is None and row["zero_point"] is None
        assert row["scale_min"] <= row["scale_median"] <= row["scale_max"]
        assert row["blocks"] == row["parameters"] // 32
        assert 0 < row["clipped_fraction"] < 0.1


def test_inspect_csv_has_one_row_per_layer_and_shape_as_text():
    r = run("inspect", "--model", TINY, "--format", "csv", "--quiet")
    assert r.returncode == 0, r.stderr
    rows = list(csv.DictReader(io.StringIO(r.stdout)))
    assert len(rows) == TINY_LAYERS
    assert rows[0]["shape"] == "128x128"
    for key in INSPECT_FIELDS:
        assert key in rows[0], key


def test_inspect_table_has_a_summary_line():
    r = run("inspect", "--model", TINY, "--quiet")
    assert r.returncode == 0, r.stderr
    assert "summary" in r.stdout and "worst layer" in r.stdout


@pytest.mark.parametrize("command", ["inspect", "sensitivity"])
@pytest.mark.parametrize("spec,needle", [("absmax:9", "bits"), ("int4:4", "unknown scheme"), ("absmax:4:group0", "group size")])
def test_bad_variant_is_a_one_line_usage_error(command, spec, needle):
    r = run(command, "--model", TINY, "--variant", spec)
    assert_clean_error(r, EXIT_USAGE, needle)


def test_inspect_output_is_atomic_and_not_clobbered(tmp_path):
    out = tmp_path / "i.json"
    r = run("inspect", "--model", TINY, "--format", "json", "--output", str(out))
    assert r.returncode == 0 and r.stdout == ""
    first = out.read_text()
    assert json.loads(first)["variant"] == "absmax:8"
    r = run("inspect", "--model", TINY, "--variant", "absmax:4", "--format", "json", "--output", str(out))
    assert_clean_error(r, EXIT_IO, str(out), "--force")
    assert out.read_text() == first
    r = run("inspect", "--model", TINY, "--variant", "absmax:4", "--format", "json", "--output", str(out), "--force")
    assert r.returncode == 0 and json.loads(out.read_text())["variant"] == "absmax:4"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["i.json"]


def test_inspect_bad_regex_names_the_flag():
    assert_clean_error(run("inspect", "--model", TINY, "--include", "("), EXIT_USAGE, "--include")


# ---- sensitivity ----

def test_sensitivity_json_fields_and_consistency():
    j = sensitivity_json("--variant", "absmax:4")
    for key in ("model", "model_sha256", "text", "text_sha256", "tokens", "variant", "fp32_ppl", "all_quantized_ppl",
                "layers", "keep", "parts"):
        assert key in j, key
    assert j["tokens"] == 150
    assert len(j["layers"]) == TINY_LAYERS
    assert [l["rank"] for l in j["layers"]] == list(range(1, TINY_LAYERS + 1))
    ppls = [l["ppl"] for l in j["layers"]]
    assert ppls == sorted(ppls, reverse=True)
    for l in j["layers"]:
        assert abs(l["delta_ppl_pct"] - 100 * (l["ppl"] / j["fp32_ppl"] - 1)) < 1e-9
        assert l["kl_mean"] >= -1e-6
    assert [k["keep"] for k in j["keep"]] == [0, 1, 2, 4, 8]
    assert j["keep"][0]["ppl"] == j["all_quantized_ppl"] and j["keep"][0]["kept_layers"] == []
    assert j["keep"][2]["kept_layers"] == [l["name"] for l in j["layers"][:2]]
    assert [p["part"] for p in j["parts"]] == ["encoder", "decoder", "lm_head"]
    assert sum(p["layers"] for p in j["parts"]) == TINY_LAYERS


def test_sensitivity_keep_is_clipped_to_the_layer_count():
    j = sensitivity_json("--variant", "absmax:4", "--include", "lm_head|encoder.block.0.layer.0", "--keep", "100,0")
    assert len(j["layers"]) == 5
    assert [k["keep"] for k in j["keep"]] == [0, 5]
    assert j["keep"][1]["ppl"] == j["fp32_ppl"]
    assert j["parts"][1]["layers"] == 0 and j["parts"][1]["ppl"] is None


def test_sensitivity_all_quantized_matches_compare(tmp_path):
    text = tmp_path / "short.txt"
    text.write_text("The quick brown fox jumps over the lazy dog. Weights are rounded onto a grid of levels.\n"
                    "Perplexity is the exponential of the mean negative log-likelihood per predicted token.\n")
    j = sensitivity_json("--variant", "zeropoint:4", "--keep", "0", "--text", str(text), max_tokens=0)
    r = run("compare", "--model", TINY, "--text", str(text), "--variants", "fp32,zeropoint:4", "--format", "json",
            "--quiet")
    assert r.returncode == 0, r.stderr
    c = json.loads(r.stdout)["results"]
    assert abs(j["fp32_ppl"] - c[0]["ppl"]) <= 1e-5 * c[0]["ppl"]
    assert abs(j["all_quantized_ppl"] - c[1]["ppl"]) <= 1e-5 * c[1]["ppl"]


@pytest.mark.parametrize("keep,needle", [("1,,2", "--keep"), ("-1", "--keep"), ("x", "--keep"), ("1.5", "--keep"),
                                         ("", "--keep"), ("2,", "--keep")])
def test_sensitivity_bad_keep_is_a_one_line_usage_error(keep, needle):
    r = run("sensitivity", "--model", TINY, "--variant", "absmax:8", "--keep", keep)
    assert_clean_error(r, EXIT_USAGE, needle)


def test_sensitivity_requires_a_quantized_variant():
    assert_clean_error(run("sensitivity", "--model", TINY, "--variant", "fp32"), EXIT_USAGE, "fp32")
    r = run("sensitivity", "--model", TINY)
    assert r.returncode == EXIT_USAGE and "--variant" in r.stderr


def test_sensitivity_csv_and_table():
    r = run("sensitivity", "--model", TINY, "--variant", "absmax:8", "--max-tokens", "100", "--format", "csv", "--quiet")
    assert r.returncode == 0, r.stderr
    rows = list(csv.DictReader(io.StringIO(r.stdout)))
    assert len(rows) == TINY_LAYERS and rows[0]["rank"] == "1"
    r = run("sensitivity", "--model", TINY, "--variant", "absmax:8", "--max-tokens", "100", "--quiet")
    assert r.returncode == 0, r.stderr
    assert "keep K" in r.stdout and "lm_head" in r.stdout


def test_sensitivity_output_is_atomic(tmp_path):
    out = tmp_path / "s.json"
    out.write_text("old")
    r = run("sensitivity", "--model", TINY, "--variant", "absmax:8", "--max-tokens", "100", "--format", "json",
            "--output", str(out))
    assert_clean_error(r, EXIT_IO, str(out), "--force")
    assert out.read_text() == "old"
    r = run("sensitivity", "--model", TINY, "--variant", "absmax:8", "--max-tokens", "100", "--format", "json",
            "--output", str(out), "--force")
    assert r.returncode == 0 and r.stdout == ""
    assert json.loads(out.read_text())["variant"] == "absmax:8"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.json"]


def test_sensitivity_text_from_stdin():
    r = run("sensitivity", "--model", TINY, "--variant", "absmax:8", "--text", "-", "--include", "lm_head",
            "--format", "json", "--quiet", stdin="Hello world. This is a short text for the tiny model.\n")
    assert r.returncode == 0, r.stderr
    j = json.loads(r.stdout)
    assert j["text"] == "-" or j["text"] == "<stdin>"
    assert len(j["layers"]) == 1
