"""Shared fixtures for the Python model-pipeline tests (run with build/venv/bin/python -m pytest).

Nothing is downloaded: models are Hugging Face T5s with seeded random weights saved to a
temporary directory, and the tokenizer is a tiny sentencepiece model trained here on sentences
written in this file.
"""

import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
EXPORT = os.path.join(REPO, "scripts", "export_t5.py")

# The user's path is Debian's interpreter (it has torch); fall back to the running one.
# QUANTPPL_EXPORT_PYTHON names another one: the torch 2.x job (scripts/test_torch2.sh) exports
# with its venv's python, so that the exporters run under the torch the tests compare with.
SYSTEM_PYTHON = (os.environ.get("QUANTPPL_EXPORT_PYTHON")
                 or ("/usr/bin/python3" if os.path.exists("/usr/bin/python3") else sys.executable))

SENTENCES = [
    "Quantization maps each weight to one of a small number of levels.",
    "The encoder reads the whole text and the decoder writes it one token at a time.",
    "A per-channel scale keeps one outlier from spoiling the precision of every other row.",
    "Perplexity is the exponential of the mean negative log-likelihood per token.",
    "Group quantization shares one scale among a fixed number of neighbouring weights.",
    "Rounding half to even avoids a systematic bias when many values fall on a midpoint.",
    "The relative position bias is learned once and shared by every later block.",
    "Eight bits are usually enough; four bits need finer scales to stay accurate.",
    "Small models can be trained on a laptop in less than an hour.",
    "Every matrix in the network is stored as a grid of floating point numbers.",
]


def run_export(checkpoint, out, *extra, python=None):
    """Run scripts/export_t5.py as a user would; returns the CompletedProcess."""
    return subprocess.run([python or SYSTEM_PYTHON, EXPORT, str(checkpoint), str(out)] + [str(e) for e in extra],
                          capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="session")
def spiece_path(tmp_path_factory):
    """A tiny sentencepiece unigram model with T5's special ids (pad 0, eos 1, unk 2, no bos)."""
    import sentencepiece as spm

    d = tmp_path_factory.mktemp("spiece")
    prefix = str(d / "spiece")
    text = [s for _ in range(20) for s in SENTENCES]
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(text), model_prefix=prefix, vocab_size=120, hard_vocab_limit=False,
        model_type="unigram", pad_id=0, eos_id=1, unk_id=2, bos_id=-1, normalization_rule_name="nmt_nfkc",
        minloglevel=2)
    return prefix + ".model"
