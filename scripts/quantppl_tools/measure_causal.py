"""Perplexity of a causal quantppl model file under naive weight quantization, in Python.

usage: /usr/bin/python3 scripts/measure_causal_model.py MODEL.pt TEXT [TEXT ...] [--json OUT.json]

A cross-check for the C++ tool's `--mode causal` and the source of the default causal model's
quantization table (models/README-causal.md). sentencepiece models only (the shipped model's kind).

Perplexity (`--mode causal`, README): the text is encoded line by line with the archive's
sentencepiece model and the ids concatenated (x_1..x_N, no EOS); the stream is cut into
consecutive windows; with add_bos each window is BOS + up to max_length - 1 text tokens and every
text token is scored (the first from BOS alone); without add_bos each window holds up to
max_length tokens and its first token is context only. nll_i = -log softmax(logits[i-1])[w_i];
perplexity = exp(sum nll / scored tokens).

Fake quantization: measure.py's fake_quantize (absmax / zeropoint, tensor / channel / group 64,
min-max ranges, round half to even) on every torch.nn.Linear weight, lm_head included;
embeddings and norms untouched.
"""

import argparse
import json
import math
import os
import sys

for k, v in (("OMP_WAIT_POLICY", "PASSIVE"), ("OPENBLAS_NUM_THREADS", "1")):
    os.environ.setdefault(k, v)

from .measure import VARIANTS, fake_quantize, linear_modules

PROG = "measure_causal_model"


def fail(msg):
    print("%s: error: %s" % (PROG, msg), file=sys.stderr)
    sys.exit(1)


def load_causal(path):
    import sentencepiece as spm
    import torch

    if not os.path.isfile(path):
        fail("model file %s does not exist" % path)
    extra = {"quantppl.json": "", "tokenizer.model": ""}
    module = torch.jit.load(path, map_location="cpu", _extra_files=extra)
    meta = json.loads(extra["quantppl.json"])
    if meta.get("architecture") != "causal" or meta.get("tokenizer", {}).get("kind") != "sentencepiece":
        fail("%s: not a causal model with a sentencepiece tokenizer" % path)
    sp = spm.SentencePieceProcessor()
    sp.LoadFromSerializedProto(extra["tokenizer.model"])
    module.eval()
    return module, meta, sp


def encode_lines(sp, text):
    ids = []
    for line in text.split("\n"):
        ids.extend(sp.encode(line))
    return ids


def causal_windows(ids, max_length, add_bos, bos):
    """[(window ids, first scored position)] as `--mode causal` cuts the stream."""
    out = []
    if add_bos:
        step = max_length - 1
        for i in range(0, len(ids), step):
            out.append(([bos] + ids[i:i + step], 1))
    else:
        for i in range(0, len(ids), max_length):
            w = ids[i:i + max_length]
            if len(w) >= 2:
                out.append((w, 1))
    return out


def corpus_nll(module, windows, batch=8):
    import torch

    total, count = 0.0, 0
    with torch.no_grad():
        for b in range(0, len(windows), batch):
            chunk = windows[b:b + batch]
            s = max(len(w) for w, _ in chunk)
            inp = torch.zeros((len(chunk), s), dtype=torch.long)
            mask = torch.zeros_like(inp)
            labels = torch.full_like(inp, -100)
            for r, (w, first) in enumerate(chunk):
                inp[r, :len(w)] = torch.tensor(w)
                mask[r, :len(w)] = 1
                labels[r, first:len(w)] = torch.tensor(w[first:])
            logits = module(inp, mask)
            nll = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.size(-1)),
                                                    labels[:, 1:].reshape(-1), ignore_index=-100, reduction="sum")
            total += float(nll)
            count += int((labels != -100).sum())
    return total, count


def main(argv=None):
    ap = argparse.ArgumentParser(prog=PROG, description="Perplexity of a causal quantppl model under naive weight quantization.")
    ap.add_argument("model", metavar="MODEL.pt")
    ap.add_argument("texts", metavar="TEXT", nargs="+")
    ap.add_argument("--json", metavar="OUT.json")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    module, meta, sp = load_causal(args.model)
    L, add_bos, bos = int(meta["max_length"]), bool(meta["add_bos"]), meta["bos_token_id"]
    streams = {}
    for p in args.texts:
        with open(p, encoding="utf-8") as f:
            streams[p] = causal_windows(encode_lines(sp, f.read()), L, add_bos, bos)
    linears = linear_modules(module)
    backup = {n: m.weight.detach().clone() for n, m in linears}
    results = {"model": args.model, "linear_modules": len(linears),
               "quantized_weights": sum(w.numel() for w in backup.values()), "texts": {}}
    for p, ws in streams.items():
        nll, cnt = corpus_nll(module, ws)
        results["texts"][p] = {"tokens": cnt, "fp32": math.exp(nll / cnt), "variants": {}}
    for method, bits, gran in VARIANTS:
        key = "%s%d-%s" % (method, bits, gran)
        with torch.no_grad():
            for n, m in linears:
                m.weight.copy_(fake_quantize(backup[n], method, bits, gran))
        for p, ws in streams.items():
            nll, cnt = corpus_nll(module, ws)
            results["texts"][p]["variants"][key] = math.exp(nll / cnt)
        with torch.no_grad():
            for n, m in linears:
                m.weight.copy_(backup[n])
    for p, r in results["texts"].items():
        print("## %s: %d scored tokens, fp32 perplexity %.3f" % (p, r["tokens"], r["fp32"]))
        print("| variant | tensor | channel | group 64 |")
        print("|---|---|---|---|")
        for method in ("absmax", "zeropoint"):
            for bits in (8, 4):
                cells = []
                for gran in ("tensor", "channel", "group"):
                    v = r["variants"]["%s%d-%s" % (method, bits, gran)]
                    cells.append("%.3f (%+.2f%%)" % (v, 100 * (v / r["fp32"] - 1)))
                print("| %s %d-bit | %s |" % (method, bits, " | ".join(cells)))
        print()
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
