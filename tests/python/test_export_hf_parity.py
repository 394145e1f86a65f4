"""Parity of scripts/export_hf.py's scripted causal models with transformers' own forward passes.

Each case builds a transformers model (the venv's pinned release) with seeded random weights at a
real published configuration — every dimension exact, only the layer count reduced — saves it with
save_pretrained, exports it by running scripts/export_hf.py as a subprocess (the user's path),
torch.jit.loads the archive and compares logits (1e-4) and losses with the values transformers
computed before the export. Expected values always come from transformers.

  TinyLlama-1.1B    LlamaForCausalLM    2 of 22 layers   sentencepiece, add_bos
  Mistral-7B-v0.1   MistralForCausalLM  1 of 32 layers   sentencepiece, add_bos (default)   [big]
  Qwen2-0.5B        Qwen2ForCausalLM    2 of 24 layers   tokenizer.json, no BOS, tied head
  GPT-2 small       GPT2LMHeadModel     2 of 12 layers   tokenizer.json, no BOS, tied head
  Llama-3.2-1B      LlamaForCausalLM    1 of 16 layers   tokenizer.json with BOS template, llama3 RoPE scaling
  Llama-3-8B        LlamaForCausalLM    1 of 32 layers   tokenizer.json with BOS template   [big]

[big] cases (one layer of them alone holds 0.5-1.3 G parameters: 2-5 GB per copy, and a test
holds two or three copies) run only with QUANTPPL_PARITY_BIG=1; the default run stays within
a few minutes and ~4 GB on a 2-core machine. Llama-3.2-1B is the Llama-3 family's grouped-query
configuration (128256 vocab, 32 query / 8 KV heads, rope_theta 500000, llama3 rope_scaling) that
fits the default run.

Run: build/venv/bin/python -m pytest -q tests/python/test_export_hf_parity.py
"""

import gc
import hashlib
import json
import os
import subprocess
import sys

import pytest
import torch

from conftest import REPO, SENTENCES, SYSTEM_PYTHON

transformers = pytest.importorskip("transformers")

EXPORT_HF = os.path.join(REPO, "scripts", "export_hf.py")
ATOL = 1e-4       # logits, max abs difference
LOSS_RTOL = 1e-5  # loss, relative
BIG = os.environ.get("QUANTPPL_PARITY_BIG") == "1"

# The published config.json values (layer counts reduced as noted above).
TINYLLAMA = dict(vocab_size=32000, hidden_size=2048, intermediate_size=5632, num_hidden_layers=2,
                 num_attention_heads=32, num_key_value_heads=4, max_position_embeddings=2048, rms_norm_eps=1e-5,
                 rope_theta=10000.0, hidden_act="silu", bos_token_id=1, eos_token_id=2, tie_word_embeddings=False)
MISTRAL_7B = dict(vocab_size=32000, hidden_size=4096, intermediate_size=14336, num_hidden_layers=1,
                  num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=32768, rms_norm_eps=1e-5,
                  rope_theta=10000.0, sliding_window=4096, hidden_act="silu", bos_token_id=1, eos_token_id=2,
                  tie_word_embeddings=False)
QWEN2_05B = dict(vocab_size=151936, hidden_size=896, intermediate_size=4864, num_hidden_layers=2,
                 num_attention_heads=14, num_key_value_heads=2, max_position_embeddings=131072, rms_norm_eps=1e-6,
                 rope_theta=1000000.0, sliding_window=131072, max_window_layers=24, use_sliding_window=False,
                 hidden_act="silu", bos_token_id=151643, eos_token_id=151643, tie_word_embeddings=True)
GPT2_SMALL = dict(vocab_size=50257, n_positions=1024, n_embd=768, n_layer=2, n_head=12, n_inner=None,
                  activation_function="gelu_new", layer_norm_epsilon=1e-5, bos_token_id=50256, eos_token_id=50256)
LLAMA32_1B = dict(vocab_size=128256, hidden_size=2048, intermediate_size=8192, num_hidden_layers=1,
                  num_attention_heads=32, num_key_value_heads=8, head_dim=64, max_position_embeddings=131072,
                  rms_norm_eps=1e-5, rope_theta=500000.0, hidden_act="silu", bos_token_id=128000, eos_token_id=128001,
                  tie_word_embeddings=True,
                  rope_scaling={"factor": 32.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0,
                                "original_max_position_embeddings": 8192, "rope_type": "llama3"})
LLAMA3_8B = dict(vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=1,
                 num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=8192, rms_norm_eps=1e-5,
                 rope_theta=500000.0, hidden_act="silu", bos_token_id=128000, eos_token_id=128001,
                 tie_word_embeddings=False)

# name -> (model class, config class, config, tokenizer style, expected add_bos, expected bos, big)
CASES = {
    "tinyllama": ("LlamaForCausalLM", "LlamaConfig", TINYLLAMA, "sp", True, 1, False),
    "mistral7b": ("MistralForCausalLM", "MistralConfig", MISTRAL_7B, "sp-default", True, 1, True),
    "qwen2_05b": ("Qwen2ForCausalLM", "Qwen2Config", QWEN2_05B, "bpe-qwen2", False, 151643, False),
    "gpt2": ("GPT2LMHeadModel", "GPT2Config", GPT2_SMALL, "bpe-gpt2", False, 50256, False),
    "llama32_1b": ("LlamaForCausalLM", "LlamaConfig", LLAMA32_1B, "bpe-llama3", True, 128000, False),
    "llama3_8b": ("LlamaForCausalLM", "LlamaConfig", LLAMA3_8B, "bpe-llama3", True, 128000, True),
}
MAX_LENGTH = 64
SHAPES = [(1, 1), (1, 7), (1, 40), (3, 16), (3, MAX_LENGTH)]
PADDED_LENGTHS = [20, 11, 1]


def run_export_hf(checkpoint, out, *extra):
    return subprocess.run([SYSTEM_PYTHON, EXPORT_HF, str(checkpoint), str(out)] + [str(e) for e in extra],
                          capture_output=True, text=True, timeout=1200)


# ---------------------------------------------------------------------------------------------
# Tokenizer files written by the tests (no download)
# ---------------------------------------------------------------------------------------------

def write_sentencepiece(path):
    """A tiny sentencepiece model with Llama's special ids: unk 0, bos 1, eos 2."""
    import sentencepiece as spm

    prefix = str(path)[:-len(".model")]
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter([s for _ in range(20) for s in SENTENCES]), model_prefix=prefix, vocab_size=120,
        hard_vocab_limit=False, model_type="bpe", unk_id=0, bos_id=1, eos_id=2, pad_id=-1, minloglevel=2)
    return path


def write_tokenizer_json(path, style):
    """A byte-level BPE tokenizer.json as GPT-2 / Qwen2 (no BOS) or Llama-3 (BOS template) ship."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(SENTENCES * 5, trainer)
    if style == "bpe-llama3":
        tok.post_processor = processors.Sequence([
            processors.ByteLevel(trim_offsets=False),
            processors.TemplateProcessing(single="<|begin_of_text|> $A", pair="<|begin_of_text|> $A <|begin_of_text|> $B",
                                          special_tokens=[("<|begin_of_text|>", 128000)])])
        specials = {128000: "<|begin_of_text|>", 128001: "<|end_of_text|>"}
    else:
        tok.post_processor = processors.ByteLevel(trim_offsets=False)
        specials = {151643: "<|endoftext|>"} if style == "bpe-qwen2" else {50256: "<|endoftext|>"}
    tj = json.loads(tok.to_str())
    tj["added_tokens"] = [{"id": i, "content": c, "single_word": False, "lstrip": False, "rstrip": False,
                           "normalized": False, "special": True} for i, c in sorted(specials.items())]
    with open(path, "w", encoding="utf-8") as f:
        json.dump(tj, f)
    return path


# ---------------------------------------------------------------------------------------------
# Build, reference, export
# ---------------------------------------------------------------------------------------------

def randomize_norms_and_biases(hf, gen):
    """HF initialises norm weights to 1 and biases to 0: give them random values so that a wrong
    norm weight or a dropped bias shows up in the logits."""
    with torch.no_grad():
        for name, p in hf.named_parameters():
            if p.dim() == 1:
                if "norm" in name or ".ln_" in name or name.startswith("transformer.ln_f"):
                    p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=gen))
                else:
                    p.copy_(0.02 * torch.randn(p.shape, generator=gen))


def linear_names(hf):
    from transformers.pytorch_utils import Conv1D

    return sorted(n for n, m in hf.named_modules() if isinstance(m, (torch.nn.Linear, Conv1D)))


class Case:
    pass


def build_case(name, tmp_dir):
    cls_name, cfg_name, cfg, tok_style, add_bos, bos, _ = CASES[name]
    case = Case()
    case.name, case.add_bos, case.bos, case.tok_style = name, add_bos, bos, tok_style
    case.vocab = cfg["vocab_size"]
    torch.manual_seed(1000 + sorted(CASES).index(name))
    config = getattr(transformers, cfg_name)(**cfg)
    hf = getattr(transformers, cls_name)(config).eval()
    gen = torch.Generator().manual_seed(7)
    randomize_norms_and_biases(hf, gen)
    case.linears = linear_names(hf)
    case.tied = bool(config.tie_word_embeddings)

    # Reference values from transformers, computed before the export.
    case.inputs, case.ref = {}, {}
    with torch.no_grad():
        for b, s in SHAPES:
            ids = torch.randint(0, case.vocab, (b, s), generator=gen)
            case.inputs[(b, s)] = ids
            out = hf(input_ids=ids, attention_mask=torch.ones_like(ids), labels=ids if s > 1 else None)
            case.ref[(b, s)] = (out.logits.clone(), None if out.loss is None else out.loss.item())
        s = max(PADDED_LENGTHS)
        ids = torch.randint(0, case.vocab, (len(PADDED_LENGTHS), s), generator=gen)
        mask = torch.zeros_like(ids)
        for r, n in enumerate(PADDED_LENGTHS):
            mask[r, :n] = 1
        ids = ids.masked_fill(mask == 0, 0)
        labels = ids.masked_fill(mask == 0, -100)
        out = hf(input_ids=ids, attention_mask=mask, labels=labels)
        case.padded = (ids, mask, labels, out.logits.clone(), out.loss.item())

    ckpt = os.path.join(tmp_dir, "ckpt")
    # Llama-3-8B's one layer is 5 GB: safetensors' writer would hold a second copy in memory,
    # torch.save streams (and at over 5 GB transformers shards it: the sharded .bin index path).
    hf.save_pretrained(ckpt, safe_serialization=name != "llama3_8b")
    del hf, out
    gc.collect()
    if tok_style.startswith("sp"):
        case.tok_file = write_sentencepiece(os.path.join(ckpt, "tokenizer.model"))
        if tok_style == "sp":  # TinyLlama's tokenizer_config.json; Mistral's default is tested without one
            with open(os.path.join(ckpt, "tokenizer_config.json"), "w") as f:
                json.dump({"add_bos_token": True, "add_eos_token": False, "tokenizer_class": "LlamaTokenizer"}, f)
    else:
        case.tok_file = write_tokenizer_json(os.path.join(ckpt, "tokenizer.json"), tok_style)
    case.ckpt = ckpt
    case.path = os.path.join(tmp_dir, "model.pt")
    case.proc = run_export_hf(ckpt, case.path, "--max-length", MAX_LENGTH)
    assert case.proc.returncode == 0, case.proc.stderr
    tok_name = "tokenizer.model" if tok_style.startswith("sp") else "tokenizer.json"
    extra = {"quantppl.json": "", tok_name: ""}
    case.module = torch.jit.load(case.path, _extra_files=extra)
    case.module.eval()
    case.meta = json.loads(extra["quantppl.json"])
    case.tok_name, case.tok_bytes = tok_name, extra[tok_name]
    return case


def params():
    out = []
    for name, spec in CASES.items():
        marks = [] if (BIG or not spec[6]) else [pytest.mark.skip(reason="big configuration: set QUANTPPL_PARITY_BIG=1")]
        out.append(pytest.param(name, marks=marks, id=name))
    return out


@pytest.fixture(scope="module", params=params())
def case(request, tmp_path_factory):
    c = build_case(request.param, str(tmp_path_factory.mktemp(request.param)))
    yield c
    del c.module
    gc.collect()


def logits_of(case, ids, mask):
    with torch.no_grad():
        return case.module(ids, mask)


# ---------------------------------------------------------------------------------------------
# Tests
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("shape", SHAPES, ids=["B%dxS%d" % s for s in SHAPES])
def test_logits_and_loss_match_transformers(case, shape):
    ids = case.inputs[shape]
    ref_logits, ref_loss = case.ref[shape]
    got = logits_of(case, ids, torch.ones_like(ids))
    assert got.dtype == torch.float32
    assert tuple(got.shape) == (shape[0], shape[1], case.vocab)
    diff = (got - ref_logits).abs().max().item()
    assert diff <= ATOL, "%s B=%d S=%d: max |diff| %.3g" % (case.name, shape[0], shape[1], diff)
    if ref_loss is not None:
        # transformers' labels=input_ids loss: logits[:, i] predicts ids[:, i + 1], mean over B x (S-1).
        ours = torch.nn.functional.cross_entropy(got[:, :-1].reshape(-1, case.vocab), ids[:, 1:].reshape(-1)).item()
        assert ours == pytest.approx(ref_loss, rel=LOSS_RTOL)


def test_right_padded_batch(case):
    ids, mask, labels, ref_logits, ref_loss = case.padded
    got = logits_of(case, ids, mask)
    real = mask == 1
    assert (got[real] - ref_logits[real]).abs().max().item() <= ATOL
    assert torch.isfinite(got).all(), "padded positions must not produce NaN/inf"
    # Each row scores like the same text alone (the mask works); batched and single matmuls round
    # differently, so allow float32 noise relative to the logits' size.
    for r, n in enumerate(PADDED_LENGTHS):
        alone = logits_of(case, ids[r:r + 1, :n], mask[r:r + 1, :n])
        tol = ATOL + 1e-5 * got[r, :n].abs().max().item()
        assert (alone[0] - got[r, :n]).abs().max().item() <= tol, "row %d differs from its unpadded run" % r
    shifted = labels[:, 1:].reshape(-1)
    ours = torch.nn.functional.cross_entropy(got[:, :-1].reshape(-1, case.vocab), shifted, ignore_index=-100).item()
    assert ours == pytest.approx(ref_loss, rel=LOSS_RTOL)


def test_contract_metadata(case):
    m = case.meta
    assert m["format_version"] == 2
    assert m["architecture"] == "causal"
    assert m["vocab_size"] == case.vocab
    assert m["max_length"] == MAX_LENGTH
    assert m["add_bos"] is case.add_bos
    assert m["bos_token_id"] == case.bos
    assert m["tokenizer"] == {"kind": "sentencepiece" if case.tok_style.startswith("sp") else "bpe",
                              "file": case.tok_name}
    assert "eos_token_id" in m and "pad_token_id" in m
    assert m["source"]["exported_by"] == "scripts/export_hf.py"
    with open(case.tok_file, "rb") as f:
        assert case.tok_bytes == f.read()


def test_linear_layers_keep_hugging_face_names(case):
    ours = sorted(n for n, m in case.module.named_modules() if m.original_name == "Linear")
    expected = case.linears if "lm_head" in case.linears else sorted(case.linears + ["lm_head"])
    assert ours == expected
    for n, m in case.module.named_modules():
        if m.original_name == "Linear":
            assert m.weight.dtype == torch.float32
    if case.tied:
        # The tied head is its own Linear: quantizing it in place must not touch the embedding.
        emb = dict(case.module.named_parameters()).get("model.embed_tokens.weight")
        if emb is None:
            emb = dict(case.module.named_parameters())["transformer.wte.weight"]
        head = case.module.lm_head.weight
        assert torch.equal(head, emb) and head.data_ptr() != emb.data_ptr()


# ---------------------------------------------------------------------------------------------
# Small models: reproducibility, errors, the T5 path, the C++ loader
# ---------------------------------------------------------------------------------------------

TINY_LLAMA = dict(vocab_size=512, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=128, rms_norm_eps=1e-5, bos_token_id=1,
                  eos_token_id=2, tie_word_embeddings=False)


def save_tiny(tmp_path, cls_name="LlamaForCausalLM", cfg_name="LlamaConfig", cfg=None, tok="sp"):
    torch.manual_seed(0)
    hf = getattr(transformers, cls_name)(getattr(transformers, cfg_name)(**(cfg or TINY_LLAMA)))
    ckpt = tmp_path / "ckpt"
    hf.save_pretrained(str(ckpt), safe_serialization=True)
    if tok == "sp":
        write_sentencepiece(str(ckpt / "tokenizer.model"))
    elif tok:
        write_tokenizer_json(str(ckpt / "tokenizer.json"), tok)
    return ckpt, hf


def test_export_is_byte_reproducible(tmp_path):
    ckpt, _ = save_tiny(tmp_path)
    digests = []
    for sub in ("a", "b"):  # the same file name: torch.jit.save names the archive's folder after it
        (tmp_path / sub).mkdir()
        proc = run_export_hf(ckpt, tmp_path / sub / "m.pt", "--max-length", 32)
        assert proc.returncode == 0, proc.stderr
        digests.append(hashlib.sha256((tmp_path / sub / "m.pt").read_bytes()).hexdigest())
    assert digests[0] == digests[1]


def test_tiny_gpt2_pytorch_bin_without_prefix(tmp_path):
    """The openai GPT-2 checkpoints store keys without "transformer." and with attn.bias buffers."""
    cfg = dict(vocab_size=500, n_positions=32, n_embd=48, n_layer=2, n_head=4, bos_token_id=499, eos_token_id=499)
    torch.manual_seed(3)
    hf = transformers.GPT2LMHeadModel(transformers.GPT2Config(**cfg)).eval()
    ckpt = tmp_path / "ckpt"
    hf.save_pretrained(str(ckpt))
    state = {k[len("transformer."):] if k.startswith("transformer.") else k: v for k, v in hf.state_dict().items()}
    state.pop("lm_head.weight")
    for i in range(cfg["n_layer"]):
        state["h.%d.attn.bias" % i] = torch.tril(torch.ones(32, 32)).view(1, 1, 32, 32)
    for f in os.listdir(ckpt):
        if f.startswith("model.safetensors"):
            os.unlink(ckpt / f)
    torch.save(state, str(ckpt / "pytorch_model.bin"))
    tj = json.loads(open(write_tokenizer_json(str(ckpt / "tokenizer.json"), "bpe-gpt2")).read())
    tj["added_tokens"][0]["id"] = 499
    (ckpt / "tokenizer.json").write_text(json.dumps(tj))
    proc = run_export_hf(ckpt, tmp_path / "m.pt", "--max-length", 32)
    assert proc.returncode == 0, proc.stderr
    module = torch.jit.load(str(tmp_path / "m.pt"))
    ids = torch.randint(0, 500, (2, 32), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = hf(input_ids=ids).logits
        got = module(ids, torch.ones_like(ids))
    assert (ref - got).abs().max().item() <= ATOL


@pytest.mark.parametrize("change, flags, message", [
    ({"rope_scaling": {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 64}}, [],
     "rope_scaling"),
    ({"rope_scaling": {"rope_type": "dynamic", "factor": 2.0}}, [], "rope_scaling"),
    ({}, ["--max-length", 129], "max_position_embeddings 128"),
    ({"model_type": "mixtral"}, [], "model_type 'mixtral' is not supported"),
    ({"hidden_act": "gelu_fast"}, [], "activation 'gelu_fast'"),
], ids=["yarn", "dynamic", "too-long", "mixtral", "activation"])
def test_unsupported_configs_are_clear_errors(tmp_path, change, flags, message):
    ckpt, _ = save_tiny(tmp_path)
    cfg_path = ckpt / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg.update(change)
    cfg_path.write_text(json.dumps(cfg))
    proc = run_export_hf(ckpt, tmp_path / "m.pt", *flags)
    assert proc.returncode == 1
    assert message in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "m.pt").exists()


def test_mistral_max_length_beyond_sliding_window_is_refused(tmp_path):
    cfg = dict(TINY_LLAMA, sliding_window=16)
    ckpt, _ = save_tiny(tmp_path, "MistralForCausalLM", "MistralConfig", cfg)
    proc = run_export_hf(ckpt, tmp_path / "m.pt", "--max-length", 17)
    assert proc.returncode == 1 and "sliding_window 16" in proc.stderr, proc.stderr
    proc = run_export_hf(ckpt, tmp_path / "m.pt", "--max-length", 16)
    assert proc.returncode == 0, proc.stderr


def test_missing_tokenizer_and_eos_template_are_errors(tmp_path):
    ckpt, _ = save_tiny(tmp_path, tok=None)
    proc = run_export_hf(ckpt, tmp_path / "m.pt")
    assert proc.returncode == 1 and "tokenizer.model nor tokenizer.json" in proc.stderr, proc.stderr
    # A template that appends EOS after the text cannot be expressed by add_bos.
    path = write_tokenizer_json(str(ckpt / "tokenizer.json"), "bpe-gpt2")
    tj = json.loads(open(path).read())
    tj["added_tokens"] = []
    tj["post_processor"] = {"type": "TemplateProcessing", "single": [{"Sequence": {"id": "A", "type_id": 0}},
                                                                      {"SpecialToken": {"id": "</s>", "type_id": 0}}],
                            "pair": [], "special_tokens": {"</s>": {"id": "</s>", "ids": [2], "tokens": ["</s>"]}}}
    open(path, "w").write(json.dumps(tj))
    proc = run_export_hf(ckpt, tmp_path / "m.pt")
    assert proc.returncode == 1 and "appends special token" in proc.stderr, proc.stderr


def test_tokenizer_override_and_add_bos_false(tmp_path):
    ckpt, _ = save_tiny(tmp_path)
    (ckpt / "tokenizer_config.json").write_text(json.dumps({"add_bos_token": False}))
    proc = run_export_hf(ckpt, tmp_path / "m.pt", "--max-length", 32)
    assert proc.returncode == 0, proc.stderr
    extra = {"quantppl.json": ""}
    torch.jit.load(str(tmp_path / "m.pt"), _extra_files=extra)
    assert json.loads(extra["quantppl.json"])["add_bos"] is False
    tj = write_tokenizer_json(str(tmp_path / "other.json"), "bpe-gpt2")
    # The GPT-2-style file has id 50256 > vocab 512: refused, naming it.
    proc = run_export_hf(ckpt, tmp_path / "m2.pt", "--tokenizer", tj)
    assert proc.returncode == 1 and "beyond the model's vocab_size 512" in proc.stderr, proc.stderr


def test_t5_checkpoints_still_export(tmp_path, spiece_path):
    cfg = dict(vocab_size=256, d_model=64, d_kv=16, d_ff=96, num_layers=2, num_decoder_layers=2, num_heads=4,
               feed_forward_proj="gated-gelu", tie_word_embeddings=False, pad_token_id=0, eos_token_id=1,
               decoder_start_token_id=0)
    torch.manual_seed(0)
    hf = transformers.T5ForConditionalGeneration(transformers.T5Config(**cfg)).eval()
    ckpt = tmp_path / "ckpt"
    hf.save_pretrained(str(ckpt))
    (ckpt / "spiece.model").write_bytes(open(spiece_path, "rb").read())
    proc = run_export_hf(ckpt, tmp_path / "t5.pt", "--max-length", 32)
    assert proc.returncode == 0, proc.stderr
    extra = {"quantppl.json": ""}
    module = torch.jit.load(str(tmp_path / "t5.pt"), _extra_files=extra)
    meta = json.loads(extra["quantppl.json"])
    assert meta["format_version"] == 1 and meta["architecture"] == "t5"
    ids = torch.randint(2, 256, (1, 9))
    dec = torch.randint(0, 256, (1, 5))
    with torch.no_grad():
        ref = hf(input_ids=ids, attention_mask=torch.ones_like(ids), decoder_input_ids=dec).logits
        got = module(ids, torch.ones_like(ids), dec)
    assert (ref - got).abs().max().item() <= ATOL


QUANTPPL = os.environ.get("QUANTPPL_BIN", os.path.join(REPO, "build", "quantppl"))


def causal_ppl_from_definition(path, ids, max_length, bos):
    """README's --mode causal with add_bos, written from its definition: windows BOS + up to
    max_length - 1 text tokens, every text token scored, exact sums over the stream."""
    import math

    m = torch.jit.load(path)
    nll, n = 0.0, 0
    for begin in range(0, len(ids), max_length - 1):
        w = [bos] + ids[begin:begin + max_length - 1]
        x = torch.tensor([w])
        with torch.no_grad():
            lp = torch.log_softmax(m(x, torch.ones_like(x))[0].double(), -1)
        for i in range(1, len(w)):
            nll -= float(lp[i - 1, w[i]])
            n += 1
    return math.exp(nll / n), n


@pytest.mark.skipif(not os.path.exists(QUANTPPL), reason="build/quantppl is not built")
def test_cpp_quantppl_evaluates_the_export(tmp_path):
    """The C++ tool loads an export_hf.py file and its fp32 perplexity equals the definition's,
    computed here from the scripted module (skipped while the binary has no causal support)."""
    import sentencepiece as spm

    ckpt, _ = save_tiny(tmp_path)
    out = tmp_path / "m.pt"
    proc = run_export_hf(ckpt, out, "--max-length", 16)
    assert proc.returncode == 0, proc.stderr
    text = tmp_path / "text.txt"
    text.write_text(" ".join(SENTENCES[:4]) + "\n")
    res = subprocess.run([QUANTPPL, "compare", "--model", str(out), "--text", str(text), "--variants", "fp32",
                          "--format", "json", "--quiet"], capture_output=True, text=True, timeout=600)
    if res.returncode != 0 and any(w in res.stderr for w in ("format_version", "architecture", "causal")):
        pytest.skip("this quantppl has no causal support yet: %s" % res.stderr.strip().splitlines()[-1])
    assert res.returncode == 0, res.stderr
    r = json.loads(res.stdout)["results"][0]
    sp = spm.SentencePieceProcessor(model_file=str(ckpt / "tokenizer.model"))
    ids = sp.encode(text.read_text().strip())
    expected, n = causal_ppl_from_definition(str(out), ids, 16, 1)
    assert r["tokens"] == n
    assert abs(r["ppl"] / expected - 1) < 1e-5
