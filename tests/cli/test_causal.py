"""Causal (decoder-only) models end to end: the three perplexity modes against independent Python
references run on the fixture's logits (tests/reference/), --tokens, and every subcommand on the
tiny causal fixture (tests/fixtures/make_causal_model.py)."""

import json
import os
import subprocess
import sys

import pytest

from .conftest import (EXIT_DATA, EXIT_USAGE, FIXTURES, REPO, TINY, assert_clean_error, compare_json, load_json,
                       run)

CAUSAL = os.path.join(FIXTURES, "tiny_causal.pt")
CAUSAL_NOBOS = os.path.join(FIXTURES, "tiny_causal_nobos.pt")
CAUSAL_GPT2 = os.path.join(FIXTURES, "tiny_causal_gpt2.pt")
REFERENCE = os.path.join(REPO, "tests", "reference")
BOS = 1
CAUSAL_LAYERS = 2 * 7 + 1


@pytest.fixture(scope="module")
def token_file(tmp_path_factory):
    """The default text's sentencepiece ids (no BOS/EOS) as a --tokens file, 300 of them."""
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=os.path.join(FIXTURES, "causal.model"))
    with open(os.path.join(REPO, "data", "default_eval.txt"), encoding="utf-8") as f:
        ids = sp.encode(f.read())[:300]
    path = tmp_path_factory.mktemp("tokens") / "ids.json"
    path.write_text(json.dumps(ids))
    return str(path), ids


def reference(script, *args):
    out = subprocess.run([sys.executable, os.path.join(REFERENCE, script), *map(str, args)], check=True,
                         capture_output=True, text=True).stdout
    return json.loads(out)


def fp32(model, *args):
    j = compare_json("--variants", "fp32", *args, model=model)
    return j, j["results"][0]


def manual_causal_ppl(model_path, ids, max_length, add_bos):
    """--mode causal from its definition: BOS + chunks of L-1 (add_bos) or chunks of L, every token
    after a window's first scored, exact sums."""
    import torch

    m = torch.jit.load(model_path)
    chunk = max_length - 1 if add_bos else max_length
    nll, n = 0.0, 0
    for begin in range(0, len(ids), chunk):
        w = ([BOS] if add_bos else []) + ids[begin:begin + chunk]
        if len(w) < 2:
            continue
        x = torch.tensor([w])
        with torch.no_grad():
            lp = torch.log_softmax(m(x, torch.ones_like(x))[0].double(), -1)
        for i in range(1, len(w)):
            nll -= float(lp[i - 1, w[i]])
            n += 1
    import math
    return math.exp(nll / n), n


@pytest.mark.parametrize("model,add_bos", [(CAUSAL, True), (CAUSAL_NOBOS, False)])
def test_causal_mode_matches_its_definition(token_file, model, add_bos):
    path, ids = token_file
    j, r = fp32(model, "--tokens", path, "--max-length", "16")
    assert j["mode"] == "causal"  # the default for causal models
    assert j["tokens_file"] == path and j["text"] == path and j["stride"] is None
    expected, n = manual_causal_ppl(model, ids, 16, add_bos)
    assert r["tokens"] == n == (300 if add_bos else 300 - (300 + 15) // 16)
    assert abs(r["ppl"] / expected - 1) < 1e-6


@pytest.mark.parametrize("model,add_bos,stride", [(CAUSAL, True, 5), (CAUSAL_NOBOS, False, 8), (CAUSAL, True, 16)])
def test_stride_matches_the_hugging_face_guides_loop(token_file, model, add_bos, stride):
    path, ids = token_file
    j, r = fp32(model, "--tokens", path, "--max-length", "16", "--stride", str(stride))
    ref = reference("hf_stride_perplexity.py", model, path, 16, stride, int(add_bos), BOS)
    assert j["stride"] == stride
    assert r["tokens"] == ref["tokens"] == len(ids) + (1 if add_bos else 0) - 1 - (
        (len(ids) + add_bos - 1) // 16 if stride == 16 else 0)
    assert abs(r["ppl"] / ref["ppl"] - 1) < 1e-6


@pytest.mark.parametrize("model,add_bos,n_ctx", [(CAUSAL, True, 16), (CAUSAL_NOBOS, False, 16), (CAUSAL, True, 21)])
def test_llamacpp_mode_matches_llama_perplexitys_loop(token_file, model, add_bos, n_ctx):
    path, ids = token_file
    j, r = fp32(model, "--tokens", path, "--max-length", str(n_ctx), "--mode", "llamacpp")
    ref = reference("llamacpp_perplexity.py", model, path, n_ctx, int(add_bos), BOS)
    assert j["mode"] == "llamacpp"
    assert r["tokens"] == ref["count"]
    assert abs(r["ppl"] / ref["ppl"] - 1) < 1e-6
    assert abs(r["ppl_stderr"] / ref["ppl_stderr"] - 1) < 1e-5


def test_tokens_file_equals_the_text_it_came_from(tmp_path):
    """--tokens with the ids the model's own tokenizer gives equals tokenizing the text."""
    import sentencepiece as spm

    text = "The quick brown fox jumps over the lazy dog.\nA second line of text to predict.\n" * 4
    (tmp_path / "t.txt").write_text(text)
    sp = spm.SentencePieceProcessor(model_file=os.path.join(FIXTURES, "causal.model"))
    ids = []
    for line in text.splitlines(keepends=True):  # quantppl encodes line by line (text_windows.h)
        ids += sp.encode(line)
    (tmp_path / "t.json").write_text(json.dumps(ids))
    _, a = fp32(CAUSAL, "--text", str(tmp_path / "t.txt"))
    _, b = fp32(CAUSAL, "--tokens", str(tmp_path / "t.json"))
    assert a["tokens"] == b["tokens"] == len(ids)
    assert a["ppl"] == b["ppl"]


def test_tokens_on_t5_appends_eos_like_the_text(tmp_path):
    import sentencepiece as spm

    text = "Some words for the tiny T5 model to reconstruct.\n"
    (tmp_path / "t.txt").write_text(text)
    sp = spm.SentencePieceProcessor(model_file=os.path.join(FIXTURES, "tiny.model"))
    (tmp_path / "t.json").write_text(json.dumps(sp.encode(text)))
    a = compare_json("--variants", "fp32", "--text", str(tmp_path / "t.txt"))["results"][0]
    b = compare_json("--variants", "fp32", "--tokens", str(tmp_path / "t.json"))["results"][0]
    assert a["tokens"] == b["tokens"] and a["ppl"] == b["ppl"]


@pytest.mark.parametrize("content,needle", [
    ("[1, 2, 320]", "must be in [0, 319], got 320"),
    ("[1, -2]", "got -2"),
    ("[1, 2.5]", "must be an integer, got 2.5"),
    ("{\"ids\": [1]}", "expected a JSON array of token ids"),
    ("[]", "is empty"),
    ("[1, 2", "not valid JSON"),
])
def test_bad_tokens_files_are_data_errors(tmp_path, content, needle):
    (tmp_path / "bad.json").write_text(content)
    r = run("compare", "--model", CAUSAL, "--variants", "fp32", "--tokens", str(tmp_path / "bad.json"), "--quiet")
    assert_clean_error(r, EXIT_DATA, "bad.json", needle)


def test_usage_errors(token_file, tmp_path):
    path, _ = token_file
    base = ("compare", "--variants", "fp32", "--quiet")
    assert_clean_error(run(*base, "--model", CAUSAL, "--tokens", path, "--text", os.path.join(REPO, "data",
                                                                                             "default_eval.txt")),
                       EXIT_USAGE, "--tokens", "--text")
    assert_clean_error(run(*base, "--model", CAUSAL, "--mode", "reconstruct"), EXIT_USAGE, "reconstruct", "causal")
    assert_clean_error(run(*base, "--model", TINY, "--mode", "llamacpp"), EXIT_USAGE, "llamacpp", "T5")
    assert_clean_error(run(*base, "--model", TINY, "--stride", "4"), EXIT_USAGE, "--stride")
    assert_clean_error(run(*base, "--model", CAUSAL, "--mode", "llamacpp", "--stride", "4"), EXIT_USAGE, "--stride")
    assert_clean_error(run(*base, "--model", CAUSAL, "--max-length", "16", "--stride", "17"), EXIT_USAGE,
                       "--stride")
    assert_clean_error(run(*base, "--model", CAUSAL, "--mode", "llamacpp", "--max-length", "32", "--tokens",
                           _short(tmp_path)), EXIT_DATA, "at least 2 x --max-length = 64")
    assert_clean_error(run(*base, "--model", os.path.join(FIXTURES, "causal_bpe.pt")), EXIT_DATA, "bpe")


def _short(tmp_path):
    p = tmp_path / "short.json"
    p.write_text(json.dumps(list(range(3, 40))))
    return str(p)


def test_compare_all_statistics_and_ci_target_and_check(token_file, tmp_path):
    path, _ = token_file
    j = compare_json("--variants", "fp32,absmax:8,absmax:4", "--tokens", path, "--max-length", "16", model=CAUSAL)
    fp, a8, a4 = j["results"]
    assert fp["kl_mean"] == 0 and a4["kl_mean"] > a8["kl_mean"] > 0
    assert a4["top1_agreement"] < 1 and a8["delta_nll_ci95"] > 0
    assert j["layers_quantized"] == CAUSAL_LAYERS
    e = compare_json("--variants", "fp32,absmax:4", "--tokens", path, "--max-length", "8", "--ci-target", "50",
                     model=CAUSAL)
    assert e["window_order"] == "shuffled"
    check = tmp_path / "check.json"
    check.write_text(json.dumps({"format_version": 1, "tolerance_pct": 0.5,
                                 "variants": [{"variant": "absmax:8", "ppl": a8["ppl"]}]}))
    ok = run("compare", "--model", CAUSAL, "--tokens", path, "--max-length", "16", "--check", str(check), "--quiet")
    assert ok.returncode == 0, ok.stderr
    check.write_text(json.dumps({"format_version": 1, "tolerance_pct": 0.5,
                                 "variants": [{"variant": "absmax:8", "ppl": a8["ppl"] * 1.1}]}))
    bad = run("compare", "--model", CAUSAL, "--tokens", path, "--max-length", "16", "--check", str(check), "--quiet")
    assert bad.returncode == 1


def test_quantize_output_and_packed_evaluate_like_compare(token_file, tmp_path):
    path, _ = token_file
    direct = compare_json("--variants", "absmax:4:channel", "--tokens", path, "--max-length", "16",
                          model=CAUSAL)["results"][0]["ppl"]
    out = tmp_path / "q.pt"
    r = run("quantize", "--model", CAUSAL, "--variant", "absmax:4:channel", "--output", str(out))
    assert r.returncode == 0, r.stderr
    again = compare_json("--variants", "fp32", "--tokens", path, "--max-length", "16", model=str(out))
    assert again["mode"] == "causal" and again["results"][0]["ppl"] == direct
    packed = tmp_path / "q.qpack"
    r = run("quantize", "--model", CAUSAL, "--variant", "absmax:4:channel", "--packed", str(packed))
    assert r.returncode == 0, r.stderr
    p = compare_json("--variants", "fp32", "--tokens", path, "--max-length", "16", model=str(packed))
    assert abs(p["results"][0]["ppl"] / direct - 1) < 1e-6


def test_inspect_lists_the_causal_layers():
    j = load_json(run("inspect", "--model", CAUSAL, "--variant", "absmax:8", "--format", "json"))
    names = [l["name"] for l in j["layers"]]
    assert len(names) == CAUSAL_LAYERS
    assert names[0] == "model.layers.0.self_attn.q_proj" and names[-1] == "lm_head"


@pytest.mark.parametrize("model", [CAUSAL, CAUSAL_GPT2])
def test_sensitivity_parts_are_blocks_and_lm_head(token_file, model):
    path, _ = token_file
    j = load_json(run("sensitivity", "--model", model, "--variant", "absmax:4", "--tokens", path, "--max-length",
                      "16", "--format", "json", "--quiet"))
    assert [p["part"] for p in j["parts"]] == ["layers.0", "layers.1", "lm_head"]
    assert [p["layers"] for p in j["parts"]] == [7, 7, 1]
    assert len(j["layers"]) == CAUSAL_LAYERS
    assert j["tokens"] == (300 if model == CAUSAL else 300 - (300 + 15) // 16)  # add_bos vs not


CAUSAL_BPE = os.path.join(FIXTURES, "tiny_causal_bpe.pt")


def _python_with_tokenizers():
    """A Python that imports Hugging Face tokenizers (the venv's), or None."""
    for py in (sys.executable, os.path.join(REPO, "build", "venv", "bin", "python"),
               os.environ.get("QUANTPPL_VENV", "") and os.path.join(os.environ["QUANTPPL_VENV"], "bin", "python")):
        if py and os.path.exists(py) and subprocess.run([py, "-c", "import tokenizers"],
                                                        capture_output=True).returncode == 0:
            return py
    return None


def test_bpe_causal_model_tokenizes_like_hugging_face_tokenizers(tmp_path):
    """End to end with a byte-level BPE tokenizer.json inside a causal contract file: quantppl's
    perplexity from the text equals its perplexity from Hugging Face tokenizers' ids given with
    --tokens (so the ids are the same, token for token), and the scored-token count is theirs."""
    import zipfile
    py = _python_with_tokenizers()
    if py is None:
        pytest.skip("no Python with Hugging Face tokenizers (the venv's)")
    with zipfile.ZipFile(CAUSAL_BPE) as z:
        member = next(n for n in z.namelist() if n.endswith("extra/tokenizer.json"))
        (tmp_path / "tokenizer.json").write_bytes(z.read(member))
    text = tmp_path / "text.txt"
    text.write_text("The cat sat on the mat.\n\n  Indented line, digits 12345 and 2024;\n"
                    "the end\tof the  text: \u00e9t\u00e9, \u65e5\u672c, \U0001F600!\n" * 6, encoding="utf-8")
    hf = subprocess.run([py, "-c", "import sys, json; from tokenizers import Tokenizer; "
                         "t = Tokenizer.from_file(sys.argv[1]); "
                         "print(json.dumps(t.encode(open(sys.argv[2], encoding='utf-8').read(), "
                         "add_special_tokens=False).ids))", str(tmp_path / "tokenizer.json"), str(text)],
                        capture_output=True, text=True, timeout=120)
    assert hf.returncode == 0, hf.stderr
    ids = json.loads(hf.stdout)
    assert len(ids) > 100 and max(ids) < 316
    ids_file = tmp_path / "ids.json"
    ids_file.write_text(json.dumps(ids))
    from_text = compare_json("--text", str(text), "--variants", "fp32,absmax:4", model=CAUSAL_BPE)
    from_ids = compare_json("--tokens", str(ids_file), "--variants", "fp32,absmax:4", model=CAUSAL_BPE)
    for a, b in zip(from_text["results"], from_ids["results"]):
        assert a["ppl"] == b["ppl"] and a["tokens"] == b["tokens"]
    # add_bos: each window is [BOS] + text tokens, and every text token is scored.
    assert from_text["results"][0]["tokens"] == len(ids)
