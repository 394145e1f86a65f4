"""The shipped default causal model (models/default-causal.pt, card models/README-causal.md)
satisfies contract format_version 2 and the issue's limits, checked from the file itself."""

import json
import os

import pytest
import torch

from conftest import REPO

MODEL = os.path.join(REPO, "models", "default-causal.pt")


@pytest.fixture(scope="module")
def shipped():
    extra = {"quantppl.json": "", "tokenizer.model": ""}
    module = torch.jit.load(MODEL, _extra_files=extra)
    module.eval()
    return module, json.loads(extra["quantppl.json"]), extra["tokenizer.model"]


def test_size_and_metadata(shipped):
    _, meta, _ = shipped
    assert os.path.getsize(MODEL) <= 25_000_000
    assert meta["format_version"] == 2 and meta["architecture"] == "causal"
    assert meta["config"]["model_type"] == "llama"
    assert meta["tokenizer"] == {"kind": "sentencepiece", "file": "tokenizer.model"}
    assert meta["add_bos"] is True and meta["bos_token_id"] == 1 and meta["eos_token_id"] == 2
    assert meta["pad_token_id"] is None
    assert meta["vocab_size"] == 4096 and meta["max_length"] == 256


def test_tokenizer_matches_the_card(shipped):
    import sentencepiece as spm

    _, meta, tok = shipped
    sp = spm.SentencePieceProcessor()
    sp.LoadFromSerializedProto(tok)
    assert sp.get_piece_size() == meta["vocab_size"]
    assert (sp.unk_id(), sp.bos_id(), sp.eos_id(), sp.pad_id()) == (0, 1, 2, -1)
    # Newlines, tabs and CR are whitespace (quantppl encodes each line with its "\n").
    assert sp.encode("Hello world.\n") == sp.encode("Hello world.") == sp.encode("Hello\tworld.\r")


def test_every_linear_is_group_quantizable_and_the_forward_works(shipped):
    module, meta, _ = shipped
    linears = {n: m for n, m in module.named_modules() if m.original_name == "Linear"}
    assert len(linears) == 4 * 7 + 1 and "lm_head" in linears
    for n, m in linears.items():
        assert m.weight.shape[1] % 128 == 0, n
    ids = torch.tensor([[1, 100, 200, 300, 0], [1, 5, 6, 0, 0]])
    mask = (torch.arange(5) < torch.tensor([[4], [3]])).long()
    with torch.no_grad():
        logits = module(ids, mask)
        alone = module(ids[1:, :3], mask[1:, :3])
    assert logits.shape == (2, 5, 4096) and logits.dtype == torch.float32
    assert (logits[1, :3] - alone[0]).abs().max().item() < 1e-4
