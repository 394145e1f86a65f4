"""Build a random-weight quantppl contract model of a known shape, for benchmarks.

usage: /usr/bin/python3 scripts/make_bench_models.py --shape flan-t5-small|t5-xl --out PATH
                                                     [--seed N] [--max-length N] [--tokenizer FILE]

The model is the project's own export path with random weights instead of a checkpoint:
t5_torchscript.py builds the module from the config below, the weights are drawn in place from a
seeded generator (T5's initialisation, see init_t5_weights), and export.py's own functions check
the tokenizer, script and check the module and save it atomically with the extra files
quantppl.json and tokenizer.model. Nothing is downloaded.

Tokenizer: by default the sentencepiece model inside models/default.pt (3000 pieces, for that
model's vocab_size of 3072; the contract allows fewer pieces than vocab_size, so every token id
is < 3000 while the logits still span the full 32128-entry vocabulary).

Shapes (exact Hugging Face configs; gated-gelu, untied lm_head, 32 buckets, max distance 128):
  flan-t5-small  vocab 32128, d_model 512, d_kv 64, d_ff 1024, 8+8 layers, 6 heads
                 76,961,152 parameters (308 MB fp32); builds in seconds
  t5-xl          vocab 32128, d_model 2048, d_kv 64, d_ff 5120, 24+24 layers, 32 heads
                 2,849,757,184 parameters (11.4 GB fp32)

Memory: parameters are allocated once, uninitialised (the modules' own reset_parameters is
skipped), then filled in place; torch.jit.script shares the tensors (no copy) and
torch.jit.save writes each storage straight from memory. Peak RSS is about the fp32 model size
plus ~0.3 GB (measure with /usr/bin/time -v).

Same seed, same shape, same tokenizer -> the same bytes (PYTHONHASHSEED is pinned to 0 by
re-executing, as scripts/export_t5.py does).
"""

import argparse
import contextlib
import os
import sys
import time
import zipfile

from .export import UserError, check_tokenizer_bytes, contract_metadata, save_contract, script_and_check
from .paths import REPO
from .reexec import reexec_with

PROG = "make_bench_models"
DEFAULT_TOKENIZER_SOURCE = os.path.join(REPO, "models", "default.pt")

_COMMON = dict(vocab_size=32128, d_kv=64, relative_attention_num_buckets=32, relative_attention_max_distance=128,
               feed_forward_proj="gated-gelu", tie_word_embeddings=False, layer_norm_epsilon=1e-6,
               pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)

SHAPES = {
    "flan-t5-small": dict(_COMMON, d_model=512, d_ff=1024, num_layers=8, num_decoder_layers=8, num_heads=6),
    "t5-xl": dict(_COMMON, d_model=2048, d_ff=5120, num_layers=24, num_decoder_layers=24, num_heads=32),
}


def tokenizer_bytes_from_model(path):
    """The `tokenizer.model` extra file of a contract archive (a zip), read without torch."""
    try:
        with zipfile.ZipFile(path) as z:
            names = [n for n in z.namelist() if n.endswith("/extra/tokenizer.model")]
            if len(names) != 1:
                raise UserError("%s has no tokenizer.model extra file" % path)
            return z.read(names[0])
    except (OSError, zipfile.BadZipFile) as e:
        raise UserError("cannot read %s: %s" % (path, e))


def load_tokenizer_bytes(path, cfg):
    """Bytes of a sentencepiece model given as a .model file or a contract .pt; checked like an export."""
    from .export import read_tokenizer

    if zipfile.is_zipfile(path):
        return check_tokenizer_bytes(tokenizer_bytes_from_model(path), cfg, path + " (tokenizer.model)")
    return read_tokenizer(path, cfg)


@contextlib.contextmanager
def no_default_init():
    """Skip nn.Linear / nn.Embedding's own initialisation (the weights are drawn afterwards):
    the storage stays untouched until init_t5_weights fills it, so nothing is written twice."""
    from torch import nn

    saved = nn.Linear.reset_parameters, nn.Embedding.reset_parameters
    nn.Linear.reset_parameters = lambda self: None
    nn.Embedding.reset_parameters = lambda self: None
    try:
        yield
    finally:
        nn.Linear.reset_parameters, nn.Embedding.reset_parameters = saved


def init_std(name, cfg):
    """Standard deviation of the normal init of one parameter, as Hugging Face's T5 _init_weights
    (initializer_factor 1.0); None for layer-norm weights, which are ones.

    shared: 1.0; q: (d_model d_kv)^-1/2; k, v: d_model^-1/2; o: (heads d_kv)^-1/2;
    wi, wi_0, wi_1: d_model^-1/2; wo: d_ff^-1/2; relative_attention_bias: d_model^-1/2.
    (Attention has no 1/sqrt(d_kv) scaling in T5: it is folded into q's smaller init.)
    One deliberate difference: the untied lm_head gets d_model^-1/2 (1/sqrt(fan_in)) instead of
    HF's 1.0, so that the logits have unit scale (perplexity near the vocabulary size) instead of
    a standard deviation of sqrt(d_model) (a mean NLL of ~95 nats on the flan shape).
    """
    d, dkv, h, dff = cfg["d_model"], cfg["d_kv"], cfg["num_heads"], cfg["d_ff"]
    if name.endswith("layer_norm.weight"):
        return None
    leaf = name.rsplit(".", 2)[-2]
    if name == "shared.weight":
        return 1.0
    if name == "lm_head.weight":
        return d ** -0.5
    table = {"q": (d * dkv) ** -0.5, "k": d ** -0.5, "v": d ** -0.5, "o": (h * dkv) ** -0.5,
             "wi": d ** -0.5, "wi_0": d ** -0.5, "wi_1": d ** -0.5, "wo": dff ** -0.5,
             "relative_attention_bias": d ** -0.5}
    if leaf not in table:
        raise ValueError("no initialisation rule for parameter %s" % name)
    return table[leaf]


def init_t5_weights(model, cfg, seed):
    """Fill every parameter in place from one seeded generator, in sorted-name order."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    params = dict(model.named_parameters())  # shared tensors (embed_tokens = shared) appear once
    for name in sorted(params):
        p = params[name]
        std = init_std(name, cfg)
        if std is None:
            p.fill_(1.0)
        else:
            p.normal_(0.0, std, generator=gen)


def build_module(cfg, seed):
    import torch

    from .t5_torchscript import T5ForLogits

    with torch.no_grad(), no_default_init():
        model = T5ForLogits(cfg)
        init_t5_weights(model, cfg, seed)
    model.eval()
    return model


def parameter_count(cfg):
    """Closed form of the parameter count of a gated-gelu, untied T5 (checked against the module)."""
    d, inner, dff, v = cfg["d_model"], cfg["num_heads"] * cfg["d_kv"], cfg["d_ff"], cfg["vocab_size"]
    nb, h = cfg["relative_attention_num_buckets"], cfg["num_heads"]
    ne, nd = cfg["num_layers"], cfg["num_decoder_layers"]
    attn = 4 * d * inner
    ff = 3 * d * dff
    enc = ne * (attn + ff + 2 * d) + nb * h + d
    dec = nd * (2 * attn + ff + 3 * d) + nb * h + d
    return v * d + enc + dec + d * v


def make_from_config(cfg_raw, out_path, seed=0, max_length=512, tokenizer=None, name="custom", log=print):
    """Build, script, check and save a random-weight contract model of any T5 config."""
    import torch

    from .t5_torchscript import normalize_config

    cfg = normalize_config(cfg_raw)
    tok_bytes = load_tokenizer_bytes(tokenizer or DEFAULT_TOKENIZER_SOURCE, cfg)
    t0 = time.perf_counter()
    model = build_module(cfg, seed)
    t1 = time.perf_counter()
    scripted = script_and_check(model, cfg)
    t2 = time.perf_counter()
    source = {
        "checkpoint": "random:%s:seed=%d" % (name, seed),
        "exported_by": "scripts/make_bench_models.py",
        "torch_version": torch.__version__,
        "tokenizer": os.path.basename(tokenizer) if tokenizer else "models/default.pt",
    }
    meta = contract_metadata(cfg, max_length, source)
    save_contract(scripted, out_path, meta, tok_bytes, prog=PROG)
    t3 = time.perf_counter()
    n = sum(p.numel() for p in scripted.parameters())
    if log:
        log("%s: wrote %s (%s, seed %d, %d parameters, %.2f GB fp32; init %.1f s, script+check %.1f s, save %.1f s)"
            % (PROG, out_path, name, seed, n, 4 * n / 1e9, t1 - t0, t2 - t1, t3 - t2))
    return meta


def make(shape, out_path, seed=0, max_length=512, tokenizer=None, log=print):
    return make_from_config(SHAPES[shape], out_path, seed, max_length, tokenizer, name=shape, log=log)


def main(argv=None):
    # Same seed, same bytes: PYTHONHASHSEED fixes the order TorchScript writes constants in (export.py).
    if argv is None and os.environ.get("PYTHONHASHSEED") != "0":
        reexec_with(dict(os.environ, PYTHONHASHSEED="0"))
    ap = argparse.ArgumentParser(prog=PROG, description="Build a random-weight contract model of a known shape.")
    ap.add_argument("--shape", required=True, choices=sorted(SHAPES), help="architecture to build")
    ap.add_argument("--out", required=True, metavar="PATH", help="output .pt (written atomically)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the weights (default 0)")
    ap.add_argument("--max-length", type=int, default=512, help="max_length in quantppl.json (default 512)")
    ap.add_argument("--tokenizer", metavar="FILE",
                    help="sentencepiece .model, or a contract .pt to take it from (default models/default.pt)")
    args = ap.parse_args(argv)
    if args.max_length <= 0:
        ap.error("--max-length must be a positive integer")
    try:
        make(args.shape, args.out, args.seed, args.max_length, args.tokenizer)
    except UserError as e:
        print("%s: error: %s" % (PROG, e), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
