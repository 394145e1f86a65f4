#!/usr/bin/python3
"""Independent reference of AWQ's scale search (Lin et al. 2023), from issue 16's definition and
the arithmetic stated in include/quantppl/methods/awq.h, not from our C++.

For a group of layers that read the same input, with m = mean |x| per input channel:

    s(alpha)_j = m_j^alpha / sqrt(max(m^alpha) * min(m^alpha))   (over m > 0; s_j = 1 where m_j = 0)
    W_hat(alpha) = Q(W diag(s)) diag(s)^-1
    alpha* = the first alpha in {0, 1/20, ..., 19/20} minimising sum_L tr(dW_L H_L dW_L^T)

s is computed in float64 and rounded to float32; W diag(s), Q and the division run in float32;
the errors are computed in float64. Q is a uniform grid of include/quantppl/quantize.h in the
numpy seed's arithmetic (written here from its equations, like gptq_reference.py):
    absmax:    s = max|x| / (2^(b-1) - 1), x_hat = clip(round(x / s), -qmax, qmax) s
    zeropoint: s = (max - min) / (2^b - 1), z = -round(min / s), x_hat = (clip(round(x / s + z), 0, L) - z) s
per block of G consecutive inputs of a row (group), per row (channel) or per tensor.

usage: awq_reference.py DIR
  DIR/meta.json: {"groups": [{"in": N, "m": "m_0.f64", "layers": [{"out": O, "w": "w_0.f32",
                  "h": "h_0.f64"}, ...]}, ...], "scheme", "bits", "granularity", "group_size", "grid"}
  (raw little-endian arrays, row-major).
Prints {"groups": [{"alpha": a, "errors": [per-layer error at a], "search": [summed error per alpha]}]}.
"""
import json
import os
import sys

import numpy as np


def fake_quantize_blocks(blocks, scheme, bits):
    """blocks: float32 [num_blocks, block_len]; returns x_hat float32."""
    f32 = np.float32
    if scheme == "absmax":
        qmax = f32(2 ** (bits - 1) - 1)
        a = np.abs(blocks).max(axis=1, keepdims=True)
        s = np.where(a > 0, a / qmax, f32(1)).astype(f32)
        return (np.clip(np.round(blocks / s), -qmax, qmax) * s).astype(f32)
    levels = f32(2 ** bits - 1)
    lo = blocks.min(axis=1, keepdims=True)
    hi = blocks.max(axis=1, keepdims=True)
    s = ((hi - lo) / levels).astype(f32)
    const = s == 0
    # a constant block c: s = |c| (1 for 0), coded so that it reconstructs exactly
    s = np.where(const, np.where(lo != 0, np.abs(lo), f32(1)), s).astype(f32)
    z = np.where(const, -np.sign(lo), -np.round(lo / s)).astype(f32)
    q = np.clip(np.round(blocks / s + z), f32(0), levels)
    return ((q - z) * s).astype(f32)


def fake_quantize(w, meta):
    out, n_in = w.shape
    g = meta["granularity"]
    if g == "tensor":
        blocks = w.reshape(1, -1)
    elif g == "channel":
        blocks = w
    else:
        blocks = w.reshape(-1, meta["group_size"])
    return fake_quantize_blocks(blocks, meta["scheme"], meta["bits"]).reshape(out, n_in)


def scales(m, alpha):
    s = np.ones_like(m)
    active = m > 0
    if active.any():
        p = m[active] ** alpha
        s[active] = p / np.sqrt(p.max() * p.min())
    return s.astype(np.float32)


def search(group, meta, d):
    n_in = group["in"]
    m = np.fromfile(os.path.join(d, group["m"]), dtype=np.float64)
    layers = []
    for layer in group["layers"]:
        w = np.fromfile(os.path.join(d, layer["w"]), dtype=np.float32).reshape(layer["out"], n_in)
        h = np.fromfile(os.path.join(d, layer["h"]), dtype=np.float64).reshape(n_in, n_in)
        layers.append((w, h))
    best = None
    history = []
    for k in range(meta["grid"]):
        alpha = k / meta["grid"]
        s = scales(m, alpha)
        errors = []
        for w, h in layers:
            w_hat = (fake_quantize(w * s[None, :], meta) / s[None, :]).astype(np.float32)
            dw = w_hat.astype(np.float64) - w.astype(np.float64)
            errors.append(float(np.sum((dw @ h) * dw)))
        total = sum(errors)
        history.append(total)
        if best is None or total < best[0]:
            best = (total, alpha, errors)
    return {"alpha": best[1], "errors": best[2], "search": history}


def main():
    d = sys.argv[1]
    with open(os.path.join(d, "meta.json")) as f:
        meta = json.load(f)
    print(json.dumps({"groups": [search(g, meta, d) for g in meta["groups"]]}))


if __name__ == "__main__":
    main()
