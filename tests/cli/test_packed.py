"""End-to-end tests of `quantize --packed` and of evaluating .qpack files (docs/qpack-format.md).

Run like tests/cli/test_cli.py, with QUANTPPL_BIN and QUANTPPL_FIXTURES in the environment.
"""

import json
import os
import struct

from . import conftest
from .conftest import EXIT_DATA, EXIT_USAGE, TINY, assert_clean_error, run



def pack(tmp_path, variant, *extra, name="m.qpack"):
    out = tmp_path / name
    r = run("quantize", "--model", TINY, "--variant", variant, "--packed", str(out), *extra)
    assert r.returncode == 0, r.stderr
    return out


def header(path):
    data = path.read_bytes()
    assert data[:8] == b"QPPLPACK"
    version, reserved, length = struct.unpack_from("<IIQ", data, 8)
    assert (version, reserved) == (2, 0)
    return json.loads(data[88:88 + length]), data


def compare_json(model, variants):
    return conftest.compare_json("--variants", variants, "--max-length", "32", model=model)["results"]


def test_quantize_packed_writes_a_documented_file(tmp_path):
    out = pack(tmp_path, "absmax:4:group32")
    h, data = header(out)
    assert h["variant"] == "absmax:4:group32:minmax" and h["weight_format"] == "absmax:4:group32:minmax"
    assert h["source_model"]["embedded"] is True
    length = struct.unpack_from("<Q", data, 16)[0]
    payload = (88 + length + 63) // 64 * 64
    assert len(data) == payload + h["payload_bytes"]
    packed = weights = 0
    for layer in h["layers"]:
        out_f, in_f = layer["shape"]
        codes, scales = layer["sections"]
        assert (codes["name"], codes["dtype"], codes["count"]) == ("codes", "u4", out_f * in_f)
        assert codes["bytes"] == (out_f * in_f * 4 + 7) // 8  # two codes a byte
        assert (scales["name"], scales["dtype"], scales["count"]) == ("scales", "f32", out_f * in_f // 32)
        assert scales["bytes"] == 4 * scales["count"]
        assert codes["offset"] % 64 == 0 and scales["offset"] % 64 == 0
        packed += codes["bytes"] + scales["bytes"]
        weights += out_f * in_f
    assert h["packed_bytes"] == packed and h["bits_per_weight"] == 8 * packed / weights == 4 + 32 / 32
    # compare reports the same size for the variant.
    results = compare_json(TINY, "absmax:4:group32")
    assert results[0]["packed_bytes"] == packed
    assert results[0]["compression_ratio"] == results[0]["fp32_bytes"] / packed
    assert results[0]["bits_per_weight"] == 5.0
    # The embedded model has no float32 copy of the quantized weights: the file is smaller than the model.
    assert len(data) < os.path.getsize(TINY) - 4 * weights + packed + 64 * 1024
    assert len(data) < os.path.getsize(TINY)


def test_compare_on_packed_file_equals_compare_with_the_variant(tmp_path):
    out = pack(tmp_path, "zeropoint:3:channel", "--no-embed")
    h, _ = header(out)
    assert h["source_model"]["embedded"] is False and os.path.getsize(out) < os.path.getsize(TINY)
    on_packed = compare_json(out, "fp32")[0]
    on_original = compare_json(TINY, "zeropoint:3:channel")[0]
    assert on_packed["ppl"] == on_original["ppl"] and on_packed["nll"] == on_original["nll"]


def test_truncated_file_is_a_one_line_data_error(tmp_path):
    out = pack(tmp_path, "absmax:8")
    bad = tmp_path / "truncated.qpack"
    bad.write_bytes(out.read_bytes()[:-100])
    r = run("compare", "--model", str(bad), "--variants", "fp32", "--quiet")
    assert_clean_error(r, EXIT_DATA, "truncated.qpack", "truncated")


def test_corrupt_section_is_a_one_line_data_error(tmp_path):
    out = pack(tmp_path, "absmax:8")
    data = bytearray(out.read_bytes())
    data[-5000] ^= 0xFF
    out.write_bytes(bytes(data))
    assert_clean_error(run("compare", "--model", str(out), "--quiet"), EXIT_DATA, "payload_sha256")


def test_output_and_packed_together_is_a_usage_error(tmp_path):
    r = run("quantize", "--model", TINY, "--variant", "absmax:8", "--output", str(tmp_path / "a.pt"),
            "--packed", str(tmp_path / "a.qpack"))
    assert_clean_error(r, EXIT_USAGE, "--output", "--packed")
    r = run("quantize", "--model", TINY, "--variant", "absmax:8")
    assert_clean_error(r, EXIT_USAGE, "--output", "--packed")
    r = run("quantize", "--model", TINY, "--variant", "absmax:8", "--output", str(tmp_path / "a.pt"), "--no-embed")
    assert_clean_error(r, EXIT_USAGE, "--no-embed")
    assert not any(tmp_path.iterdir())


def test_existing_packed_file_needs_force(tmp_path):
    out = pack(tmp_path, "absmax:8")
    r = run("quantize", "--model", TINY, "--variant", "absmax:4", "--packed", str(out))
    assert r.returncode == 4 and "--force" in r.stderr
    assert header(out)[0]["weight_format"] == "absmax:8:tensor:minmax"
    pack(tmp_path, "absmax:4", "--force")
    assert header(out)[0]["weight_format"] == "absmax:4:tensor:minmax"
