"""`quantppl calibrate` end to end, and its statistics against an independent reference: the eager
T5 module the contract file was scripted from (scripts/quantppl_tools/t5_torchscript.py), run
window by window (no padding) with PyTorch forward hooks on every nn.Linear, H / mean|x| / max|x|
summed in float64 by numpy. quantppl's side captures the inputs from the scripted graph (no
hooks), in padded batches, with a float32 GEMM per batch (methods/calibration.h)."""

import hashlib
import json
import os
import zipfile

import numpy as np
import pytest

from quantppl_tools.calibration_file import read_calibration_file, write_calibration_file

from .conftest import DEFAULT_MODEL, DEFAULT_TEXT, EXIT_DATA, EXIT_IO, EXIT_USAGE, REPO, TINY, assert_clean_error, run

CALIBRATION_TEXT = os.path.join(REPO, "data", "calibration.txt")
# Batches of a different shape than the reference's single windows change BLAS blocking, and the
# per-batch GEMM is float32 (bound (4) of calibration.h); observed differences are ~1e-6.
REL_TOL = 2e-5


def sha256_file(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def contract_parts(path):
    with zipfile.ZipFile(path) as z:
        names = z.namelist()
        meta = json.loads(z.read([n for n in names if n.endswith("extra/quantppl.json")][0]))
        tokenizer = z.read([n for n in names if n.endswith("extra/tokenizer.model")][0])
    return meta, tokenizer


def reference_stats(model_path, text_path, tokens):
    """{layer: (H, mean_abs, max_abs, N)} from the eager module with forward hooks."""
    import sentencepiece as spm
    import torch

    from quantppl_tools.t5_torchscript import T5ForLogits

    meta, tokenizer = contract_parts(model_path)
    cfg = dict(meta["config"], vocab_size=meta["vocab_size"], pad_token_id=meta["pad_token_id"],
               eos_token_id=meta["eos_token_id"], decoder_start_token_id=meta["decoder_start_token_id"])
    eager = T5ForLogits(cfg).eval()
    eager.load_state_dict(torch.jit.load(model_path).state_dict())
    sp = spm.SentencePieceProcessor(model_proto=tokenizer)
    # text_windows.h: each line (with its newline) encoded on its own, then one EOS.
    with open(text_path, encoding="utf-8") as f:
        ids = [i for line in f.read().splitlines(True) for i in sp.encode(line)] + [meta["eos_token_id"]]
    ids = ids[:tokens]
    length = meta["max_length"]
    sums = {}

    def hook(name):
        def record(module, inputs, output):
            x = inputs[0].detach().reshape(-1, module.in_features).double().numpy()
            s = sums.setdefault(name, [0.0, 0.0, 0.0, 0])
            s[0] = s[0] + x.T @ x
            s[1] = s[1] + np.abs(x).sum(0)
            s[2] = np.maximum(s[2], np.abs(x).max(0))
            s[3] += x.shape[0]
        return record

    for name, module in eager.named_modules():
        if isinstance(module, torch.nn.Linear):
            module.register_forward_hook(hook(name))
    with torch.no_grad():
        for start in range(0, len(ids), length):
            window = ids[start:start + length]
            enc = torch.tensor([window])
            dec = torch.tensor([[meta["decoder_start_token_id"]] + window[:-1]])
            eager(enc, torch.ones_like(enc), dec)
    return {name: (2.0 / n * xtx, sum_abs / n, max_abs, n) for name, (xtx, sum_abs, max_abs, n) in sums.items()}


def rel(a, b):
    return float(np.abs(np.asarray(a, np.float64) - b).max() / max(np.abs(b).max(), 1e-30))


@pytest.mark.parametrize("model,tokens,batch", [(TINY, 700, 3), (DEFAULT_MODEL, 1000, 4)])
def test_statistics_match_eager_module_with_forward_hooks(tmp_path, model, tokens, batch):
    out = tmp_path / "stats.qcal"
    r = run("calibrate", "--model", model, "--calibration", CALIBRATION_TEXT, "--calibration-tokens", str(tokens),
            "--batch-size", str(batch), "--output", str(out), "--quiet")
    assert r.returncode == 0, r.stderr
    stats = read_calibration_file(str(out))
    assert stats["model_sha256"] == sha256_file(model)
    assert stats["text_sha256"] == sha256_file(CALIBRATION_TEXT)
    assert stats["tokens"] == tokens
    ref = reference_stats(model, CALIBRATION_TEXT, tokens)
    assert set(stats["layers"]) == set(ref)  # every nn.Linear, nothing else
    for name, (h, mean_abs, max_abs, n) in ref.items():
        layer = stats["layers"][name]
        assert layer["tokens"] == n == tokens, name
        assert rel(layer["hessian"], h) < REL_TOL, name
        assert rel(layer["mean_abs"], mean_abs) < REL_TOL, name
        assert rel(layer["max_abs"], max_abs) < REL_TOL, name
        assert np.array_equal(layer["hessian"], layer["hessian"].T), name
        assert np.linalg.eigvalsh(layer["hessian"].astype(np.float64)).min() >= -1e-5 * np.abs(h).max(), name
    # q, k and v read one tensor, stored once.
    q = stats["layers"]["encoder.block.0.layer.0.SelfAttention.q"]
    assert q["group"] == stats["layers"]["encoder.block.0.layer.0.SelfAttention.v"]["group"]
    assert q["group"] != stats["layers"]["encoder.block.0.layer.0.SelfAttention.o"]["group"]
    assert "wrote" in r.stdout


def test_default_calibration_text_and_include(tmp_path):
    out = tmp_path / "s.qcal"
    r = run("calibrate", "-m", TINY, "-o", str(out), "--include", r"DenseReluDense\.wo$", "--quiet")
    assert r.returncode == 0, r.stderr
    assert "warning" not in r.stderr  # the shipped calibration text is not the evaluation text
    stats = read_calibration_file(str(out))
    assert stats["text"].endswith("data/calibration.txt")
    assert stats["text_sha256"] == sha256_file(CALIBRATION_TEXT)
    assert stats["tokens"] == 16384  # the default; the text has ~22,600 tokens of this tokenizer... at most
    assert all(name.endswith("DenseReluDense.wo") for name in stats["layers"])
    assert len(stats["layers"]) == 4


def test_short_text_uses_all_of_it_and_warns_when_it_is_the_eval_text(tmp_path):
    out = tmp_path / "s.qcal"
    r = run("calibrate", "-m", TINY, "-o", str(out), "--calibration", DEFAULT_TEXT, "--include", "lm_head", "--quiet")
    assert r.returncode == 0, r.stderr
    assert "quantppl: warning: calibration text" in r.stderr and "evaluation text" in r.stderr
    stats = read_calibration_file(str(out))
    assert 0 < stats["tokens"] < 16384  # the whole (shorter) text
    # Same content under another name: still the evaluation text (same sha256).
    copy = tmp_path / "copy.txt"
    copy.write_bytes(open(DEFAULT_TEXT, "rb").read())
    r = run("calibrate", "-m", TINY, "-o", str(out), "--force", "--calibration", str(copy), "--include", "lm_head",
            "--quiet")
    assert r.returncode == 0 and "evaluation text" in r.stderr


def test_flag_errors(tmp_path):
    out = str(tmp_path / "s.qcal")
    r = run("calibrate", "-m", TINY)
    assert r.returncode == EXIT_USAGE and "--output" in r.stderr
    assert_clean_error(run("calibrate", "-m", TINY, "-o", out, "--calibration-tokens", "0"), EXIT_USAGE,
                       "--calibration-tokens", "got 0")
    assert_clean_error(run("calibrate", "-m", TINY, "-o", out, "--batch-size", "0"), EXIT_USAGE, "--batch-size")
    assert_clean_error(run("calibrate", "-m", TINY, "-o", out, "--calibration", str(tmp_path / "missing.txt")),
                       EXIT_IO, "missing.txt")
    binary = tmp_path / "bin.txt"
    binary.write_bytes(b"abc\0def")
    assert_clean_error(run("calibrate", "-m", TINY, "-o", out, "--calibration", str(binary)), EXIT_DATA, "NUL byte")
    assert_clean_error(run("calibrate", "-m", TINY, "-o", out, "--include", "nothing-matches"), EXIT_USAGE)
    assert_clean_error(run("calibrate", "-m", TINY, "-o", out, "--max-length", "100000"), EXIT_USAGE, "max_length")
    assert not os.path.exists(out)
    open(out, "w").write("keep")
    assert_clean_error(run("calibrate", "-m", TINY, "-o", out, "--include", "lm_head"), EXIT_IO, "exists")
    assert open(out).read() == "keep"
    # The output may not be an input (the calibration text itself).
    text_copy = tmp_path / "t.txt"
    text_copy.write_text("some calibration words here\n")
    assert_clean_error(run("calibrate", "-m", TINY, "-o", str(text_copy), "--force", "--calibration", str(text_copy)),
                       EXIT_USAGE)


@pytest.mark.parametrize("command", ["compare", "quantize", "inspect", "sensitivity", "calibrate"])
def test_calibration_flags_in_help(command):
    r = run(command, "--help")
    assert r.returncode == 0
    for flag in ("--calibration", "--calibration-tokens"):
        assert flag in r.stdout, (command, flag)
    listed = any(line.lstrip().startswith("--calibration-stats") for line in r.stdout.splitlines())
    assert listed == (command != "calibrate")


def test_python_reader_rejects_corrupt_files(tmp_path):
    """The numpy reader checks the digest and the size, like the C++ reader."""
    out = tmp_path / "s.qcal"
    assert run("calibrate", "-m", TINY, "-o", str(out), "--include", "lm_head", "--quiet").returncode == 0
    data = bytearray(out.read_bytes())
    data[-40] ^= 1
    bad = tmp_path / "bad.qcal"
    bad.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="SHA-256"):
        read_calibration_file(str(bad))
    # write_calibration_file round-trips what read_calibration_file returns.
    stats = read_calibration_file(str(out))
    header = {"format": "quantppl-calibration", "format_version": 1, "model_sha256": stats["model_sha256"],
              "text": stats["text"], "text_sha256": stats["text_sha256"], "tokens": stats["tokens"],
              "groups": [{"in_features": g["in_features"], "tokens": g["tokens"]} for g in stats["groups"]],
              "layers": [{"name": n, "group": stats["layers"][n]["group"]} for n in stats["layer_order"]]}
    again = tmp_path / "again.qcal"
    write_calibration_file(str(again), header,
                           [(g["hessian"], g["mean_abs"], g["max_abs"]) for g in stats["groups"]])
    back = read_calibration_file(str(again))
    assert np.array_equal(back["groups"][0]["hessian"], stats["groups"][0]["hessian"])
