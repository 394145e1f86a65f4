"""The number formats of issue 14 against independent references, bit for bit.

* FP4 / FP6 / FP8 element rounding and the E8M0 scale against ml_dtypes' casts
  (float4_e2m1fn, float6_e2m3fn, float6_e3m2fn, float8_e4m3fn, float8_e5m2,
  float8_e8m0fnu), through the MX formats, the scaled fp4/fp8 grids and NVFP4,
  with the scale rules recomputed here in numpy from the specs.
* NF4 against the QLoRA table by brute-force nearest search (ties to the lower value).
* q8_0, q4_0, q4_1, q5_0, q5_1 against the gguf package's numpy quantize/dequantize
  (gguf-py, llama.cpp's reference in Python) on every Linear weight of the shipped
  model models/default.pt: the reconstructed weights, the float16 scales and minima,
  and the codes.

The C++ side is reached through tests/tools/format_probe.cpp (target quantppl_format_probe),
found through $QUANTPPL_FORMAT_PROBE or build/quantppl_format_probe.
"""

import os
import subprocess

import numpy as np
import pytest

import ml_dtypes  # pinned in scripts/setup_python_env.sh
import gguf  # noqa: E402  (pinned in scripts/setup_python_env.sh)
from gguf import GGMLQuantizationType  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PROBE = os.environ.get("QUANTPPL_FORMAT_PROBE", os.path.join(REPO, "build", "quantppl_format_probe"))
MODEL = os.path.join(REPO, "models", "default.pt")

ELEMENTS = {  # name: (ml_dtypes type, largest finite, MX emax)
    "e2m1": (ml_dtypes.float4_e2m1fn, 6.0, 2),
    "e2m3": (ml_dtypes.float6_e2m3fn, 7.5, 2),
    "e3m2": (ml_dtypes.float6_e3m2fn, 28.0, 4),
    "e4m3": (ml_dtypes.float8_e4m3fn, 448.0, 8),
    "e5m2": (ml_dtypes.float8_e5m2, 57344.0, 15),
}
BITS = {"e2m1": 4, "e2m3": 6, "e3m2": 6, "e4m3": 8, "e5m2": 8}
MX = {"mxfp4": "e2m1", "mxfp6e2m3": "e2m3", "mxfp6e3m2": "e3m2", "mxfp8e4m3": "e4m3", "mxfp8e5m2": "e5m2"}
NF4 = np.array([-1, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635,
                -0.18477343022823334, -0.09105003625154495, 0, 0.07958029955625534, 0.16093020141124725,
                0.24611230194568634, 0.33791524171829224, 0.44070982933044434, 0.5626170039176941,
                0.7229568362236023, 1], dtype=np.float32)


def probe(fmt, w, tmp_path):
    """Runs the C++ format on w [out, in]; returns (xhat, unpacked, meta, sections)."""
    assert os.path.exists(PROBE), f"{PROBE} not built (ninja quantppl_format_probe)"
    w = np.ascontiguousarray(w, dtype=np.float32)
    src = tmp_path / "w.f32"
    w.tofile(src)
    prefix = str(tmp_path / fmt.replace(":", "_"))
    r = subprocess.run([PROBE, fmt, str(w.shape[0]), str(w.shape[1]), str(src), prefix],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    xhat = np.fromfile(prefix + ".xhat.f32", dtype=np.float32).reshape(w.shape)
    unpacked = np.fromfile(prefix + ".unpacked.f32", dtype=np.float32).reshape(w.shape)
    prepared = np.fromfile(prefix + ".prepared.f32", dtype=np.float32).reshape(w.shape)
    assert_bits_equal(prepared, xhat)
    assert_bits_equal(unpacked, xhat)
    meta, sections = {}, {}
    for line in open(prefix + ".txt"):
        parts = line.split()
        if parts[0] == "section":
            sections[parts[1]] = (parts[2], int(parts[3]), np.fromfile(prefix + "." + parts[1] + ".bin", dtype=np.uint8))
        else:
            meta[parts[0]] = parts[1]
    return xhat, meta, sections


def assert_bits_equal(got, want):
    got = np.ascontiguousarray(got, dtype=np.float32)
    want = np.ascontiguousarray(want, dtype=np.float32)
    bad = got.view(np.uint32) != want.view(np.uint32)
    assert not bad.any(), f"{bad.sum()} of {bad.size} differ; first at {np.argwhere(bad)[0]}: " \
                          f"got {got[tuple(np.argwhere(bad)[0])]!r}, want {want[tuple(np.argwhere(bad)[0])]!r}"


def cast(x, element):
    """ml_dtypes' round-to-nearest-even cast, saturated at the largest finite value."""
    dtype, largest, _ = ELEMENTS[element]
    x = np.asarray(x, dtype=np.float32)
    return np.clip(x, -largest, largest).astype(dtype).astype(np.float32)


def unpack_codes(section, bits):
    """The LSB-first bit stream of packed_model.h as integers."""
    _, count, data = section
    stream = np.unpackbits(data, bitorder="little")[: count * bits].reshape(count, bits)
    return (stream.astype(np.int64) << np.arange(bits)).sum(axis=1)


def model_linear_weights():
    torch = pytest.importorskip("torch")
    m = torch.jit.load(MODEL)
    out = {}
    for name, p in m.named_parameters():
        if p.dim() == 2 and (".layer." in name or name == "lm_head.weight") and "relative_attention_bias" not in name:
            out[name] = p.detach().numpy().astype(np.float32)
    assert len(out) >= 50, sorted(out)
    return out


@pytest.fixture(scope="module")
def weights():
    return model_linear_weights()


@pytest.fixture(scope="module")
def blocks32(weights):
    """Every Linear weight cut into its rows of 32 consecutive inputs: [N, 32]."""
    return np.concatenate([w.reshape(-1, 32) for w in weights.values()])


def random_blocks(rng, n_blocks, width, emax):
    """Blocks whose first value is 2^emax (so the MX scale is 2^0 = 1) and the rest log-uniform
    magnitudes up to 2^(emax+1) (beyond the largest normal: saturation), plus every midpoint."""
    mags = np.exp2(rng.uniform(emax - 14, emax + 1, size=(n_blocks, width))).astype(np.float32)
    x = (mags * rng.choice([-1, 1], size=mags.shape)).astype(np.float32)
    x[:, 0] = np.float32(2.0 ** emax)
    return x


# ---- element rounding ---------------------------------------------------------------

@pytest.mark.parametrize("fmt", sorted(MX))
def test_mx_element_rounding_matches_ml_dtypes(fmt, tmp_path):
    element = MX[fmt]
    dtype, largest, emax = ELEMENTS[element]
    rng = np.random.default_rng(14)
    x = random_blocks(rng, 512, 32, emax)
    # Every midpoint of consecutive representable values, and its float neighbours.
    codes = np.arange(2 ** BITS[element], dtype=np.uint8)
    values = np.unique(codes.view(dtype).astype(np.float32))
    values = values[np.isfinite(values)]
    assert values.max() == largest
    mids = ((values[:-1].astype(np.float64) + values[1:]) / 2).astype(np.float32)
    extra = np.concatenate([mids, np.nextafter(mids, np.float32(np.inf)), np.nextafter(mids, np.float32(-np.inf))])
    extra = extra[np.abs(extra) < 2.0 ** (emax + 1)]
    pad = (-len(extra)) % 31
    extra = np.concatenate([extra, np.zeros(pad, dtype=np.float32)]).reshape(-1, 31)
    x = np.concatenate([x, np.concatenate([np.full((len(extra), 1), 2.0 ** emax, dtype=np.float32), extra], axis=1)])
    xhat, meta, sections = probe(fmt, x, tmp_path)
    assert_bits_equal(xhat, cast(x, element))
    assert sections["scales"][0] == "e8m0"
    assert (sections["scales"][2] == 127).all()  # X = 2^0


def mx_reference(x, element):
    """OCP MX v1.0: X = 2^(floor(log2 amax) - emax), P = cast(V / X) clamped, x_hat = P * X."""
    _, _, emax = ELEMENTS[element]
    blocks = x.reshape(-1, 32).astype(np.float32)
    amax = np.abs(blocks).max(axis=1, keepdims=True)
    _, e = np.frexp(np.where(amax > 0, amax, 1).astype(np.float64))
    k = np.clip(np.where(amax > 0, e - 1 - emax, -127), -127, 127)
    scale = np.ldexp(np.float64(1), k).astype(np.float32)
    xhat = cast(blocks / scale, element) * scale
    return xhat.reshape(x.shape), (k + 127).astype(np.uint8).ravel()


@pytest.mark.parametrize("fmt", sorted(MX))
def test_mx_on_the_model_weights_matches_the_spec_rule(fmt, blocks32, tmp_path):
    want, scale_bytes = mx_reference(blocks32, MX[fmt])
    xhat, meta, sections = probe(fmt, blocks32, tmp_path)
    assert_bits_equal(xhat, want)
    np.testing.assert_array_equal(sections["scales"][2], scale_bytes)
    # The E8M0 bytes are ml_dtypes' float8_e8m0fnu of the scale.
    np.testing.assert_array_equal(sections["scales"][2].view(ml_dtypes.float8_e8m0fnu).astype(np.float64),
                                  np.ldexp(1.0, scale_bytes.astype(np.int64) - 127))
    # Codes are the element's bit pattern: ml_dtypes' cast of P, viewed as bits.
    bits = BITS[MX[fmt]]
    codes = unpack_codes(sections["codes"], bits)
    p = cast(blocks32 / np.ldexp(np.float32(1), scale_bytes.astype(np.int64) - 127)[:, None].astype(np.float32), MX[fmt])
    want_codes = p.astype(ELEMENTS[MX[fmt]][0]).view(np.uint8).ravel().astype(np.int64)
    np.testing.assert_array_equal(codes, want_codes)
    assert float(meta["bits_per_weight"]) == bits + 8 / 32


def test_mxint8_on_the_model_weights(blocks32, tmp_path):
    blocks = blocks32.astype(np.float32)
    amax = np.abs(blocks).max(axis=1, keepdims=True)
    _, e = np.frexp(amax.astype(np.float64))
    k = np.clip(e - 1, -127, 127)
    scale = np.ldexp(np.float64(1), k).astype(np.float32)
    q = np.clip(np.round((blocks / scale) * np.float32(64)), -127, 127)  # np.round: half to even
    want = (q / np.float32(64)).astype(np.float32) * scale
    xhat, meta, sections = probe("mxint8", blocks, tmp_path)
    assert_bits_equal(xhat + 0.0, want + 0.0)
    np.testing.assert_array_equal(unpack_codes(sections["codes"], 8), q.astype(np.int8).view(np.uint8).ravel())


@pytest.mark.parametrize("grid,element,spec", [("fp4", "e2m1", "fp4:group32"), ("fp8e4m3", "e4m3", "fp8e4m3:group32"),
                                               ("fp8e5m2", "e5m2", "fp8e5m2:group32"), ("fp4", "e2m1", "fp4:channel"),
                                               ("fp8e4m3", "e4m3", "fp8e4m3:tensor")])
def test_scaled_fp_grids_match_ml_dtypes(grid, element, spec, weights, tmp_path):
    w = weights["encoder.block.0.layer.1.DenseReluDense.wi_0.weight"]
    largest = ELEMENTS[element][1]
    if spec.endswith("group32"):
        blocks = w.reshape(-1, 32)
    elif spec.endswith("channel"):
        blocks = w
    else:
        blocks = w.reshape(1, -1)
    s = (np.abs(blocks).max(axis=1, keepdims=True) / np.float32(largest)).astype(np.float32)
    want = (cast(blocks / s, element) * s).reshape(w.shape)
    xhat, meta, sections = probe(spec, w, tmp_path)
    assert_bits_equal(xhat, want)
    np.testing.assert_array_equal(sections["scales"][2].view(np.float32), s.ravel())


def test_nvfp4_matches_its_two_level_rule(weights, tmp_path):
    for name in ["encoder.block.0.layer.0.SelfAttention.q.weight", "lm_head.weight"]:
        w = weights[name]
        g = np.float32(np.abs(w).max()) / np.float32(2688)
        blocks = w.reshape(-1, 16)
        amax_b = np.abs(blocks).max(axis=1, keepdims=True)
        d = cast(amax_b / (np.float32(6) * g), "e4m3")
        s = (d * g).astype(np.float32)
        safe = np.where(s > 0, s, np.float32(1))
        want = np.where(s > 0, cast(blocks / safe, "e2m1") * s, np.float32(0)).reshape(w.shape)
        xhat, meta, sections = probe("nvfp4", w, tmp_path)
        assert_bits_equal(xhat, want)
        np.testing.assert_array_equal(sections["scales"][2], d.astype(ml_dtypes.float8_e4m3fn).view(np.uint8).ravel())
        assert sections["global_scale"][2].view(np.float32)[0] == g
        assert float(meta["bits_per_weight"]) == pytest.approx(4.5 + 32 / w.size, abs=0)


@pytest.mark.parametrize("spec", ["nf4:group64", "nf4:channel", "nf4:tensor"])
def test_nf4_is_the_nearest_table_value_ties_low(spec, weights, tmp_path):
    w = weights["decoder.block.1.layer.2.DenseReluDense.wo.weight"]
    blocks = w.reshape(-1, 64) if spec.endswith("group64") else (w if spec.endswith("channel") else w.reshape(1, -1))
    s = np.abs(blocks).max(axis=1, keepdims=True).astype(np.float32)
    q = (blocks / s).astype(np.float32)
    # argmin returns the first minimum: the lower of two equidistant table values.
    idx = np.abs(q[..., None].astype(np.float64) - NF4.astype(np.float64)).argmin(axis=-1)
    want = (NF4[idx] * s).reshape(w.shape)
    xhat, meta, sections = probe(spec, w, tmp_path)
    assert_bits_equal(xhat, want)
    np.testing.assert_array_equal(unpack_codes(sections["codes"], 4), idx.ravel())


def test_nf4_midpoints_go_to_the_lower_value(tmp_path):
    mids = ((NF4[:-1].astype(np.float64) + NF4[1:]) / 2)
    exact = mids[mids.astype(np.float32).astype(np.float64) == mids].astype(np.float32)
    assert len(exact) >= 1
    x = np.zeros((1, 32), dtype=np.float32)
    x[0, 0] = 1.0
    x[0, 1:1 + len(exact)] = exact
    xhat, _, _ = probe("nf4", x, tmp_path)
    lower = NF4[np.searchsorted(NF4, exact) - 1]
    assert_bits_equal(xhat[0, 1:1 + len(exact)], lower)


# ---- llama.cpp's block formats ----------------------------------------------------------

GGUF = {"q8_0": GGMLQuantizationType.Q8_0, "q4_0": GGMLQuantizationType.Q4_0, "q4_1": GGMLQuantizationType.Q4_1,
        "q5_0": GGMLQuantizationType.Q5_0, "q5_1": GGMLQuantizationType.Q5_1}


def gguf_fields(fmt, raw):
    """(d f16 bits, m f16 bits or None, codes [N, 32]) from gguf-py's block bytes."""
    n = raw.shape[0]
    d = raw[:, 0:2].copy().view(np.uint16).ravel()
    if fmt == "q8_0":
        return d, None, raw[:, 2:34].astype(np.int64)
    off = 2
    m = None
    if fmt in ("q4_1", "q5_1"):
        m = raw[:, 2:4].copy().view(np.uint16).ravel()
        off = 4
    qh = None
    if fmt in ("q5_0", "q5_1"):
        qh = raw[:, off:off + 4].copy().view(np.uint32).ravel()
        off += 4
    qs = raw[:, off:off + 16].astype(np.int64)
    codes = np.concatenate([qs & 0x0F, qs >> 4], axis=1)
    if qh is not None:
        codes |= (((qh[:, None] >> np.arange(32, dtype=np.uint32)) & 1).astype(np.int64) << 4)
    assert codes.shape == (n, 32)
    return d, m, codes


@pytest.mark.parametrize("fmt", sorted(GGUF))
def test_gguf_blocks_are_bit_exact_with_gguf_py_on_every_model_weight(fmt, weights, blocks32, tmp_path):
    qtype = GGUF[fmt]
    raw = gguf.quants.quantize(blocks32, qtype)
    want = gguf.quants.dequantize(raw, qtype).reshape(blocks32.shape).astype(np.float32)
    xhat, meta, sections = probe(fmt, blocks32, tmp_path)
    assert_bits_equal(xhat, want)
    d, m, codes = gguf_fields(fmt, raw.reshape(blocks32.shape[0], -1))
    np.testing.assert_array_equal(sections["scales"][2].view(np.uint16), d)
    if m is not None:
        np.testing.assert_array_equal(sections["mins"][2].view(np.uint16), m)
    bits = {"q8_0": 8, "q4_0": 4, "q4_1": 4, "q5_0": 5, "q5_1": 5}[fmt]
    got_codes = unpack_codes(sections["codes"], bits).reshape(-1, 32)
    if fmt == "q8_0":
        got_codes = got_codes.astype(np.uint8).view(np.int8).astype(np.int64) & 0xFF
    np.testing.assert_array_equal(got_codes, codes & ((1 << bits) - 1))
    assert float(meta["bits_per_weight"]) == {"q8_0": 8.5, "q4_0": 4.5, "q4_1": 5.0, "q5_0": 5.5, "q5_1": 6.0}[fmt]
    # Per weight too (the format cuts rows, not the concatenation): one whole layer.
    w = weights["decoder.block.0.layer.2.DenseReluDense.wo.weight"]
    w_want = gguf.quants.dequantize(gguf.quants.quantize(w, qtype), qtype).astype(np.float32)
    w_xhat, _, _ = probe(fmt, w, tmp_path)
    assert_bits_equal(w_xhat, w_want)


def test_probe_reports_nan_as_a_data_error(tmp_path):
    w = np.ones((2, 32), dtype=np.float32)
    w[1, 3] = np.nan
    src = tmp_path / "w.f32"
    w.tofile(src)
    r = subprocess.run([PROBE, "q4_0", "2", "32", str(src), str(tmp_path / "x")], capture_output=True, text=True)
    assert r.returncode == 3 and "NaN" in r.stderr, r.stderr
