"""Perplexity of a quantppl model file under naive weight quantization, in Python.

usage: /usr/bin/python3 scripts/measure_default_model.py MODEL.pt TEXT [TEXT ...] [--json OUT.json]

A cross-check for the C++ tool and the source of the model card's sensitivity table.

Perplexity (the seeds' way, labels = input): the text is encoded with the archive's
sentencepiece model as one string (newlines are whitespace to nmt_nfkc), EOS is appended, the
token stream is cut into consecutive windows of max_length tokens (the last one shorter); for
each window the encoder input is the window, the labels are the window, the decoder input is the
labels shifted right (decoder_start_token_id first). Corpus perplexity = exp(sum NLL / tokens).

Fake quantization of every torch.nn.Linear weight (embeddings and position-bias tables are left
alone, as the contract says), b bits, with min-max ranges over a tensor, an output channel (a
row of the [out, in] weight) or a group of 64 consecutive weights along in_features:
  absmax:    qmax = 2^(b-1) - 1, s = qmax / max|w|, w' = round(s w) / s      (seed tutorial, b = 8)
  zeropoint: s = (2^b - 1) / (max w - min w), z = round(-s min w - 2^(b-1)),
             q = clamp(round(s w + z), -2^(b-1), 2^(b-1) - 1), w' = (q - z) / s
round = torch.round (half to even). A zero range leaves the weights unchanged (s := 1).
"""

import argparse
import json
import math
import os
import sys

for k, v in (("OMP_WAIT_POLICY", "PASSIVE"), ("OPENBLAS_NUM_THREADS", "1")):
    os.environ.setdefault(k, v)

PROG = "measure_default_model"


def fail(msg):
    print("%s: error: %s" % (PROG, msg), file=sys.stderr)
    sys.exit(1)


def load_model(path):
    import torch
    import sentencepiece as spm

    if not os.path.isfile(path):
        fail("model file %s does not exist" % path)
    extra = {"quantppl.json": "", "tokenizer.model": ""}
    try:
        module = torch.jit.load(path, map_location="cpu", _extra_files=extra)
    except Exception as e:
        fail("cannot load %s as TorchScript: %s" % (path, str(e).strip().splitlines()[0] if str(e).strip() else e))
    try:
        meta = json.loads(extra["quantppl.json"])
    except ValueError:
        fail("%s: quantppl.json is missing or not JSON" % path)
    if meta.get("format_version") != 1:
        fail("%s: format_version %r is not 1" % (path, meta.get("format_version")))
    sp = spm.SentencePieceProcessor()
    try:
        sp.LoadFromSerializedProto(extra["tokenizer.model"])
    except Exception:
        fail("%s: tokenizer.model is missing or not a sentencepiece model" % path)
    module.eval()
    return module, meta, sp


def encode_text(sp, text, eos):
    return sp.encode(text) + [eos]


def corpus_nll(module, meta, ids, batch=16):
    """(sum NLL, token count) over consecutive windows of max_length, labels = input."""
    import torch

    L = int(meta["max_length"])
    start, pad = int(meta["decoder_start_token_id"]), int(meta["pad_token_id"])
    windows = [ids[i:i + L] for i in range(0, len(ids), L)]
    total, count = 0.0, 0
    with torch.no_grad():
        for b in range(0, len(windows), batch):
            chunk = windows[b:b + batch]
            s = max(len(w) for w in chunk)
            inp = torch.full((len(chunk), s), pad, dtype=torch.long)
            mask = torch.zeros_like(inp)
            labels = torch.full_like(inp, -100)
            for r, w in enumerate(chunk):
                inp[r, :len(w)] = torch.tensor(w)
                mask[r, :len(w)] = 1
                labels[r, :len(w)] = torch.tensor(w)
            dec = torch.full_like(labels, pad)
            dec[:, 0] = start
            dec[:, 1:] = labels[:, :-1].clamp(min=0)  # -100 (padding) -> pad; those logits are ignored
            logits = module(inp, mask, dec)
            nll = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.size(-1)).float(), labels.reshape(-1),
                                                    ignore_index=-100, reduction="sum")
            total += float(nll)
            count += int((labels != -100).sum())
    return total, count


def fake_quantize(w, method, bits, granularity, group=64):
    """Quantize-dequantize w ([out, in]) with min-max ranges; returns a new tensor."""
    import torch

    out_f, in_f = w.shape
    if granularity == "tensor":
        x = w.reshape(1, -1)
    elif granularity == "channel":
        x = w
    elif granularity == "group":
        if in_f % group:
            raise ValueError("in_features %d not divisible by the group size %d" % (in_f, group))
        x = w.reshape(-1, group)
    else:
        raise ValueError(granularity)
    if method == "absmax":
        qmax = 2 ** (bits - 1) - 1
        amax = x.abs().amax(dim=1, keepdim=True)
        s = torch.where(amax > 0, qmax / amax, torch.ones_like(amax))
        y = torch.round(s * x) / s
    elif method == "zeropoint":
        lo, hi = x.amin(dim=1, keepdim=True), x.amax(dim=1, keepdim=True)
        rng = hi - lo
        s = torch.where(rng > 0, (2 ** bits - 1) / rng, torch.ones_like(rng))
        z = torch.round(-s * lo - 2 ** (bits - 1))
        q = torch.clamp(torch.round(s * x + z), -(2 ** (bits - 1)), 2 ** (bits - 1) - 1)
        y = (q - z) / s
    else:
        raise ValueError(method)
    return y.reshape(out_f, in_f)


def linear_modules(module):
    return [(n, m) for n, m in module.named_modules() if m.original_name == "Linear"]


VARIANTS = [(m, b, g) for b in (8, 4) for m in ("absmax", "zeropoint") for g in ("tensor", "channel", "group")]


def main(argv=None):
    ap = argparse.ArgumentParser(prog=PROG, description="Perplexity of a quantppl model under naive weight quantization.")
    ap.add_argument("model", metavar="MODEL.pt")
    ap.add_argument("texts", metavar="TEXT", nargs="+", help="UTF-8 text files (each measured separately)")
    ap.add_argument("--json", metavar="OUT.json", help="also write the results as JSON")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    if args.threads <= 0:
        ap.error("--threads must be a positive integer")

    import torch

    torch.set_num_threads(args.threads)
    texts = {}
    for path in args.texts:
        try:
            with open(path, encoding="utf-8") as f:
                texts[path] = f.read()
        except OSError as e:
            fail("cannot read text %s: %s" % (path, e.strerror))
        except UnicodeDecodeError:
            fail("text %s is not UTF-8" % path)
        if not texts[path].strip():
            fail("text %s is empty" % path)

    module, meta, sp = load_model(args.model)
    eos = int(meta["eos_token_id"])
    streams = {p: encode_text(sp, t, eos) for p, t in texts.items()}
    linears = linear_modules(module)
    backup = {n: m.weight.detach().clone() for n, m in linears}
    n_quant = sum(w.numel() for w in backup.values())

    results = {"model": args.model, "linear_modules": len(linears), "quantized_weights": n_quant, "texts": {}}
    for p, ids in streams.items():
        nll, cnt = corpus_nll(module, meta, ids)
        results["texts"][p] = {"tokens": cnt, "fp32": math.exp(nll / cnt), "variants": {}}
    for method, bits, gran in VARIANTS:
        key = "%s%d-%s" % (method, bits, gran)
        with torch.no_grad():
            for n, m in linears:
                m.weight.copy_(fake_quantize(backup[n], method, bits, gran))
        for p, ids in streams.items():
            nll, cnt = corpus_nll(module, meta, ids)
            results["texts"][p]["variants"][key] = math.exp(nll / cnt)
        with torch.no_grad():
            for n, m in linears:
                m.weight.copy_(backup[n])

    for p, r in results["texts"].items():
        print("## %s: %d tokens, fp32 perplexity %.3f" % (p, r["tokens"], r["fp32"]))
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
