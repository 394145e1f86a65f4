"""End-to-end tests of the format table (issue 14's structure): --help lists every format family
with its bits per weight, the README carries the same table, every report row has bits_per_weight,
and `quantize --packed` writes a file smaller than its model.

Run like tests/cli/test_cli.py, with QUANTPPL_BIN and QUANTPPL_FIXTURES in the environment.
"""

import json
import os
import re
import struct

import torch

from .conftest import EXIT_USAGE, REPO, TINY, assert_clean_error, compare_json, run


def help_table():
    """The format table as `quantppl --help` prints it: from the FORMAT header line to Methods."""
    r = run("--help")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("FORMAT"))
    end = next(i for i, line in enumerate(lines) if line.startswith("Methods:"))
    return lines[start:end]


def test_help_lists_every_format_family_with_bits_and_meaning():
    table = help_table()
    assert "BITS PER WEIGHT" in table[0] and "MEANING" in table[0]
    rows = table[1:]
    assert any(row.startswith("absmax:BITS[:GRAN[:RANGE[:ARITH]]]") for row in rows)
    assert any(row.startswith("zeropoint:BITS[:GRAN[:RANGE[:ARITH]]]") for row in rows)
    for row in rows:
        assert len(re.split(r"\s{2,}", row.strip())) >= 3, row  # syntax, bits, meaning
    # The subcommands that take a spec print it too.
    r = run("quantize", "--help")
    assert r.returncode == 0 and all(row in r.stdout for row in table)


def test_readme_carries_the_table_the_cli_prints():
    readme = open(os.path.join(REPO, "README.md"), encoding="utf-8").read()
    for row in help_table():
        assert row.rstrip() in readme, row


def test_methods_rtn_is_a_no_op_and_unknown_methods_are_named():
    j = compare_json("--variants", "absmax:8,absmax:8+rtn", "--max-length", "32")
    a, b = j["results"]
    assert a["spec"] == b["spec"] == "absmax:8:tensor:minmax" and a["nll"] == b["nll"]
    assert_clean_error(run("compare", "--model", TINY, "--variants", "absmax:8+nosuch"), EXIT_USAGE,
                       "unknown method 'nosuch'", "rtn")


def linear_shapes(path):
    m = torch.jit.load(path)
    shapes = []
    for name, mod in m.named_modules():
        if mod.original_name == "Linear":
            shapes.append(tuple(mod.weight.shape))
    return shapes


def test_bits_per_weight_is_all_stored_bits_over_the_weights():
    shapes = linear_shapes(TINY)
    weights = sum(o * i for o, i in shapes)
    rows = ("out", "in")  # noqa: F841 (documentation: shapes are [out, in])
    j = compare_json("--variants", "fp32,absmax:4:group32,zeropoint:4:group32,absmax:8:channel",
                     "--max-length", "32")
    got = {r["spec"]: r["bits_per_weight"] for r in j["results"]}
    assert got["fp32"] == 32
    assert got["absmax:4:group32:minmax"] == 4 + 32 / 32
    assert got["zeropoint:4:group32:minmax"] == 4 + 48 / 32
    channel = sum(o * i * 8 + 32 * o for o, i in shapes) / weights
    assert abs(got["absmax:8:channel:minmax"] - channel) < 1e-12
    for r in j["results"]:
        assert r["bits_per_weight"] == 8 * r["packed_bytes"] / (r["fp32_bytes"] / 4)


def test_quantize_prints_bits_per_weight_and_file_size_vs_the_model(tmp_path):
    out = tmp_path / "m.qpack"
    r = run("quantize", "--model", TINY, "--variant", "absmax:4:group32", "--packed", str(out))
    assert r.returncode == 0, r.stderr
    assert "5 bits per weight" in r.stderr, r.stderr
    size, model = os.path.getsize(out), os.path.getsize(TINY)
    assert f"file {size} bytes vs the original model's {model} bytes" in r.stderr, r.stderr
    assert size < model
    data = out.read_bytes()
    version, _, length = struct.unpack_from("<IIQ", data, 8)
    h = json.loads(data[88:88 + length])
    assert version == 2 and h["format_version"] == 2
    # The embedded archive is smaller than the model by about the quantized weights' float32 bytes.
    weights = sum(layer["numel"] for layer in h["layers"])
    assert h["source_model"]["section"]["bytes"] < model - 4 * weights + 64 * 1024
    r = run("quantize", "--model", TINY, "--variant", "absmax:4:group32", "--output", str(tmp_path / "q.pt"))
    assert r.returncode == 0 and "5 bits per weight packed" in r.stderr, r.stderr


def test_inspect_reports_every_format(tmp_path):
    r = run("inspect", "--model", TINY, "--variant", "absmax:4:channel", "--format", "json", "--quiet")
    assert r.returncode == 0, r.stderr
    j = json.loads(r.stdout)
    assert j["summary"]["clipped_fraction"] is not None and j["layers"][0]["scale_min"] is not None
