"""scripts/quantppl_tools/tutorial_baseline.py: the seed tutorial's pipeline, the baseline that
`quantppl compare` is timed against (scripts/bench.sh section (f)).

Run: build/venv/bin/python -m pytest -q tests/python/test_tutorial_baseline.py
"""

import json
import math
import os

import pytest
import torch

from quantppl_tools import bench_models as mbm
from quantppl_tools import python_baseline as pb
from quantppl_tools import tutorial_baseline as tb

TINY = dict(vocab_size=128, d_model=32, d_kv=8, d_ff=48, num_layers=2, num_decoder_layers=3, num_heads=4,
            relative_attention_num_buckets=8, relative_attention_max_distance=20, feed_forward_proj="gated-gelu",
            tie_word_embeddings=False, layer_norm_epsilon=1e-6, pad_token_id=0, eos_token_id=1,
            decoder_start_token_id=0)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, spiece_path):
    from conftest import SENTENCES

    d = tmp_path_factory.mktemp("tutorial")
    model = str(d / "tiny.pt")
    mbm.make_from_config(TINY, model, seed=5, max_length=16, tokenizer=spiece_path, name="tiny", log=None)
    text = d / "text.txt"
    text.write_text("\n".join(SENTENCES[:6]) + "\n", encoding="utf-8")
    checkpoint = str(d / "hf")
    tb.make_checkpoint(model, checkpoint)
    tb.check_token_ids(checkpoint, str(text))
    return model, checkpoint, str(text)


def test_zeropoint_of_the_tutorials_example_is_minus_52():
    """The tutorial: for [-0.3, 0., 0.1, 0.7] 'the zero point is skewed towards the left and takes a
    value of -52' -- zero quantizes to the zero point."""
    q, deq = tb.zeropoint_quantize(torch.tensor([-0.3, 0.0, 0.1, 0.7]))
    assert q.dtype == torch.int8 and q[1].item() == -52
    assert torch.allclose(deq, torch.tensor([-0.3, 0.0, 0.1, 0.7]), atol=0.5 / 255)


def test_absmax_keeps_zero_and_the_extreme():
    """'Zero at the input always maps to zero at the output'; the largest magnitude maps to 127."""
    q, deq = tb.absmax_quantize(torch.tensor([-0.3, 0.0, 0.1, 0.7]))
    assert q.tolist() == [-54, 0, 18, 127]  # round(127 / 0.7 * x), by hand
    assert deq[1].item() == 0.0


def test_checkpoint_holds_the_contract_models_weights(tiny):
    model, checkpoint, _ = tiny
    from transformers import T5ForConditionalGeneration

    scripted = torch.jit.load(model).state_dict()
    hf = T5ForConditionalGeneration.from_pretrained(checkpoint).state_dict()
    assert set(hf) == set(scripted)
    for name, tensor in hf.items():
        assert torch.equal(tensor, scripted[name]), name


def test_fp32_perplexity_equals_the_contract_models(tiny):
    """Same weights and token ids: the tutorial's exp(loss) per window, weighted by window length,
    equals the perplexity python_baseline.py computes from the TorchScript model (its own
    tokenization, windows and NLL, B=1)."""
    model, checkpoint, text = tiny
    out = tb.run(checkpoint, text, threads=1, max_length=16)
    module, _, info, batches = pb.prepare(model, text, batch_size=1, max_length=16)
    tokens, _, nll_sum, _ = pb.run(module, batches, warmup=0)
    assert out["text_tokens"] == info["text_tokens"] == tokens
    assert out["windows"] == info["windows"] > 1
    assert out["perplexity"]["fp32"] == pytest.approx(math.exp(nll_sum / tokens), rel=1e-5)
    for variant in ("absmax:8", "zeropoint:8"):
        # 8-bit weights move the perplexity, a little.
        assert out["perplexity"][variant] != out["perplexity"]["fp32"]
        assert out["perplexity"][variant] == pytest.approx(out["perplexity"]["fp32"], rel=0.05)
    assert out["linear_layers"] == 2 * 7 + 3 * 11 + 1  # q,k,v,o,wi_0,wi_1,wo per block (+ cross q,k,v,o), lm_head
    json.dumps(out)
