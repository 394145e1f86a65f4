"""End-to-end tests of issue 14's number formats (NF4, FP4/FP8, OCP MX, NVFP4, llama.cpp blocks)
through the real binary: every format in one `compare` run with its bits per weight, `quantize
--packed` and `--output` giving the same model as the variant, and spec errors.

Their arithmetic is checked bit for bit against ml_dtypes and gguf-py in
tests/python/test_formats_reference.py and in tests/formats/*_test.cpp; here only the plumbing.
Run like tests/cli/test_cli.py, with QUANTPPL_BIN and QUANTPPL_FIXTURES in the environment.
"""

import math
import os

import pytest
import torch

from .conftest import EXIT_USAGE, TINY, assert_clean_error, compare_json, run
from .test_packed import compare_json as compare_rows
from .test_packed import header, pack

FORMATS = ["nf4:group32", "fp4:group32", "fp8e4m3:channel", "fp8e5m2", "mxfp4", "mxfp6e2m3", "mxfp6e3m2",
           "mxfp8e4m3", "mxfp8e5m2", "mxint8", "nvfp4", "q8_0", "q4_0", "q4_1", "q5_0", "q5_1"]


def linear_shapes(path):
    m = torch.jit.load(path)
    return [tuple(mod.weight.shape) for _, mod in m.named_modules() if mod.original_name == "Linear"]


def test_compare_runs_every_format_with_its_bits_per_weight():
    j = compare_json("--variants", "fp32," + ",".join(FORMATS), "--max-length", "32")
    rows = {r["spec"]: r for r in j["results"]}
    shapes = linear_shapes(TINY)
    n, layers = sum(o * i for o, i in shapes), len(shapes)
    expected = {
        "nf4:group32:minmax": 4 + 32 / 32, "fp4:group32:minmax": 4 + 32 / 32,
        "fp8e4m3:channel:minmax": sum(o * i * 8 + 32 * o for o, i in shapes) / n,
        "fp8e5m2:tensor:minmax": 8 + 32 * layers / n,
        "mxfp4": 4.25, "mxfp6e2m3": 6.25, "mxfp6e3m2": 6.25, "mxfp8e4m3": 8.25, "mxfp8e5m2": 8.25, "mxint8": 8.25,
        "nvfp4": 4.5 + 32 * layers / n,
        "q8_0": 8.5, "q4_0": 4.5, "q4_1": 5.0, "q5_0": 5.5, "q5_1": 6.0,
    }
    assert set(expected) <= set(rows), sorted(rows)
    for spec, bits in expected.items():
        assert abs(rows[spec]["bits_per_weight"] - bits) < 1e-12, (spec, rows[spec]["bits_per_weight"], bits)
        assert math.isfinite(rows[spec]["ppl"]) and rows[spec]["ppl"] > 1, spec
    # The 8-bit block formats barely move the model.
    for spec in ("q8_0", "mxint8", "fp8e4m3:channel:minmax"):
        assert abs(rows[spec]["ppl"] / rows["fp32"]["ppl"] - 1) < 0.05, (spec, rows[spec]["ppl"])


@pytest.mark.parametrize("variant", ["nf4:group32", "fp8e4m3:channel", "mxfp6e3m2", "nvfp4", "q4_1", "q5_0"])
def test_packed_file_evaluates_as_the_variant_and_is_smaller(variant, tmp_path):
    out = pack(tmp_path, variant, "--no-embed")
    h, _ = header(out)
    assert os.path.getsize(out) < os.path.getsize(TINY)
    on_packed = compare_rows(out, "fp32")[0]
    on_original = compare_rows(TINY, variant)[0]
    assert on_packed["ppl"] == on_original["ppl"] and on_packed["nll"] == on_original["nll"]


def test_quantize_output_is_the_fake_quantized_model(tmp_path):
    out = tmp_path / "q.pt"
    r = run("quantize", "--model", TINY, "--variant", "q4_0", "--output", str(out))
    assert r.returncode == 0, r.stderr
    on_output = compare_rows(out, "fp32")[0]
    on_original = compare_rows(TINY, "q4_0")[0]
    assert on_output["ppl"] == on_original["ppl"] and on_output["nll"] == on_original["nll"]


def test_spec_errors_are_usage_errors():
    assert_clean_error(run("compare", "--model", TINY, "--variants", "mxfp4:group32"), EXIT_USAGE, "mxfp4 has no fields")
    assert_clean_error(run("compare", "--model", TINY, "--variants", "nf4:group0"), EXIT_USAGE, "group size")
    assert_clean_error(run("compare", "--model", TINY, "--variants", "fp8e4m3:tensor:p101"), EXIT_USAGE, "percentile")
    # 96 divides no row of the fixture (128 and 256 inputs): the error names the layer.
    assert_clean_error(run("compare", "--model", TINY, "--variants", "nf4:group96", "--max-length", "32"), EXIT_USAGE,
                       "group size 96 does not divide")
