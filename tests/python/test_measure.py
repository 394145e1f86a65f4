"""scripts/measure_default_model.py: quantization formulas and the windowed perplexity.

Expected values are worked out by hand from the seed tutorial's example, or computed with
transformers' own loss, never by the code under test.
"""

import math
import os

import pytest
import torch

from conftest import run_export

from quantppl_tools import measure as mdm

transformers = pytest.importorskip("transformers")
from transformers import T5Config, T5ForConditionalGeneration  # noqa: E402


def test_absmax_8bit_seed_example():
    # Seed: [-0.3, 0, 0.1, 0.7], scale 127/0.7 -> q = [-54, 0, 18, 127] (-54.43, 18.14 rounded)
    w = torch.tensor([[-0.3, 0.0, 0.1, 0.7]])
    got = mdm.fake_quantize(w, "absmax", 8, "tensor")
    s = 127 / 0.7
    expected = torch.tensor([[-54.0, 0.0, 18.0, 127.0]]) / s
    assert torch.allclose(got, expected, atol=1e-7)
    assert got[0, 1].item() == 0.0  # zero maps to zero


def test_zeropoint_8bit_seed_example():
    # Seed: range 1.0, scale 255, zero point round(-255 * -0.3 - 128) = round(-51.5) = -52 (half to even)
    w = torch.tensor([[-0.3, 0.0, 0.1, 0.7]])
    got = mdm.fake_quantize(w, "zeropoint", 8, "tensor")
    # q = round(255 w - 52) with half to even: -128.5 -> -128, -26.5 -> -26, 126.5 -> 126
    # (in float32 255 * 0.7 is exactly 178.5, so 0.7 comes back as 178/255, not 0.7).
    q = torch.tensor([[-128.0, -52.0, -26.0, 126.0]])
    expected = (q + 52.0) / 255.0
    assert torch.allclose(got, expected, atol=1e-6)


def test_granularities_use_their_own_ranges():
    # Row 0 has a large outlier; per channel and per group 64 give row 1 its own, finer scale.
    g = torch.Generator().manual_seed(0)
    w = torch.randn(2, 128, generator=g) * 0.02
    w[0, 3] = 1.0
    err = {gran: (mdm.fake_quantize(w, "absmax", 4, gran) - w)[1].abs().max().item()
           for gran in ("tensor", "channel", "group")}
    step_tensor = 1.0 / 7                       # 4-bit absmax: qmax = 7, range set by the outlier
    assert err["tensor"] == pytest.approx(w[1].abs().max().item(), rel=1e-6)  # row 1 rounds to 0
    assert err["channel"] <= w[1].abs().max().item() / 7 / 2 + 1e-7
    assert err["group"] <= w[1].abs().max().item() / 7 / 2 + 1e-7
    assert err["channel"] < step_tensor / 2
    with pytest.raises(ValueError):
        mdm.fake_quantize(torch.zeros(2, 96), "absmax", 4, "group")


def test_corpus_nll_matches_transformers(tmp_path, spiece_path):
    """Windowed labels = input NLL of an exported model equals transformers' loss per window."""
    torch.manual_seed(11)
    cfg = dict(vocab_size=128, d_model=64, d_kv=16, d_ff=128, num_layers=2, num_decoder_layers=2, num_heads=4,
               feed_forward_proj="gated-gelu", tie_word_embeddings=False, decoder_start_token_id=0)
    hf = T5ForConditionalGeneration(T5Config(**cfg)).eval()
    ckpt = tmp_path / "ckpt"
    hf.save_pretrained(str(ckpt))
    out = tmp_path / "m.pt"
    proc = run_export(ckpt, out, "--tokenizer", spiece_path, "--max-length", 16)
    assert proc.returncode == 0, proc.stderr
    module, meta, sp = mdm.load_model(str(out))
    ids = list(torch.randint(2, 128, (40,), generator=torch.Generator().manual_seed(1)).tolist()) + [1]
    total, count = mdm.corpus_nll(module, meta, ids, batch=2)
    assert count == len(ids)
    expected = 0.0
    with torch.no_grad():
        for i in range(0, len(ids), 16):  # windows 16, 16, 9
            w = torch.tensor([ids[i:i + 16]])
            expected += hf(input_ids=w, labels=w).loss.item() * w.size(1)
    assert total == pytest.approx(expected, rel=1e-5)
    assert math.isfinite(total)
