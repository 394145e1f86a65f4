"""End-to-end tests of the quantppl command line: the real binary, the real files.

Run by CTest (see CMakeLists.txt) with QUANTPPL_BIN (the binary) and QUANTPPL_FIXTURES (the
directory tests/fixtures/make_tiny_model.py generated) in the environment.
"""

import csv
import io
import json
import os

import pytest

from .conftest import (DEFAULT_MODEL, EXIT_DATA, EXIT_IO, EXIT_REGRESSION, EXIT_USAGE, FIXTURES, TINY,
                       assert_clean_error, compare_json, load_json, run)

_PERCENTILES = ["p001", "p01", "p05", "p10", "p25", "median", "p75", "p90", "p95", "p99", "p999"]
PER_VARIANT_FIELDS = ["variant", "spec", "ppl", "ppl_stderr", "nll", "tokens", "delta_ppl_pct", "kl_mean", "kl_mean_stderr",
                      "kl_min", *("kl_" + p for p in _PERCENTILES), "kl_max",
                      "top1_agreement", "top1_agreement_stderr", "delta_nll_mean", "delta_nll_ci95", "ppl_ratio",
                      "ppl_ratio_ci95_low", "ppl_ratio_ci95_high", "nll_correlation", "delta_p_mean",
                      "delta_p_mean_stderr", "delta_p_rms", "delta_p_rms_stderr", "delta_p_min",
                      *("delta_p_" + p for p in _PERCENTILES), "delta_p_max", "weight_mse", "weight_sqnr_db",
                      "packed_bytes", "fp32_bytes", "compression_ratio", "bits_per_weight", "seconds", "stopped_early",
                      "method", "calibration", "rtn_delta_nll_mean", "rtn_delta_nll_ci95", "method_seconds"]
SETTINGS_FIELDS = ["model", "text", "mode", "max_length", "layers_quantized", "model_sha256", "text_sha256",
                   "text_tokens", "libtorch_version", "threads"]


def test_json_has_stable_fields_and_consistent_numbers():
    j = compare_json("--variants", "fp32,absmax:8,zeropoint:4:group64")
    for field in SETTINGS_FIELDS:
        assert field in j, field
    assert [r["variant"] for r in j["results"]] == ["fp32", "absmax:8", "zeropoint:4:group64"]
    assert [r["spec"] for r in j["results"]] == ["fp32", "absmax:8:tensor:minmax", "zeropoint:4:group64:minmax"]
    for r in j["results"]:
        assert list(r.keys()) == PER_VARIANT_FIELDS
        assert abs(r["ppl"] - pow(2.718281828459045, r["nll"])) < 1e-9 * r["ppl"]
        assert r["tokens"] == j["text_tokens"]
    fp32, a8, z4 = j["results"]
    assert fp32["delta_ppl_pct"] == 0 and fp32["weight_mse"] is None
    assert fp32["kl_mean"] == 0 and fp32["top1_agreement"] == 1 and fp32["delta_nll_mean"] == 0
    assert z4["kl_mean"] > a8["kl_mean"] > 0 and z4["top1_agreement"] < 1
    assert a8["kl_p99"] <= a8["kl_max"]
    assert abs(a8["delta_ppl_pct"] - 100 * (a8["ppl"] / fp32["ppl"] - 1)) < 1e-9
    assert z4["weight_mse"] > a8["weight_mse"] > 0  # 4 bits reconstruct worse than 8
    assert len(j["model_sha256"]) == 64 and len(j["text_sha256"]) == 64
    # The default batch size: 1 window per forward pass (README "Performance": as fast as 8 on
    # CPU, half the peak memory).
    assert j["batch_size"] == 1


def test_csv_has_one_row_per_variant_with_the_same_fields():
    r = run("compare", "--model", TINY, "--format", "csv", "--quiet", "--variants", "fp32,absmax:4:channel")
    assert r.returncode == 0, r.stderr
    rows = list(csv.DictReader(io.StringIO(r.stdout)))
    assert [row["variant"] for row in rows] == ["fp32", "absmax:4:channel"]
    # CSV has no nesting: the calibration object is flattened into calibration_text, calibration_sha256, ...
    for field in PER_VARIANT_FIELDS + SETTINGS_FIELDS:
        assert field in rows[0] or (field == "calibration" and "calibration_sha256" in rows[0]), field
    assert rows[0]["weight_mse"] == "" and float(rows[1]["weight_mse"]) > 0


def test_table_lists_every_variant():
    r = run("compare", "--model", TINY, "--variants", "fp32,absmax:8")
    assert r.returncode == 0, r.stderr
    assert "perplexity" in r.stdout and "absmax:8" in r.stdout and "fp32" in r.stdout
    assert r.stderr == ""  # no progress bar when stderr is not a terminal


def test_text_from_stdin_and_prefix_mode():
    text = "Lists keep their order. Dictionaries map keys to values. Sets hold unique items. " * 20
    j = compare_json("--variants", "fp32", "--mode", "prefix", "--max-length", "32")
    assert j["mode"] == "prefix" and j["max_length"] == 32
    r = run("compare", "--model", TINY, "--text", "-", "--format", "json", "--variants", "fp32", stdin=text)
    assert load_json(r)["text"] in ("-", "<stdin>")


def test_batch_size_does_not_change_the_result():
    one = compare_json("--variants", "fp32,absmax:4", "--batch-size", "1")
    eight = compare_json("--variants", "fp32,absmax:4", "--batch-size", "8")
    for a, b in zip(one["results"], eight["results"]):
        assert abs(a["ppl"] / b["ppl"] - 1) < 1e-5


def test_output_file_is_written_atomically_and_not_clobbered(tmp_path):
    out = tmp_path / "r.json"
    r = run("compare", "--model", TINY, "--variants", "fp32", "--format", "json", "--output", str(out))
    assert r.returncode == 0 and r.stdout == ""
    first = out.read_text()
    assert json.loads(first)["results"][0]["variant"] == "fp32"
    r = run("compare", "--model", TINY, "--variants", "absmax:8", "--format", "json", "--output", str(out))
    assert_clean_error(r, EXIT_IO, str(out), "--force")
    assert out.read_text() == first
    r = run("compare", "--model", TINY, "--variants", "absmax:8", "--format", "json", "--output", str(out), "--force")
    assert r.returncode == 0 and json.loads(out.read_text())["results"][0]["variant"] == "absmax:8"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.json"]  # no temporary files left


def test_output_in_missing_directory_fails_before_any_work(tmp_path):
    r = run("compare", "--model", TINY, "--output", str(tmp_path / "nope" / "r.json"))
    assert_clean_error(r, EXIT_IO, "does not exist")


@pytest.mark.parametrize("spec,needle", [
    ("absmax:9", "bits"), ("absmax:0", "bits"), ("absmax:abc", "bits"), ("int4:4", "unknown scheme"),
    ("absmax:4:group0", "group size"), ("absmax:4:tensor:p0", "percentile"), ("absmax:4:tensor:p101", "percentile"),
    ("absmax:4:tensor:median", "unknown range"), ("fp32,,absmax:8", "empty item"),
])
def test_malformed_variant_is_a_usage_error_showing_the_grammar(spec, needle):
    r = run("compare", "--model", TINY, "--variants", spec)
    assert_clean_error(r, EXIT_USAGE, needle)
    if "empty item" not in needle:
        assert "SCHEME:BITS[:GRANULARITY[:RANGE[:ARITH]]]" in r.stderr


def test_group_size_not_dividing_a_layer_names_the_layer():
    r = run("compare", "--model", TINY, "--variants", "absmax:4:group96")
    assert_clean_error(r, EXIT_USAGE, "group size 96 does not divide")


@pytest.mark.parametrize("flags,needle", [
    (["--batch-size", "0"], "--batch-size"), (["--threads", "0"], "--threads"),
    (["--max-length", "100000"], "max_length"), (["--format", "xml"], "--format"),
    (["--mode", "forward"], "--mode"), (["--include", "(bad"], "--include"),
    (["--include", "no_layer_has_this_name"], "no Linear layer"),
])
def test_bad_flags_are_usage_errors(flags, needle):
    r = run("compare", "--model", TINY, *flags)
    assert_clean_error(r, EXIT_USAGE, needle)


@pytest.mark.parametrize("command", ["compare", "sensitivity"])
@pytest.mark.parametrize("flag,value,minimum", [
    ("--threads", "0", 1), ("--batch-size", "0", 1), ("--threads", "-2", 1), ("--batch-size", "-8", 1),
    ("--max-length", "-1", 0), ("--threads", "two", 1), ("--batch-size", "1.5", 1),
    ("--threads", "99999999999999999999", 1),  # beyond int64: strtoll would clamp it to INT64_MAX
])
def test_integer_flag_below_its_minimum_names_the_flag_the_rule_and_the_value(command, flag, value, minimum):
    # CLI11's PositiveNumber printed "Value 0 not in range 0.000000 to 1797693134862315...": a
    # 300-digit double naming no rule. The message now says what the flag takes.
    extra = ["--variant", "absmax:8"] if command == "sensitivity" else []
    r = run(command, "--model", TINY, *extra, flag, value)
    assert_clean_error(r, EXIT_USAGE, f"{flag}: must be an integer >= {minimum}, got {value}")
    for unreadable in ("1.79e308", "179769", "not in range"):
        assert unreadable not in r.stderr, r.stderr


def test_sensitivity_max_tokens_below_zero_is_a_readable_usage_error():
    r = run("sensitivity", "--model", TINY, "--variant", "absmax:8", "--max-tokens", "-5")
    assert_clean_error(r, EXIT_USAGE, "--max-tokens: must be an integer >= 0, got -5")


@pytest.mark.parametrize("name,code", [
    ("missing.pt", EXIT_IO), ("not_torchscript.pt", EXIT_DATA), ("no_metadata.pt", EXIT_DATA),
    ("bad_json.pt", EXIT_DATA), ("no_linear.pt", EXIT_DATA), ("nan_weight.pt", EXIT_DATA),
])
def test_bad_models_are_clean_errors_naming_the_file(name, code):
    path = os.path.join(FIXTURES, name)
    r = run("compare", "--model", path, "--variants", "fp32,absmax:8")
    assert_clean_error(r, code, name)


def test_bad_text_is_a_clean_error(tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("  \n\n")
    assert_clean_error(run("compare", "--model", TINY, "--text", str(empty)), EXIT_DATA, "empty.txt")
    binary = tmp_path / "blob.bin"
    binary.write_bytes(bytes(range(256)) * 10)
    assert_clean_error(run("compare", "--model", TINY, "--text", str(binary)), EXIT_DATA, "blob.bin")
    assert_clean_error(run("compare", "--model", TINY, "--text", str(tmp_path / "none.txt")), EXIT_IO, "none.txt")


def test_check_gate_passes_within_tolerance_and_fails_with_both_values(tmp_path):
    j = compare_json("--variants", "fp32,absmax:8")
    good = tmp_path / "good.json"
    good.write_text(json.dumps({"format_version": 1, "tolerance_pct": 0.01,
                                "variants": [{"variant": r["variant"], "ppl": r["ppl"]} for r in j["results"]]}))
    r = run("compare", "--model", TINY, "--check", str(good), "--quiet")
    assert r.returncode == 0, r.stderr
    assert "absmax:8" in r.stdout  # without --variants, the file's variants are evaluated
    bad = tmp_path / "bad.json"
    shifted = j["results"][1]["ppl"] * 0.9
    bad.write_text(json.dumps({"variants": [{"variant": "absmax:8", "ppl": shifted, "tolerance_pct": 1.0}]}))
    r = run("compare", "--model", TINY, "--check", str(bad), "--quiet")
    assert r.returncode == EXIT_REGRESSION
    assert "absmax:8" in r.stderr and ("%.6g" % shifted) in r.stderr and ("%.6g" % j["results"][1]["ppl"]) in r.stderr


def test_quantize_then_fp32_equals_the_variant(tmp_path):
    out = tmp_path / "q.pt"
    r = run("quantize", "--model", TINY, "--variant", "absmax:4:channel", "--output", str(out))
    assert r.returncode == 0, r.stderr
    on_original = compare_json("--variants", "absmax:4:channel")["results"][0]["ppl"]
    r = run("compare", "--model", str(out), "--variants", "fp32", "--format", "json", "--quiet")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["results"][0]["ppl"] == on_original
    r = run("quantize", "--model", TINY, "--variant", "absmax:4", "--output", str(out))
    assert_clean_error(r, EXIT_IO, "--force")
    assert_clean_error(run("quantize", "--model", TINY, "--variant", "absmax:99", "--output", str(tmp_path / "x.pt")),
                       EXIT_USAGE, "bits")
    assert not (tmp_path / "x.pt").exists()


def test_help_teaches_every_flag():
    r = run("compare", "--help")
    assert r.returncode == 0
    for flag in ["--model", "--text", "--variants", "--mode", "--max-length", "--batch-size", "--threads",
                 "--format", "--output", "--quiet", "--check", "--include", "--exclude", "--force", "--tokenizer"]:
        assert flag in r.stdout, flag
    assert "fp32,absmax:8,zeropoint:8" in r.stdout


@pytest.mark.skipif(not os.path.exists(DEFAULT_MODEL), reason="models/default.pt not built yet")
def test_no_arguments_runs_the_shipped_defaults():
    r = run("compare", "--format", "json", "--quiet")
    assert r.returncode == 0, r.stderr
    j = json.loads(r.stdout)
    assert [x["variant"] for x in j["results"]] == ["fp32", "absmax:8", "zeropoint:8"]
    assert j["model"].endswith("models/default.pt") and j["text"].endswith("data/default_eval.txt")
