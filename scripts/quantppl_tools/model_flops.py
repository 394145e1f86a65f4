"""FLOPs of one forward pass of a quantppl contract model (T5 encoder-decoder), per label token.

usage: /usr/bin/python3 scripts/model_flops.py MODEL.pt [--length N | --encoder-length S --decoder-length T]
                                               [--text-tokens N] [--json]

The formula (multiply-adds counted as 2 FLOPs; one example with S encoder and T decoder tokens;
d = d_model, i = num_heads * d_kv, f = d_ff, V = vocab_size, H = num_heads, k = d_kv,
g = 3 for a gated feed-forward (wi_0, wi_1, wo), 2 otherwise (wi, wo),
Le / Ld = encoder / decoder layers):

  encoder, per layer:  Linear q,k,v,o           4 d i S
                       feed-forward             g d f S
                       scores Q K^T, weights V  2 H S^2 k
  decoder, per layer:  self-attn q,k,v,o        4 d i T
                       cross-attn q,o           2 d i T
                       cross-attn k,v           2 d i S   (on the encoder output)
                       feed-forward             g d f T
                       self scores + values     2 H T^2 k (the full T x T product; the causal mask is additive)
                       cross scores + values    2 H T S k
  lm_head:                                      d V T

  FLOPs(S, T) = 2 x [ Le (4 d i S + g d f S + 2 H k S^2)
                    + Ld (6 d i T + 2 d i S + g d f T + 2 H k T^2 + 2 H k T S)
                    + d V T ]
  FLOPs per label token = FLOPs(S, T) / T

Not counted (elementwise or memory-bound, < 1% here): embeddings, RMS norms, softmax, GELU,
residual adds, position-bias lookup, and the NLL's log_softmax. Padding is not counted: this is
the useful work. In reconstruct mode S = T = the window length; in prefix mode S = floor(n/2),
T = n - S. For a text cut into windows (all max_length long but the last), text_flops_per_token
sums FLOPs over the windows and divides by the label tokens.

flan-t5-small at S = T = 512: 139.85 MFLOP per label token, of which the Linears are
2 x 60,489,728 = 120.98 MFLOP (at S = T every Linear weight is used once per token) and the
attention matmuls 18.9 MFLOP; at S = T = 128: 125.7 MFLOP. t5-xl at 512: 5.87 GFLOP per token.

The config comes from the archive's quantppl.json "config" object (written by
scripts/export_t5.py and scripts/make_bench_models.py); if it is missing, from the parameter
shapes of the module (torch.jit.load).
"""

import argparse
import json
import os
import sys
import zipfile

CONFIG_KEYS = ("vocab_size", "d_model", "d_kv", "d_ff", "num_heads", "num_layers", "num_decoder_layers",
               "feed_forward_proj")


def is_gated(cfg):
    return str(cfg.get("feed_forward_proj", "relu")).startswith("gated-")


def forward_flops(cfg, s, t):
    """FLOPs of one forward pass over one example with s encoder and t decoder tokens (formula above)."""
    d, f, v = cfg["d_model"], cfg["d_ff"], cfg["vocab_size"]
    h, k = cfg["num_heads"], cfg["d_kv"]
    i = h * k
    g = 3 if is_gated(cfg) else 2
    le, ld = cfg["num_layers"], cfg["num_decoder_layers"]
    enc = le * (4 * d * i * s + g * d * f * s + 2 * h * k * s * s)
    dec = ld * (6 * d * i * t + 2 * d * i * s + g * d * f * t + 2 * h * k * t * t + 2 * h * k * t * s)
    head = d * v * t
    return 2 * (enc + dec + head)


def example_lengths(n, mode="reconstruct"):
    """(encoder length, label length) of one window of n tokens (perplexity.h)."""
    if mode == "reconstruct":
        return n, n
    return n // 2, n - n // 2


def flops_per_token(cfg, s, t=None):
    t = s if t is None else t
    return forward_flops(cfg, s, t) / t


def window_lengths(text_tokens, max_length):
    full, rest = divmod(text_tokens, max_length)
    return [max_length] * full + ([rest] if rest else [])


def text_flops_per_token(cfg, text_tokens, max_length, mode="reconstruct"):
    """Useful FLOPs per label token over a text of text_tokens tokens cut into max_length windows."""
    total, labels = 0, 0
    for n in window_lengths(text_tokens, max_length):
        s, t = example_lengths(n, mode)
        if t < 1 or s < 1:
            continue
        total += forward_flops(cfg, s, t)
        labels += t
    return total / labels


def linear_weight_count(cfg):
    """Weights of all Linear layers (what quantppl quantizes and backs up)."""
    d, f, v, i = cfg["d_model"], cfg["d_ff"], cfg["vocab_size"], cfg["num_heads"] * cfg["d_kv"]
    g = 3 if is_gated(cfg) else 2
    return cfg["num_layers"] * (4 * d * i + g * d * f) + cfg["num_decoder_layers"] * (8 * d * i + g * d * f) + d * v


def read_metadata(path):
    """quantppl.json of a contract archive, read from the zip without torch."""
    with zipfile.ZipFile(path) as z:
        names = [n for n in z.namelist() if n.endswith("/extra/quantppl.json")]
        if len(names) != 1:
            raise ValueError("%s has no quantppl.json extra file" % path)
        return json.loads(z.read(names[0]))


def config_from_module(path):
    """The hyper-parameters from the parameter shapes (for archives without a config object)."""
    import torch

    module = torch.jit.load(path, map_location="cpu")
    shapes = {n: tuple(p.shape) for n, p in module.named_parameters()}
    v, d = shapes["shared.weight"]
    inner = shapes["encoder.block.0.layer.0.SelfAttention.q.weight"][0]
    h = shapes["encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"][1]
    gated = "encoder.block.0.layer.1.DenseReluDense.wi_0.weight" in shapes
    f = shapes["encoder.block.0.layer.1.DenseReluDense.wo.weight"][1]

    def layers(stack):
        return len({n.split(".")[2] for n in shapes if n.startswith(stack + ".block.")})

    return {"vocab_size": v, "d_model": d, "d_kv": inner // h, "d_ff": f, "num_heads": h,
            "num_layers": layers("encoder"), "num_decoder_layers": layers("decoder"),
            "feed_forward_proj": "gated-gelu" if gated else "relu"}


def model_config(path):
    """(config dict with CONFIG_KEYS, metadata dict)."""
    meta = read_metadata(path)
    cfg = dict(meta.get("config") or {})
    cfg["vocab_size"] = meta["vocab_size"]
    if any(k not in cfg for k in CONFIG_KEYS):
        cfg = config_from_module(path)
    return {k: cfg[k] for k in CONFIG_KEYS}, meta


def main(argv=None):
    ap = argparse.ArgumentParser(prog="model_flops", description="FLOPs per label token of a contract model's forward pass.")
    ap.add_argument("model", metavar="MODEL.pt")
    ap.add_argument("--length", type=int, help="S = T = N (reconstruct mode on one window; default: max_length)")
    ap.add_argument("--encoder-length", type=int, help="S")
    ap.add_argument("--decoder-length", type=int, help="T")
    ap.add_argument("--text-tokens", type=int,
                    help="average over a text of this many tokens cut into --length (or max_length) windows")
    ap.add_argument("--mode", choices=("reconstruct", "prefix"), default="reconstruct")
    ap.add_argument("--json", action="store_true", help="print JSON")
    args = ap.parse_args(argv)
    try:
        cfg, meta = model_config(args.model)
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as e:
        print("model_flops: error: %s: %s" % (args.model, e), file=sys.stderr)
        return 1
    length = args.length or meta["max_length"]
    if args.text_tokens:
        s, t = None, None
        per_token = text_flops_per_token(cfg, args.text_tokens, length, args.mode)
    else:
        if (args.encoder_length is None) != (args.decoder_length is None):
            ap.error("give both --encoder-length and --decoder-length, or --length")
        s, t = (args.encoder_length, args.decoder_length) if args.encoder_length else example_lengths(length, args.mode)
        per_token = flops_per_token(cfg, s, t)
    out = {"model": args.model, "config": cfg, "encoder_length": s, "decoder_length": t,
           "text_tokens": args.text_tokens, "max_length": length, "mode": args.mode,
           "flops_per_token": per_token, "linear_weights": linear_weight_count(cfg)}
    if args.json:
        print(json.dumps(out, indent=2, sort_keys=True))
    else:
        where = ("S=%d T=%d" % (s, t)) if s else ("text of %d tokens in windows of %d" % (args.text_tokens, length))
        print("%.4g FLOP per label token (%s, %s); %d Linear weights" % (per_token, where, args.mode,
                                                                        out["linear_weights"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
