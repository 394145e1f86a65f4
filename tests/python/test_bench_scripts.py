"""The pure-Python parts of the benchmark scripts: model_flops.py, make_bench_models.py,
python_baseline.py and bench_report.py. Small and fast: a tiny random contract model, hand
counts and hand-made benchmark files.

Run: build/venv/bin/python -m pytest -q tests/python/test_bench_scripts.py
"""

import json
import os
import subprocess

import pytest
import torch

from conftest import REPO, SYSTEM_PYTHON

from quantppl_tools import bench_models as mbm
from quantppl_tools import bench_report, model_flops
from quantppl_tools import python_baseline as pb

QUANTPPL = os.path.join(REPO, "build", "quantppl")

# Tiny T5 with flan's structure (gated-gelu, untied); max distance small so buckets saturate.
TINY = dict(vocab_size=128, d_model=32, d_kv=8, d_ff=48, num_layers=2, num_decoder_layers=3, num_heads=4,
            relative_attention_num_buckets=8, relative_attention_max_distance=20, feed_forward_proj="gated-gelu",
            tie_word_embeddings=False, layer_norm_epsilon=1e-6, pad_token_id=0, eos_token_id=1,
            decoder_start_token_id=0)


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory, spiece_path):
    path = str(tmp_path_factory.mktemp("bench") / "tiny.pt")
    mbm.make_from_config(TINY, path, seed=3, max_length=16, tokenizer=spiece_path, name="tiny", log=None)
    return path


@pytest.fixture(scope="module")
def tiny_text(tmp_path_factory):
    from conftest import SENTENCES

    path = tmp_path_factory.mktemp("text") / "text.txt"
    path.write_text("\n".join(SENTENCES * 2) + "\n", encoding="utf-8")
    return str(path)


# ---------------------------------------------------------------------------------------------
# model_flops.py
# ---------------------------------------------------------------------------------------------

def test_flops_hand_count():
    """vocab 10, d 4, heads 2 x d_kv 2 (inner 4), d_ff 6, 1+1 layers, gated, S=3, T=2, in multiply-adds:
    encoder: q,k,v,o 4*16*3 = 192; ff 3*4*6*3 = 216; QK^T and AV 2 * 2*3*3*2 = 72      -> 480
    decoder: self q,k,v,o 4*16*2 = 128; cross q,o 2*16*2 = 64; cross k,v 2*16*3 = 96;
             ff 3*24*2 = 144; self QK^T+AV 2 * 2*2*2*2 = 32; cross 2 * 2*2*3*2 = 48      -> 512
    lm_head 4*10*2 = 80. Total 1072 MACs = 2144 FLOPs, 1072 per label token."""
    cfg = dict(vocab_size=10, d_model=4, d_kv=2, d_ff=6, num_heads=2, num_layers=1, num_decoder_layers=1,
               feed_forward_proj="gated-gelu")
    assert model_flops.forward_flops(cfg, 3, 2) == 2144
    assert model_flops.flops_per_token(cfg, 3, 2) == 1072
    # Non-gated: the feed-forward has two matrices, not three: 216 -> 144, 144 -> 96.
    relu = dict(cfg, feed_forward_proj="relu")
    assert model_flops.forward_flops(relu, 3, 2) == 2144 - 2 * (72 + 48)
    # Linear weights: enc 4*16 + 3*24, dec 8*16 + 3*24, lm_head 40.
    assert model_flops.linear_weight_count(cfg) == 64 + 72 + 128 + 72 + 40


def count_macs(model, s, t):
    """Multiply-adds of the real module's Linear layers and attention matmuls, counted by hooks."""
    macs = [0]

    def linear_hook(mod, inp, out):
        macs[0] += inp[0].numel() // inp[0].size(-1) * mod.in_features * mod.out_features

    hooks = [m.register_forward_hook(linear_hook) for m in model.modules() if isinstance(m, torch.nn.Linear)]
    real_matmul = torch.matmul

    def counting_matmul(a, b):
        out = real_matmul(a, b)
        macs[0] += out.numel() * a.size(-1)
        return out

    torch.matmul = counting_matmul
    try:
        with torch.no_grad():
            ids = torch.ones(1, s, dtype=torch.long)
            model(ids, torch.ones_like(ids), torch.ones(1, t, dtype=torch.long))
    finally:
        torch.matmul = real_matmul
        for h in hooks:
            h.remove()
    return macs[0]


@pytest.mark.parametrize("ff", ["gated-gelu", "relu"])
@pytest.mark.parametrize("s,t", [(7, 7), (5, 9), (16, 3)])
def test_flops_match_the_module(ff, s, t):
    """The formula equals the multiply-adds the scripted model's own code performs."""
    cfg = dict(TINY, feed_forward_proj=ff)
    model = mbm.build_module(cfg, seed=0)
    assert model_flops.forward_flops(cfg, s, t) == 2 * count_macs(model, s, t)
    linear = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
    assert model_flops.linear_weight_count(cfg) == linear


def test_flops_of_the_bench_shapes():
    from quantppl_tools.t5_torchscript import normalize_config

    flan = normalize_config(mbm.SHAPES["flan-t5-small"])
    assert model_flops.linear_weight_count(flan) == 60489728  # 242 MB: the notes' figure
    assert model_flops.flops_per_token(flan, 512) == 139853824
    # At S = T every Linear weight is used once per token: the Linears give 2 x weights.
    # Attention per token: encoder 8 x 2 H S k, decoder 8 x (2 H T k + 2 H S k), as FLOPs.
    attention = 2 * (8 * 2 * 6 * 512 * 64 + 8 * 4 * 6 * 512 * 64)
    assert model_flops.flops_per_token(flan, 512) == 2 * 60489728 + attention
    # A text: full windows and a remainder, useful work only.
    per = model_flops.text_flops_per_token(flan, 1024 + 100, 512)
    expected = (2 * model_flops.forward_flops(flan, 512, 512) + model_flops.forward_flops(flan, 100, 100)) / 1124
    assert per == pytest.approx(expected, rel=1e-12)
    assert model_flops.window_lengths(1124, 512) == [512, 512, 100]
    assert model_flops.example_lengths(7, "prefix") == (3, 4)


def test_flops_config_from_archive(tiny_model):
    cfg, meta = model_flops.model_config(tiny_model)
    assert {k: cfg[k] for k in model_flops.CONFIG_KEYS} == {k: TINY[k] for k in model_flops.CONFIG_KEYS}
    assert meta["max_length"] == 16
    assert model_flops.config_from_module(tiny_model) == {k: TINY[k] for k in model_flops.CONFIG_KEYS}
    out = subprocess.run([SYSTEM_PYTHON, os.path.join(REPO, "scripts", "model_flops.py"), tiny_model, "--json"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    assert doc["flops_per_token"] == model_flops.flops_per_token(cfg, 16)


# ---------------------------------------------------------------------------------------------
# make_bench_models.py
# ---------------------------------------------------------------------------------------------

def test_parameter_counts():
    from quantppl_tools.t5_torchscript import normalize_config

    assert mbm.parameter_count(normalize_config(mbm.SHAPES["flan-t5-small"])) == 76961152
    assert mbm.parameter_count(normalize_config(mbm.SHAPES["t5-xl"])) == 2849757184
    model = mbm.build_module(TINY, seed=1)
    assert mbm.parameter_count(normalize_config(TINY)) == sum(p.numel() for p in model.parameters())


def test_weights_are_seeded_and_scaled():
    a, b, c = (dict(mbm.build_module(TINY, seed=s).named_parameters()) for s in (1, 1, 2))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["lm_head.weight"], c["lm_head.weight"])
    d, dkv, h, dff = TINY["d_model"], TINY["d_kv"], TINY["num_heads"], TINY["d_ff"]
    for name, std in (("encoder.block.0.layer.0.SelfAttention.q.weight", (d * dkv) ** -0.5),
                      ("decoder.block.1.layer.1.EncDecAttention.k.weight", d ** -0.5),
                      ("decoder.block.2.layer.2.DenseReluDense.wo.weight", dff ** -0.5),
                      ("lm_head.weight", d ** -0.5), ("shared.weight", 1.0)):
        assert a[name].std().item() == pytest.approx(std, rel=0.15), name
    assert torch.equal(a["encoder.final_layer_norm.weight"], torch.ones(d))


def test_tiny_model_is_a_contract_model(tiny_model, spiece_path, tmp_path):
    extra = {"quantppl.json": "", "tokenizer.model": ""}
    module = torch.jit.load(tiny_model, _extra_files=extra)
    meta = json.loads(extra["quantppl.json"])
    assert meta["format_version"] == 1 and meta["vocab_size"] == 128 and meta["max_length"] == 16
    assert meta["source"]["exported_by"] == "scripts/make_bench_models.py"
    with open(spiece_path, "rb") as f:
        assert extra["tokenizer.model"] == f.read()
    ids = torch.tensor([[5, 6, 7, 1]])
    logits = module(ids, torch.ones_like(ids), torch.tensor([[0, 5, 6]]))
    assert logits.shape == (1, 3, 128) and torch.isfinite(logits).all()
    # Same seed, same name -> same bytes; no temporary left behind.
    again = tmp_path / "tiny.pt"
    mbm.make_from_config(TINY, str(again), seed=3, max_length=16, tokenizer=spiece_path, name="tiny", log=None)
    with open(tiny_model, "rb") as f:
        assert again.read_bytes() == f.read()
    assert os.listdir(tmp_path) == ["tiny.pt"]


def test_default_tokenizer_comes_from_the_default_model():
    data = mbm.tokenizer_bytes_from_model(mbm.DEFAULT_TOKENIZER_SOURCE)
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor()
    sp.LoadFromSerializedProto(data)
    assert sp.get_piece_size() == 3000 and sp.eos_id() == 1 and sp.pad_id() == 0


# ---------------------------------------------------------------------------------------------
# python_baseline.py
# ---------------------------------------------------------------------------------------------

def test_text_pieces_cut_like_text_windows_cpp():
    assert list(pb.text_pieces(b"a b\ncd\n\nlast")) == [b"a b\n", b"cd\n", b"\n", b"last"]
    limit = pb.MAX_PIECE_BYTES
    # A long line: cut after the last whitespace before the limit.
    line = b"x" * (limit - 10) + b" " + b"y" * 100 + b"\n"
    assert list(pb.text_pieces(line)) == [b"x" * (limit - 10) + b" ", b"y" * 100 + b"\n"]
    # No whitespace: cut at a character boundary (a 2-byte character straddling the limit moves).
    line = b"a" * (limit - 1) + "é".encode() + b"b"
    pieces = list(pb.text_pieces(line))
    assert pieces == [b"a" * (limit - 1), "é".encode() + b"b"]
    for p in pieces:
        p.decode("utf-8")


def test_batches_sort_pad_and_shift():
    meta = {"pad_token_id": 0, "decoder_start_token_id": 0}
    windows = [[5, 6, 7], [8, 9], [10, 11, 12, 13], [14]]
    batches = pb.make_batches(windows, "reconstruct", 2, meta)
    assert len(batches) == 2
    ids, mask, dec, labels, label_mask = batches[0]  # windows 2 and 0: longest first
    assert ids.tolist() == [[10, 11, 12, 13], [5, 6, 7, 0]]
    assert mask.tolist() == [[1, 1, 1, 1], [1, 1, 1, 0]]
    assert dec.tolist() == [[0, 10, 11, 12], [0, 5, 6, 0]]
    assert labels.tolist() == [[10, 11, 12, 13], [5, 6, 7, 0]]
    assert label_mask.sum().item() == 7
    ids, mask, dec, labels, label_mask = pb.make_batches(windows, "prefix", 8, meta)[0]
    # prefix: encoder = first floor(n/2), labels = the rest; [14] has no prefix and is skipped.
    assert ids.tolist() == [[10, 11], [5, 0], [8, 0]]
    assert labels.tolist() == [[12, 13], [6, 7], [9, 0]]
    assert dec.tolist() == [[0, 12], [0, 6], [0, 0]]


def test_nll_is_cross_entropy_over_real_labels():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 700, 50, generator=g)  # more rows than one 512-row chunk
    labels = torch.randint(0, 50, (2, 700), generator=g)
    mask = torch.ones(2, 700, dtype=torch.bool)
    mask[1, 300:] = False
    expected = torch.nn.functional.cross_entropy(logits[mask], labels[mask], reduction="sum").item()
    assert pb.batch_nll_sum(logits, labels, mask) == pytest.approx(expected, rel=1e-5)


def run_baseline(*args):
    proc = subprocess.run([SYSTEM_PYTHON, os.path.join(REPO, "scripts", "python_baseline.py")] + [str(a) for a in args],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_baseline_runs_on_the_tiny_model(tiny_model, tiny_text):
    out = run_baseline(tiny_model, tiny_text, "--batch-size", 3, "--threads", 1)
    assert out["omp_wait_policy"] == "PASSIVE" and out["openblas_threads"] == "1" and out["torch_threads"] == 1
    assert out["malloc_tunables"] is True and out["warmup"] == 2
    assert out["windows"] == -(-out["text_tokens"] // 16) and out["tokens"] == out["text_tokens"]
    assert out["tokens_per_second"] == pytest.approx(out["tokens"] / out["seconds"])
    # The batch size changes only the float rounding.
    other = run_baseline(tiny_model, tiny_text, "--batch-size", 1, "--threads", 1, "--malloc-tunables", "off")
    assert other["malloc_tunables"] is False
    assert other["tokens"] == out["tokens"]
    assert other["nll_sum"] == pytest.approx(out["nll_sum"], rel=1e-5)
    prefix = run_baseline(tiny_model, tiny_text, "--batch-size", 4, "--threads", 1, "--mode", "prefix")
    assert prefix["tokens"] < out["tokens"]


@pytest.mark.skipif(not os.path.exists(QUANTPPL), reason="build/quantppl is not built")
@pytest.mark.parametrize("mode", ["reconstruct", "prefix"])
def test_baseline_does_what_compare_does(tiny_model, tiny_text, mode):
    proc = subprocess.run([QUANTPPL, "compare", "-m", tiny_model, "-t", tiny_text, "--variants", "fp32", "--format",
                           "json", "-q", "--batch-size", "3", "--threads", "1", "--mode", mode],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    ours = json.loads(proc.stdout)
    base = run_baseline(tiny_model, tiny_text, "--batch-size", 3, "--threads", 1, "--mode", mode)
    assert (base["text_tokens"], base["windows"]) == (ours["text_tokens"], ours["windows"])
    fp32 = ours["results"][0]
    assert base["tokens"] == fp32["tokens"]
    assert base["nll_sum"] / base["tokens"] == pytest.approx(fp32["nll"], rel=1e-5)


def test_sgemm_fallback():
    proc = subprocess.run([SYSTEM_PYTHON, os.path.join(REPO, "scripts", "python_baseline.py"), "-", "-", "--threads",
                           "1", "--sgemm"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["flops_per_second"] > 1e8


# ---------------------------------------------------------------------------------------------
# bench_report.py
# ---------------------------------------------------------------------------------------------

def gb_entry(name, ms, **counters):
    e = {"name": name, "run_name": name, "run_type": "iteration", "repetitions": 1, "repetition_index": 0,
         "threads": 1, "iterations": 10, "real_time": ms * 1e6, "cpu_time": ms * 1e6, "time_unit": "ns"}
    e.update(counters)
    return e


def write_json(path, doc):
    with open(path, "w", encoding="utf-8") as f:
        json.dump(doc, f)


def compare_doc(model, b, t, tokens, seconds, nll=10.0, variants=("fp32",), text_sha="abc", text_tokens=1124):
    return {"model": model, "text_sha256": text_sha, "text_tokens": text_tokens, "windows": 3, "mode": "reconstruct",
            "max_length": 512, "batch_size": b, "threads": t, "libtorch_version": "1.13.0",
            "parameters_quantized": 60489728,
            "results": [{"variant": v, "tokens": tokens, "seconds": seconds, "nll": nll} for v in variants]}


def test_parse_benchmark_names():
    assert bench_report.parse_benchmark_name("BM_FakeQuantize/absmax:4:channel/threads:2") == \
        ("BM_FakeQuantize", "absmax:4:channel", 2)
    assert bench_report.parse_benchmark_name("BM_CopyLinearWeights/threads:1") == ("BM_CopyLinearWeights", None, 1)
    assert bench_report.parse_benchmark_name("BM_JitLoad") == ("BM_JitLoad", None, None)
    # Google Benchmark's decorations (UseRealTime, Iterations, ...) are not part of the variant.
    assert bench_report.parse_benchmark_name("BM_FakeQuantize/zeropoint:4:group128/threads:1/real_time") == \
        ("BM_FakeQuantize", "zeropoint:4:group128", 1)
    assert bench_report.parse_benchmark_name("BM_JitLoad/iterations:3/real_time") == ("BM_JitLoad", None, None)
    assert bench_report.parse_benchmark_name("BM_FakeQuantize/absmax:8:tensor:p99.9/threads:1")[1] == \
        "absmax:8:tensor:p99.9"
    kinds = {v: bench_report.variant_kind(v) for v in ("absmax:8", "absmax:4:channel", "zeropoint:4:group128",
                                                         "absmax:8:tensor:p99.9", "absmax:4:channel:mse")}
    assert kinds == {"absmax:8": "tensor", "absmax:4:channel": "channel", "zeropoint:4:group128": "group",
                     "absmax:8:tensor:p99.9": "percentile", "absmax:4:channel:mse": "mse"}


def test_report_from_hand_made_files(tmp_path):
    run = tmp_path
    model = os.path.join(REPO, "models", "default.pt")  # only its config and byte size are read
    benchmarks = [
        gb_entry("BM_CopyLinearWeights/threads:1", 16.0), gb_entry("BM_CopyLinearWeights/threads:2", 10.0),
        gb_entry("BM_FakeQuantize/absmax:8/threads:1", 20.0), gb_entry("BM_FakeQuantize/absmax:8/threads:2", 16.0),
        gb_entry("BM_FakeQuantizeReference/absmax:8/threads:1", 200.0),
        gb_entry("BM_FakeQuantize/absmax:4:group64/threads:1", 40.0),
        gb_entry("BM_RestoreWeights/threads:1", 16.8),
        gb_entry("BM_Sgemm/threads:1", 1.0, flops_per_second=100e9),
        gb_entry("BM_JitLoad", 1000.0), gb_entry("BM_LoadContractModel", 1100.0),
    ]
    # Repetitions with aggregates (and UseRealTime's suffix, as quantppl_bench names them): the median wins.
    benchmarks.append(dict(gb_entry("BM_Sgemm/threads:2/real_time", 1.0, flops_per_second=150e9)))
    for agg, rate in (("mean", 170e9), ("median", 180e9), ("stddev", 1e9)):
        benchmarks.append(dict(gb_entry("BM_Sgemm/threads:2/real_time_" + agg, 1.0, flops_per_second=rate),
                               run_name="BM_Sgemm/threads:2/real_time", run_type="aggregate", aggregate_name=agg))
    benchmarks.append(gb_entry("BM_ApplyVariantParams/absmax:8/threads:1/real_time", 8.0))
    write_json(run / "bench.json", {"context": {"num_cpus": 2}, "benchmarks": benchmarks})
    # torch.mm measurements: the best rate seen wins (120 > BM_Sgemm's 100 at 1 thread; 90 loses).
    write_json(run / "sgemm_t1.start.json", {"flops_per_second": 120e9})
    write_json(run / "sgemm_t1.end.json", {"flops_per_second": 90e9})
    write_json(run / "compare_b1_t1.r1.json", compare_doc(model, 1, 1, 1124, 2.0))
    write_json(run / "compare_b1_t1.r2.json", compare_doc(model, 1, 1, 1124, 4.0))   # slower: ignored
    write_json(run / "python_b1_t1.mon.r1.json", {"tokens": 1124, "tokens_per_second": 500.0, "nll_sum": 11240.0,
                                                 "malloc_tunables": True})
    write_json(run / "compare_b8_t2.r1.json", compare_doc(model, 8, 2, 1124, 1.0))
    write_json(run / "python_b8_t2.moff.r1.json", {"tokens": 1124, "tokens_per_second": 1000.0, "nll_sum": 11240.0,
                                                  "malloc_tunables": False})
    write_json(run / "variants.json", compare_doc(model, 8, 2, 1124, 1.0, variants=("fp32", "a", "b", "c")))
    write_json(run / "rss_x1.json", compare_doc(model, 8, 2, 1124, 1.0, variants=("fp32", "absmax:8")))
    write_json(run / "rss_x4.json", compare_doc(model, 8, 2, 1124, 1.0, variants=("fp32", "absmax:8"), text_tokens=4493))
    (run / "rss_x1.kb").write_text("100000\n")
    (run / "rss_x4.kb").write_text("101000\n")
    rows = {(r.target, r.config): r for r in bench_report.collect(str(run))}

    def value(target, config):
        return rows[(target, config)].value

    assert value("1 fake-quant / copy", "absmax:8, 1 thr") == pytest.approx(1.25)
    assert rows[("1 fake-quant / copy", "absmax:8, 1 thr")].status == "PASS"
    assert "reference 10.0x slower" in rows[("1 fake-quant / copy", "absmax:8, 1 thr")].note
    assert rows[("1 fake-quant / copy", "absmax:8, 2 thr")].status == "FAIL"        # 1.6
    assert rows[("1 fake-quant / copy", "absmax:4:group64, 1 thr")].status == "info"  # no target for groups
    assert value("2 restore / copy", "1 thr") == pytest.approx(1.05)
    assert "applying stored params 8.0 ms (0.50x copy)" in rows[("1 fake-quant / copy", "absmax:8, 1 thr")].note
    # compare 1124 / 2.0 = 562 tok/s (best of two runs) vs python 500.
    assert value("3 compare / python", "B=1, 1 thr") == pytest.approx(562 / 500)
    cfg, _ = model_flops.model_config(model)
    per_token = model_flops.text_flops_per_token(cfg, 1124, 512)
    assert value("3 compare / GEMM bound", "B=1, 1 thr") == pytest.approx(562 / (120e9 / per_token))
    assert "torch.mm; best of 3, others 100, 90" in rows[("3 compare / GEMM bound", "B=1, 1 thr")].note
    assert value("3 compare / GEMM bound", "B=8, 2 thr") == pytest.approx(1124 / (180e9 / per_token))
    assert rows[("3 compare / python", "B=8, 2 thr")].status == "PASS"  # 1124 >= 1000
    assert "malloc tunables off" in rows[("3 compare / python", "B=8, 2 thr")].note
    assert value("4 N variants / (N x fp32)", "N=4, B=8, 2 thr, same run") == pytest.approx(1.0)
    assert value("4 N variants / (N x fp32)", "N=4, B=8, 2 thr, vs fp32-only run") == pytest.approx(1.0)
    assert value("5 RSS 4x text / 1x text", "4493 vs 1124 tokens") == pytest.approx(1.01)
    budget = 1.25 * (bench_report.model_bytes(model) + 4 * 60489728)
    rss_rows = [r for r in rows.values() if r.target == "5 peak RSS / budget"]
    assert rss_rows[0].value == pytest.approx(100000 * 1024 / budget)
    assert value("6 load / jit::load", "model + tokenizer") == pytest.approx(1.1)
    table = bench_report.format_table(list(rows.values()))
    assert "PASS" in table and "FAIL" in table


def test_hqq_rows_are_each_spec_over_the_copy(tmp_path):
    benchmarks = [gb_entry("BM_CopyLinearWeights/threads:1", 10.0),
                  gb_entry("BM_Hqq/zeropoint:4:group64/threads:1/real_time", 150.0, mean_iterations=6.5),
                  gb_entry("BM_Hqq/q4_1/threads:1/real_time", 250.0, mean_iterations=4.0),
                  gb_entry("BM_Hqq/q4_1/threads:2/real_time", 100.0)]
    write_json(tmp_path / "bench.json", {"context": {"num_cpus": 2}, "benchmarks": benchmarks})
    rows = {(r.target, r.config): r for r in bench_report.collect(str(tmp_path)) if r.target == "10 hqq / copy"}
    assert rows[("10 hqq / copy", "zeropoint:4:group64, 1 thr")].value == pytest.approx(15.0)
    assert rows[("10 hqq / copy", "zeropoint:4:group64, 1 thr")].status == "PASS"
    assert "6.5 HQQ iterations per weight" in rows[("10 hqq / copy", "zeropoint:4:group64, 1 thr")].note
    assert rows[("10 hqq / copy", "q4_1, 1 thr")].status == "FAIL"  # 25 > 20
    assert rows[("10 hqq / copy", "q4_1, 2 thr")].status == "n/a"   # no copy measured at 2 threads


def test_report_with_nothing_measured(tmp_path):
    rows = bench_report.collect(str(tmp_path))
    assert rows and all(r.status == "n/a" for r in rows)
    proc = subprocess.run([SYSTEM_PYTHON, os.path.join(REPO, "scripts", "bench_report.py"), str(tmp_path)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "machine: CPU" in proc.stdout and "not measured" in proc.stdout


def test_model_bytes_counts_each_storage_once(tiny_model):
    from quantppl_tools.t5_torchscript import normalize_config

    assert bench_report.model_bytes(tiny_model) == 4 * mbm.parameter_count(normalize_config(TINY))


def test_bench_sh_rejects_unknown_arguments():
    proc = subprocess.run(["bash", os.path.join(REPO, "scripts", "bench.sh"), "--bogus"], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 2 and "unknown argument" in proc.stderr
