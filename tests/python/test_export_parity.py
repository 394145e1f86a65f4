"""Parity of scripts/export_t5.py's TorchScript T5 with Hugging Face's T5ForConditionalGeneration.

Each test builds an HF model with seeded random weights (no download), saves it with
save_pretrained, exports it by running scripts/export_t5.py as a subprocess (the user's path),
torch.jit.loads the archive and compares logits and losses with transformers' own forward.
The expected values always come from transformers, never from the code under test.

Run: build/venv/bin/python -m pytest -q tests/python
"""

import json
import os
import sys

import pytest
import torch

from conftest import SENTENCES, SYSTEM_PYTHON, run_export

transformers = pytest.importorskip("transformers")
from transformers import T5Config, T5ForConditionalGeneration  # noqa: E402

ATOL = 1e-4      # logits, max abs difference
LOSS_RTOL = 1e-5  # loss, relative

# google/flan-t5-small's architecture, written out (its config.json values).
FLAN_T5_SMALL = dict(
    vocab_size=32128, d_model=512, d_kv=64, d_ff=1024, num_layers=8, num_decoder_layers=8, num_heads=6,
    relative_attention_num_buckets=32, relative_attention_max_distance=128, feed_forward_proj="gated-gelu",
    tie_word_embeddings=False, layer_norm_epsilon=1e-6, dropout_rate=0.1, pad_token_id=0, eos_token_id=1,
    decoder_start_token_id=0)

# Same architecture, tiny; small max_distance so that short inputs reach the log-spaced buckets.
TINY_GATED = dict(
    vocab_size=256, d_model=64, d_kv=16, d_ff=96, num_layers=3, num_decoder_layers=2, num_heads=4,
    relative_attention_num_buckets=8, relative_attention_max_distance=20, feed_forward_proj="gated-gelu",
    tie_word_embeddings=False, layer_norm_epsilon=1e-6, dropout_rate=0.1, pad_token_id=0, eos_token_id=1,
    decoder_start_token_id=0)

# T5 v1.0 style: ReLU feed-forward, lm_head tied to the embedding (output scaled by d_model**-0.5).
TINY_RELU_TIED = dict(TINY_GATED, feed_forward_proj="relu", tie_word_embeddings=True, num_layers=2,
                      num_decoder_layers=3, d_ff=128)

CONTRACT_CONFIG_FIELDS = ("d_model", "d_ff", "d_kv", "num_heads", "num_layers", "num_decoder_layers",
                          "feed_forward_proj", "relative_attention_num_buckets",
                          "relative_attention_max_distance", "tie_word_embeddings")


class Exported:
    def __init__(self, cfg, hf, ckpt, path, module, meta, tok_bytes, export_proc):
        self.cfg, self.hf, self.ckpt, self.path = cfg, hf, ckpt, path
        self.module, self.meta, self.tok_bytes, self.export_proc = module, meta, tok_bytes, export_proc


def save_checkpoint(hf, ckpt, safe_serialization=True):
    """save_pretrained, and with safe_serialization=False a pytorch_model.bin in any case: transformers
    4.x writes one, 5.x always writes model.safetensors (it no longer writes .bin files). Users still
    have .bin checkpoints, so then the same tensors go into pytorch_model.bin with torch.save, as
    4.x's save_pretrained stores them."""
    hf.save_pretrained(ckpt, safe_serialization=safe_serialization)
    bin_path = os.path.join(ckpt, "pytorch_model.bin")
    if not safe_serialization and not os.path.exists(bin_path):
        from safetensors.torch import load_file

        st_path = os.path.join(ckpt, "model.safetensors")
        torch.save(load_file(st_path), bin_path)
        os.remove(st_path)
    assert os.path.exists(bin_path) != safe_serialization


def own_lm_head(hf):
    """Gives the model an lm_head of its own, as flan-t5's (tie_word_embeddings: false). transformers 5
    ties every T5's lm_head to the embedding at construction, whatever the config says; 4.x leaves an
    untied config's lm_head independent. With this both build the same kind of model."""
    with torch.no_grad():
        hf.lm_head.weight = torch.nn.Parameter(0.05 * torch.randn(hf.lm_head.weight.shape))


def build_and_export(cfg, tmp_dir, spiece_path, seed, safe_serialization=True, python=None, max_length=512,
                     modify=None):
    torch.manual_seed(seed)
    hf = T5ForConditionalGeneration(T5Config(**cfg)).eval()
    if modify is not None:
        modify(hf)
    ckpt = os.path.join(tmp_dir, "ckpt")
    save_checkpoint(hf, ckpt, safe_serialization)
    with open(spiece_path, "rb") as f, open(os.path.join(ckpt, "spiece.model"), "wb") as g:
        g.write(f.read())
    out = os.path.join(tmp_dir, "model.pt")
    proc = run_export(ckpt, out, "--max-length", max_length, python=python)
    assert proc.returncode == 0, proc.stderr
    extra = {"quantppl.json": "", "tokenizer.model": ""}
    module = torch.jit.load(out, _extra_files=extra)
    module.eval()
    return Exported(cfg, hf, ckpt, out, module, json.loads(extra["quantppl.json"]), extra["tokenizer.model"], proc)


def shift_right(labels, start=0, pad=0):
    dec = torch.full_like(labels, pad)
    dec[:, 0] = start
    dec[:, 1:] = labels[:, :-1]
    return dec.masked_fill(dec == -100, pad)


def hf_logits(hf, ids, mask, dec):
    with torch.no_grad():
        return hf(input_ids=ids, attention_mask=mask, decoder_input_ids=dec).logits


def our_logits(module, ids, mask, dec):
    with torch.no_grad():
        return module(ids, mask, dec)


def random_ids(gen, b, n, vocab):
    ids = torch.randint(2, vocab, (b, n), generator=gen)
    ids[:, -1] = 1  # texts end with EOS, as the tokenizer writes them
    return ids


def assert_logits_match(ex, b, s, t, gen):
    v = ex.cfg["vocab_size"]
    ids = random_ids(gen, b, s, v)
    mask = torch.ones_like(ids)
    dec = torch.randint(0, v, (b, t), generator=gen)
    dec[:, 0] = ex.cfg["decoder_start_token_id"]
    ref = hf_logits(ex.hf, ids, mask, dec)
    got = our_logits(ex.module, ids, mask, dec)
    assert got.dtype == torch.float32
    assert tuple(got.shape) == (b, t, v)
    diff = (ref - got).abs().max().item()
    assert diff <= ATOL, "B=%d S=%d T=%d: max |diff| %.3g" % (b, s, t, diff)


def padded_batch(gen, lengths, vocab):
    """Rows of different lengths, right-padded with 0, mask 0 on padding; labels -100 there."""
    s = max(lengths)
    ids = torch.zeros(len(lengths), s, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for r, n in enumerate(lengths):
        ids[r, :n] = random_ids(gen, 1, n, vocab)[0]
        mask[r, :n] = 1
    labels = ids.masked_fill(mask == 0, -100)
    return ids, mask, labels


def check_padded(ex, gen, lengths):
    ids, mask, labels = padded_batch(gen, lengths, ex.cfg["vocab_size"])
    dec = shift_right(labels, ex.cfg["decoder_start_token_id"], ex.cfg["pad_token_id"])
    ref = hf_logits(ex.hf, ids, mask, dec)
    got = our_logits(ex.module, ids, mask, dec)
    real = labels != -100
    assert (ref[real] - got[real]).abs().max().item() <= ATOL
    # Each padded row must score like the same text alone, unpadded (the mask works). Batched and
    # single matmuls round differently, so allow float32 noise relative to the logits' size
    # (random flan-shaped logits reach ~50); a masking bug changes logits by O(1).
    for r, n in enumerate(lengths):
        alone = our_logits(ex.module, ids[r:r + 1, :n], mask[r:r + 1, :n], dec[r:r + 1, :n])
        tol = ATOL + 1e-5 * got[r, :n].abs().max().item()
        assert (alone[0] - got[r, :n]).abs().max().item() <= tol, "row %d differs from its unpadded run" % r
    # Loss over real positions equals transformers' loss with -100 labels on padding.
    with torch.no_grad():
        ref_loss = ex.hf(input_ids=ids, attention_mask=mask, labels=labels).loss.item()
    ours = torch.nn.functional.cross_entropy(got.reshape(-1, got.size(-1)), labels.reshape(-1), ignore_index=-100).item()
    assert ours == pytest.approx(ref_loss, rel=LOSS_RTOL)


def check_loss(ex, ids):
    """Loss with labels = input, decoder input = labels shifted right (the seeds' perplexity)."""
    labels = ids.clone()
    mask = torch.ones_like(ids)
    with torch.no_grad():
        ref = ex.hf(input_ids=ids, attention_mask=mask, labels=labels).loss.item()
    logits = our_logits(ex.module, ids, mask, shift_right(labels, ex.cfg["decoder_start_token_id"]))
    ours = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.size(-1)), labels.reshape(-1)).item()
    assert ours == pytest.approx(ref, rel=LOSS_RTOL)
    return ours


def check_metadata(ex, checkpoint, max_length=512):
    m = ex.meta
    cfg = ex.cfg
    assert m["format_version"] == 1 and isinstance(m["format_version"], int)
    assert m["architecture"] == "t5"
    assert m["vocab_size"] == cfg["vocab_size"]
    assert m["pad_token_id"] == cfg["pad_token_id"]
    assert m["eos_token_id"] == cfg["eos_token_id"]
    assert m["decoder_start_token_id"] == cfg["decoder_start_token_id"]
    assert m["max_length"] == max_length
    assert m["source"]["checkpoint"] == checkpoint
    assert m["source"]["exported_by"] == "scripts/export_t5.py"
    assert m["source"]["torch_version"] == torch.__version__
    for k in CONTRACT_CONFIG_FIELDS:
        assert m["config"][k] == cfg[k], k


def check_tokenizer(ex, spiece_path):
    import sentencepiece as spm

    with open(spiece_path, "rb") as f:
        assert ex.tok_bytes == f.read()
    sp = spm.SentencePieceProcessor()
    sp.LoadFromSerializedProto(ex.tok_bytes)
    assert (sp.pad_id(), sp.eos_id(), sp.unk_id(), sp.bos_id()) == (0, 1, 2, -1)
    ids = sp.encode(SENTENCES[3])
    assert sp.decode(ids) == SENTENCES[3]
    return sp


def check_linears(ex):
    """Every HF Linear exists under the same name in the archive, as a Linear with the same weight."""
    ours = {n: m for n, m in ex.module.named_modules() if m.original_name == "Linear"}
    theirs = {n: m for n, m in ex.hf.named_modules() if isinstance(m, torch.nn.Linear)}
    assert set(ours) == set(theirs)
    for n, m in theirs.items():
        w = ours[n].weight
        assert w.dtype == torch.float32 and tuple(w.shape) == (m.out_features, m.in_features)
        assert torch.equal(w, m.weight), n
    embeddings = {n for n, m in ex.module.named_modules() if m.original_name == "Embedding"}
    assert "shared" in embeddings
    assert "encoder.block.0.layer.0.SelfAttention.relative_attention_bias" in embeddings
    assert "decoder.block.0.layer.0.SelfAttention.relative_attention_bias" in embeddings


# ---------------------------------------------------------------------------------------------
# flan-t5-small shape
# ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def flan(tmp_path_factory, spiece_path):
    d = tmp_path_factory.mktemp("flan")
    return build_and_export(FLAN_T5_SMALL, str(d), spiece_path, seed=20240611, modify=own_lm_head)


def test_flan_t5_small_logits_match(flan):
    gen = torch.Generator().manual_seed(1)
    for b, s, t in ((1, 1, 1), (1, 7, 7), (1, 64, 64), (3, 1, 1), (3, 7, 7), (3, 64, 64), (3, 9, 4), (1, 5, 70)):
        assert_logits_match(flan, b, s, t, gen)


def test_flan_t5_small_padded_batch(flan):
    check_padded(flan, torch.Generator().manual_seed(2), [64, 7, 30])


def test_flan_t5_small_loss_matches(flan, spiece_path):
    sp = check_tokenizer(flan, spiece_path)
    # A real tokenized text (EOS appended, as the contract says) and random longer ones.
    text = torch.tensor([sp.encode(" ".join(SENTENCES[:4])) + [1]])
    check_loss(flan, text)
    check_loss(flan, random_ids(torch.Generator().manual_seed(3), 3, 64, FLAN_T5_SMALL["vocab_size"]))


def test_flan_t5_small_metadata_and_layers(flan, spiece_path):
    check_metadata(flan, flan.ckpt)
    check_tokenizer(flan, spiece_path)
    check_linears(flan)
    # 8 encoder blocks x (4 attn + 3 ffn) + 8 decoder blocks x (8 attn + 3 ffn) + lm_head
    assert sum(1 for _, m in flan.module.named_modules() if m.original_name == "Linear") == 8 * 7 + 8 * 11 + 1
    n_hf = sum(p.numel() for p in flan.hf.parameters())
    assert sum(p.numel() for p in flan.module.parameters()) == n_hf
    # No temporary file left next to the output (atomic write).
    assert sorted(os.listdir(os.path.dirname(flan.path))) == ["ckpt", "model.pt"]


def test_flan_t5_small_model_is_not_uniform_nonsense(flan):
    """Guards against a vacuous parity: the random model's outputs must carry information."""
    gen = torch.Generator().manual_seed(4)
    v = FLAN_T5_SMALL["vocab_size"]
    ids = random_ids(gen, 2, 12, v)
    mask = torch.ones_like(ids)
    dec = shift_right(ids)
    got = our_logits(flan.module, ids, mask, dec)
    assert torch.isfinite(got).all()
    assert got.std(dim=-1).min().item() > 0.1                 # not a constant over the vocabulary
    assert len(set(got.argmax(-1).flatten().tolist())) > 3    # not the same prediction everywhere
    other = ids.clone()
    other[:, :6] = random_ids(gen, 2, 6, v)
    # The decoder must depend on the encoder input (cross-attention is wired).
    assert (our_logits(flan.module, other, mask, dec) - got).abs().max().item() > 1e-2


# ---------------------------------------------------------------------------------------------
# tiny configs: gated-gelu/untied and relu/tied, both checkpoint formats, both interpreters
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("cfg,safe,python", [
    (TINY_GATED, True, None),             # model.safetensors read by Debian's python (no safetensors pkg)
    (TINY_GATED, False, None),            # pytorch_model.bin
    (TINY_GATED, True, sys.executable),   # venv python, with the safetensors package
    (TINY_RELU_TIED, True, None),
    (TINY_RELU_TIED, False, None),
], ids=["gated-safetensors", "gated-bin", "gated-venv", "relu-tied-safetensors", "relu-tied-bin"])
def test_tiny_parity(tmp_path, spiece_path, cfg, safe, python):
    ex = build_and_export(cfg, str(tmp_path), spiece_path, seed=7, safe_serialization=safe, python=python,
                          max_length=96)
    gen = torch.Generator().manual_seed(5)
    for b, s, t in ((1, 1, 1), (1, 7, 7), (3, 64, 64), (3, 40, 90), (2, 90, 3)):
        assert_logits_match(ex, b, s, t, gen)
    check_padded(ex, gen, [5, 40, 17])
    check_loss(ex, random_ids(gen, 3, 33, cfg["vocab_size"]))
    check_metadata(ex, ex.ckpt, max_length=96)
    check_tokenizer(ex, spiece_path)
    check_linears(ex)


def test_tied_lm_head_is_an_independent_copy(tmp_path, spiece_path):
    """Quantizing lm_head in place must not change the input embedding of a tied model."""
    ex = build_and_export(TINY_RELU_TIED, str(tmp_path), spiece_path, seed=8)
    mods = dict(ex.module.named_modules())
    assert torch.equal(mods["lm_head"].weight, mods["shared"].weight)
    with torch.no_grad():
        mods["lm_head"].weight.mul_(0.5)
    assert not torch.equal(mods["lm_head"].weight, mods["shared"].weight)
    assert torch.equal(mods["shared"].weight, ex.hf.shared.weight)


def test_own_lm_head_is_exported(tmp_path, spiece_path):
    """An lm_head of its own (flan-t5's) is exported as stored, with no output scale. transformers 5
    ties every T5's lm_head to the embedding at construction and saves such a model's config as
    tie_word_embeddings: true, scale_decoder_outputs: false; 4.x leaves an untied config's lm_head
    independent and saves tie_word_embeddings: false. Both must export the same model."""
    ex = build_and_export(TINY_GATED, str(tmp_path), spiece_path, seed=11, modify=own_lm_head)
    assert not torch.equal(ex.hf.lm_head.weight, ex.hf.shared.weight)
    mods = dict(ex.module.named_modules())
    assert torch.equal(mods["lm_head"].weight, ex.hf.lm_head.weight)
    assert ex.meta["config"]["tie_word_embeddings"] is False
    gen = torch.Generator().manual_seed(12)
    for b, s, t in ((1, 7, 7), (3, 40, 20)):
        assert_logits_match(ex, b, s, t, gen)


def test_parity_checks_can_fail(tmp_path, spiece_path):
    """The comparisons above detect small changes of weights, position bias and padding mask."""
    ex = build_and_export(TINY_GATED, str(tmp_path), spiece_path, seed=9)
    gen = torch.Generator().manual_seed(6)
    ids, mask, labels = padded_batch(gen, [30, 12], TINY_GATED["vocab_size"])
    dec = shift_right(labels)
    real = labels != -100
    ref = hf_logits(ex.hf, ids, mask, dec)

    def max_diff(module=ex.module, m=mask):
        return (ref[real] - our_logits(module, ids, m, dec)[real]).abs().max().item()

    assert max_diff() <= ATOL
    assert max_diff(m=torch.ones_like(mask)) > ATOL  # ignoring the padding mask is caught
    mods = dict(ex.module.named_modules())
    with torch.no_grad():
        for name in ("decoder.block.1.layer.2.DenseReluDense.wo", "encoder.block.0.layer.0.SelfAttention.relative_attention_bias",
                     "decoder.block.0.layer.1.EncDecAttention.k"):
            w = mods[name].weight
            saved = w.clone()
            w.add_(1e-2 * torch.randn(w.shape, generator=gen))
            assert max_diff() > ATOL, name
            w.copy_(saved)
    assert max_diff() <= ATOL


# ---------------------------------------------------------------------------------------------
# CLI errors: one clear line, non-zero exit, no traceback, no output file
# ---------------------------------------------------------------------------------------------

def assert_user_error(proc, *needles):
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    lines = [l for l in proc.stderr.strip().splitlines() if l.strip()]
    assert lines and lines[-1].startswith("export_t5: error:"), proc.stderr
    for n in needles:
        assert n in proc.stderr, (n, proc.stderr)


@pytest.fixture()
def tiny_ckpt(tmp_path, spiece_path):
    torch.manual_seed(10)
    hf = T5ForConditionalGeneration(T5Config(**TINY_GATED))
    ckpt = tmp_path / "ckpt"
    save_checkpoint(hf, str(ckpt), safe_serialization=False)
    with open(spiece_path, "rb") as f:
        (ckpt / "spiece.model").write_bytes(f.read())
    return ckpt


def test_cli_errors(tmp_path, tiny_ckpt):
    out = tmp_path / "out.pt"
    assert_user_error(run_export(tmp_path / "missing", out), "missing")
    assert_user_error(run_export(tiny_ckpt, tmp_path / "no" / "dir" / "out.pt"), "does not exist")
    assert_user_error(run_export(tiny_ckpt, out, "--tokenizer", tmp_path / "nope.model"), "nope.model")
    (tmp_path / "junk.model").write_bytes(b"not a model")
    assert_user_error(run_export(tiny_ckpt, out, "--tokenizer", tmp_path / "junk.model"), "junk.model")
    proc = run_export(tiny_ckpt, out, "--max-length", "0")
    assert proc.returncode != 0 and "--max-length" in proc.stderr and "Traceback" not in proc.stderr
    assert not out.exists()


def test_cli_rejects_mismatched_weights(tmp_path, tiny_ckpt):
    out = tmp_path / "out.pt"
    bin_path = tiny_ckpt / "pytorch_model.bin"
    state = torch.load(str(bin_path))
    # An extra tensor is reported by name.
    torch.save(dict(state, **{"encoder.block.0.layer.0.SelfAttention.extra.weight": torch.zeros(2)}), str(bin_path))
    assert_user_error(run_export(tiny_ckpt, out), "unexpected", "SelfAttention.extra.weight")
    # A missing tensor is reported by name.
    missing = {k: v for k, v in state.items() if k != "decoder.block.1.layer.2.DenseReluDense.wi_1.weight"}
    torch.save(missing, str(bin_path))
    assert_user_error(run_export(tiny_ckpt, out), "missing", "decoder.block.1.layer.2.DenseReluDense.wi_1.weight")
    # A config that does not fit the weights.
    torch.save(state, str(bin_path))
    cfg = json.loads((tiny_ckpt / "config.json").read_text())
    cfg["d_ff"] = 128
    (tiny_ckpt / "config.json").write_text(json.dumps(cfg))
    assert_user_error(run_export(tiny_ckpt, out), "do not fit")
    assert not out.exists()


def test_export_is_byte_reproducible(tmp_path, tiny_ckpt):
    """Two exports of one checkpoint, by either interpreter, are the same bytes (same sha256)."""
    a, b = tmp_path / "a" / "m.pt", tmp_path / "b" / "m.pt"
    a.parent.mkdir()
    b.parent.mkdir()
    assert run_export(tiny_ckpt, a).returncode == 0
    assert run_export(tiny_ckpt, b, python=sys.executable).returncode == 0
    assert a.read_bytes() == b.read_bytes()
    assert sorted(os.listdir(a.parent)) == ["m.pt"]  # no temporary left behind
