"""The `tutorial` arithmetic (variant field ARITH) against the seed tutorial's own functions.

absmax_quantize and zeropoint_quantize are copied verbatim from the seed tutorial
(shared/seeds/naive-quantization-flan-t5-tutorial.txt). At other bit widths its constants are written
in b exactly as include/quantppl/quantize.h states (127 -> 2^(b-1) - 1, 255 -> 2^b - 1,
128 -> 2^(b-1), clip to [-2^(b-1), 2^(b-1) - 1]); at 8 bits these generalised functions are checked
to be the tutorial's, bit for bit. `quantppl quantize --variant SCHEME:B:tensor:minmax:tutorial --output`
must then write Linear weights equal, bit for bit (float32), to the functions' ip_dequant of the
original weights; the default arithmetic must not (it divides by a step instead of multiplying).

Run like tests/cli/test_cli.py, with /usr/bin/python3 (torch) and QUANTPPL_BIN / QUANTPPL_FIXTURES.
"""

import os
import subprocess

import pytest
import torch

from .conftest import BIN, REPO, TINY

DEFAULT_MODEL = os.path.join(REPO, "models", "default.pt")


# ---- the tutorial, verbatim ----

def absmax_quantize(ip):
    # Calculate scale
    scale = 127 / torch.max(torch.abs(ip))
    # Quantize
    ip_quant = (scale * ip).round()
    # Dequantize
    ip_dequant = ip_quant / scale
    return ip_quant.to(torch.int8), ip_dequant


def zeropoint_quantize(ip):
    # Calculate scale
    ip_range = torch.max(ip) - torch.min(ip)
    ip_range = 1 if ip_range == 0 else ip_range
    scale = 255 / ip_range
    # calculate zeropoint
    zeropoint = (-scale * torch.min(ip) - 128).round()
    # quantize by rounding
    ip_quant = torch.clip((ip * scale + zeropoint).round(), -128, 127)
    # dequantize
    ip_dequant = (ip_quant - zeropoint) / scale
    return ip_quant.to(torch.int8), ip_dequant


# ---- the same functions with b bits (the generalisation) ----

def absmax_quantize_bits(ip, b):
    scale = (2 ** (b - 1) - 1) / torch.max(torch.abs(ip))
    ip_quant = (scale * ip).round()
    ip_dequant = ip_quant / scale
    return ip_quant.to(torch.int8), ip_dequant


def zeropoint_quantize_bits(ip, b):
    ip_range = torch.max(ip) - torch.min(ip)
    ip_range = 1 if ip_range == 0 else ip_range
    scale = (2 ** b - 1) / ip_range
    zeropoint = (-scale * torch.min(ip) - 2 ** (b - 1)).round()
    ip_quant = torch.clip((ip * scale + zeropoint).round(), -2 ** (b - 1), 2 ** (b - 1) - 1)
    ip_dequant = (ip_quant - zeropoint) / scale
    return ip_quant.to(torch.int8), ip_dequant


TUTORIAL = {"absmax": absmax_quantize_bits, "zeropoint": zeropoint_quantize_bits}


def linear_weights(path):
    """{name: float32 weight} of every nn.Linear in a contract model (docs/model-contract.md)."""
    module = torch.jit.load(path)
    return {name: m.weight.detach().clone() for name, m in module.named_modules() if m.original_name == "Linear"}


def quantize(tmp_path, model, variant):
    out = tmp_path / (variant.replace(":", "_") + ".pt")
    r = subprocess.run([BIN, "quantize", "--model", model, "--variant", variant, "--output", str(out)],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    return linear_weights(str(out))


def tutorial_weights(original, scheme, bits, per_row=False):
    fn = TUTORIAL[scheme]
    out = {}
    for name, w in original.items():
        if per_row:
            out[name] = torch.stack([fn(row, bits)[1] for row in w])
        else:
            out[name] = fn(w, bits)[1]
    return out


def mismatches(got, expected):
    assert got.keys() == expected.keys()
    bad = []
    for name in got:
        assert got[name].dtype == expected[name].dtype == torch.float32, name
        if not torch.equal(got[name], expected[name]):
            n = int((got[name] != expected[name]).sum())
            bad.append(f"{name}: {n} of {got[name].numel()} weights differ")
    return bad


@pytest.fixture(scope="module")
def tiny_weights():
    return linear_weights(TINY)


def test_generalisation_is_the_tutorial_at_8_bits(tiny_weights):
    for w in tiny_weights.values():
        for verbatim, general in [(absmax_quantize, absmax_quantize_bits), (zeropoint_quantize, zeropoint_quantize_bits)]:
            q8, d8 = verbatim(w)
            qb, db = general(w, 8)
            assert torch.equal(q8, qb) and torch.equal(d8, db)


@pytest.mark.parametrize("bits", [8, 6, 4, 3, 2])
@pytest.mark.parametrize("scheme", ["absmax", "zeropoint"])
def test_tutorial_arithmetic_equals_the_tutorial_bit_for_bit(tmp_path, tiny_weights, scheme, bits):
    got = quantize(tmp_path, TINY, f"{scheme}:{bits}:tensor:minmax:tutorial")
    assert mismatches(got, tutorial_weights(tiny_weights, scheme, bits)) == []


@pytest.mark.parametrize("scheme", ["absmax", "zeropoint"])
def test_per_channel_tutorial_is_the_tutorial_per_row(tmp_path, tiny_weights, scheme):
    got = quantize(tmp_path, TINY, f"{scheme}:4:channel:minmax:tutorial")
    assert mismatches(got, tutorial_weights(tiny_weights, scheme, 4, per_row=True)) == []


@pytest.mark.parametrize("scheme", ["absmax", "zeropoint"])
def test_default_arithmetic_is_not_the_tutorials(tmp_path, tiny_weights, scheme):
    # The control: the comparison above can tell the two arithmetics apart on these weights.
    got = quantize(tmp_path, TINY, f"{scheme}:8")
    assert mismatches(got, tutorial_weights(tiny_weights, scheme, 8)) != []


@pytest.mark.skipif(not os.path.exists(DEFAULT_MODEL), reason="models/default.pt not built yet")
@pytest.mark.parametrize("scheme", ["absmax", "zeropoint"])
def test_default_model_at_8_bits_equals_the_tutorial(tmp_path, scheme):
    # The tutorial's own setting: flan-t5-small, every Linear weight, 8 bits, per tensor.
    got = quantize(tmp_path, DEFAULT_MODEL, f"{scheme}:8:tensor:minmax:tutorial")
    assert mismatches(got, tutorial_weights(linear_weights(DEFAULT_MODEL), scheme, 8)) == []
