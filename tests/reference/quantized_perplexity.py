#!/usr/bin/python3
"""Independent reference for tests/compare_test.cpp: perplexity of a contract model whose Linear
weights Python fake-quantizes with the seeds' own formulas.

usage: /usr/bin/python3 tests/reference/quantized_perplexity.py MODEL.pt WINDOWS.json VARIANT

VARIANT: fp32 | tutorial-absmax8 | tutorial-zeropoint8 | numpy-absmax:BITS | numpy-zeropoint:BITS
(per tensor, min-max ranges). The tutorial formulas are the torch tutorial's absmax_quantize and
zeropoint_quantize verbatim; the numpy ones are the notebook's symmetric/asymmetric quantization.
Every window is run alone (batch of one, no padding), labels = the window, decoder input = labels
shifted right; NLL = cross_entropy(reduction="sum"), summed in Python floats.
Prints {"nll_sum": ..., "tokens": ..., "ppl": ..., "layers": ...}.
"""

import json
import math
import sys

import torch
import torch.nn.functional as F


def tutorial_absmax(ip):
    scale = 127 / torch.max(torch.abs(ip))
    ip_quant = (scale * ip).round()
    return ip_quant / scale


def tutorial_zeropoint(ip):
    ip_range = torch.max(ip) - torch.min(ip)
    ip_range = 1 if ip_range == 0 else ip_range
    scale = 255 / ip_range
    zeropoint = (-scale * torch.min(ip) - 128).round()
    ip_quant = torch.clip((ip * scale + zeropoint).round(), -128, 127)
    return (ip_quant - zeropoint) / scale


def numpy_symmetric(params, bits):
    alpha = params.abs().max()
    scale = alpha / (2 ** (bits - 1) - 1)
    bound = 2 ** (bits - 1) - 1
    q = torch.clamp(torch.round(params / scale), -bound, bound)
    return q * scale


def numpy_asymmetric(params, bits):
    alpha, beta = params.max(), params.min()
    scale = (alpha - beta) / (2 ** bits - 1)
    zero = -1 * torch.round(beta / scale)
    q = torch.clamp(torch.round(params / scale + zero), 0, 2 ** bits - 1)
    return (q - zero) * scale


def quantizer(variant):
    if variant == "fp32":
        return None
    if variant == "tutorial-absmax8":
        return tutorial_absmax
    if variant == "tutorial-zeropoint8":
        return tutorial_zeropoint
    kind, bits = variant.split(":")
    bits = int(bits)
    if kind == "numpy-absmax":
        return lambda w: numpy_symmetric(w, bits)
    if kind == "numpy-zeropoint":
        return lambda w: numpy_asymmetric(w, bits)
    raise SystemExit("unknown variant " + variant)


def main():
    model_path, windows_path, variant = sys.argv[1:4]
    extra = {"quantppl.json": ""}
    module = torch.jit.load(model_path, _extra_files=extra).eval()
    meta = json.loads(extra["quantppl.json"])
    fq = quantizer(variant)
    layers = 0
    with torch.no_grad():
        if fq is not None:
            for name, sub in module.named_modules():
                if sub.original_name == "Linear":
                    sub.weight.copy_(fq(sub.weight))
                    layers += 1
        with open(windows_path, encoding="utf-8") as f:
            windows = json.load(f)
        nll_sum, tokens = 0.0, 0
        for w in windows:
            ids = torch.tensor([w], dtype=torch.int64)
            dec = torch.tensor([[meta["decoder_start_token_id"]] + w[:-1]], dtype=torch.int64)
            logits = module(ids, torch.ones_like(ids), dec)
            nll_sum += F.cross_entropy(logits[0], torch.tensor(w), reduction="sum").item()
            tokens += len(w)
    print(json.dumps({"nll_sum": nll_sum, "tokens": tokens, "ppl": math.exp(nll_sum / tokens), "layers": layers}))


if __name__ == "__main__":
    main()
