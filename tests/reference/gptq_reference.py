#!/usr/bin/python3
"""Independent reference GPTQ (Frantar et al. 2022), written from the paper, not from our C++.

The paper's Algorithm 1 without its two speed-ups that do not change the result: no lazy batches
(every update is applied as soon as a column is rounded) and float64 throughout. For every column q
in processing order:

    err    = (w_q - Q(w_q)) / U[q, q]
    w_j   -= err * U[q, j]            for every later column j

with U the upper Cholesky factor of (H + lambda I)^-1, lambda = damp * mean(diag H), after the
columns whose diag(H) is 0 are zeroed in W and get diag 1. A group's grid parameters are chosen
from the current (updated) weights of its G columns when its first column is reached; with
act_order the columns go in descending diag(H) and every group's parameters come from the
original W in advance ("static groups").

The grids are the uniform ones of include/quantppl/quantize.h in the numpy seed's arithmetic,
written here from its equations:
    absmax:    qmax = 2^(b-1) - 1, s = max|x| / qmax, q = clip(round(x / s), -qmax, qmax), x_hat = q s
    zeropoint: L = 2^b - 1, s = (max - min) / L, z = -round(min / s),
               q = clip(round(x / s + z), 0, L), x_hat = (q - z) s
(a block of zeros keeps s = 1 so it stays zero). Blocks: G consecutive inputs of a row (group),
a whole row (channel) or the whole tensor.

usage: gptq_reference.py DIR
  DIR/meta.json: {"out", "in", "scheme": "absmax"|"zeropoint", "bits", "granularity":
                  "group"|"channel"|"tensor", "group_size", "act_order": bool, "damp"}
  DIR/W.f32 (raw float32 [out, in], row-major), DIR/H.f64 (raw float64 [in, in]).
Writes DIR/xhat.f64 (the quantized weight) and DIR/step.f64 (each weight's grid step s, so that
two results with |x_hat_a - x_hat_b| < s / 2 have the same code) and prints
{"relative_error": e} with e = tr(dW H dW^T) / tr(W H W^T) on the undamped H.
"""
import json
import os
import sys

import numpy as np


def grid_params(block, scheme, bits):
    """(s, z) of one block (any shape) from its min/max, in float64."""
    if scheme == "absmax":
        qmax = 2 ** (bits - 1) - 1
        a = np.abs(block).max()
        s = a / qmax if a > 0 else 1.0
        return s, 0.0
    levels = 2 ** bits - 1
    lo, hi = block.min(), block.max()
    s = (hi - lo) / levels
    if s == 0:
        s = abs(lo) if lo != 0 else 1.0
        return s, float(-np.sign(lo))  # constant block: code 0 reconstructs lo
    return s, float(-np.round(lo / s))


def fake_quantize(x, s, z, scheme, bits):
    if scheme == "absmax":
        qmax = 2 ** (bits - 1) - 1
        return np.clip(np.round(x / s), -qmax, qmax) * s
    levels = 2 ** bits - 1
    return (np.clip(np.round(x / s + z), 0, levels) - z) * s


def params_of_group(cols, meta):
    """Per-row (s, z) arrays [out] for a group's columns cols [out, G], or broadcast scalars
    (per tensor)."""
    if meta["granularity"] == "tensor":
        s, z = grid_params(cols, meta["scheme"], meta["bits"])
        return np.full(cols.shape[0], s), np.full(cols.shape[0], z)
    out = [grid_params(cols[r], meta["scheme"], meta["bits"]) for r in range(cols.shape[0])]
    return np.array([o[0] for o in out]), np.array([o[1] for o in out])


def gptq(w, h, meta):
    n_in = w.shape[1]
    w = w.copy()
    h = h.copy()
    dead = np.diag(h) == 0
    h[dead, dead] = 1.0
    w[:, dead] = 0.0
    w_original = w.copy()
    width = {"group": meta.get("group_size", 0), "channel": n_in, "tensor": n_in}[meta["granularity"]]
    if meta["act_order"]:
        order = np.argsort(-np.diag(h), kind="stable")
    else:
        order = np.arange(n_in)
    hp = h[np.ix_(order, order)]
    hp = hp + meta["damp"] * np.mean(np.diag(hp)) * np.eye(n_in)
    u = np.linalg.cholesky(np.linalg.inv(hp)).T  # upper: inv(H) = U^T U

    wp = w[:, order]
    xhat = np.zeros_like(w)
    step = np.zeros_like(w)
    static = {}
    if meta["act_order"]:
        for c0 in range(0, n_in, width):
            static[c0 // width] = params_of_group(w_original[:, c0:c0 + width], meta)
    params = None
    for k in range(n_in):
        col = order[k]
        if meta["act_order"]:
            params = static[col // width]
        elif col % width == 0:
            params = params_of_group(wp[:, k:k + width], meta)
        s, z = params
        q = fake_quantize(wp[:, k], s, z, meta["scheme"], meta["bits"])
        xhat[:, col] = q
        step[:, col] = s
        err = (wp[:, k] - q) / u[k, k]
        wp[:, k + 1:] -= np.outer(err, u[k, k + 1:])
    return xhat, step


def main():
    d = sys.argv[1]
    with open(os.path.join(d, "meta.json")) as f:
        meta = json.load(f)
    n_out, n_in = meta["out"], meta["in"]
    w = np.fromfile(os.path.join(d, "W.f32"), dtype=np.float32).reshape(n_out, n_in).astype(np.float64)
    h = np.fromfile(os.path.join(d, "H.f64"), dtype=np.float64).reshape(n_in, n_in)
    xhat, step = gptq(w, h, meta)
    xhat.tofile(os.path.join(d, "xhat.f64"))
    step.tofile(os.path.join(d, "step.f64"))
    dw = xhat - w
    num = float(np.sum((dw @ h) * dw))
    den = float(np.sum((w @ h) * w))
    print(json.dumps({"relative_error": num / den}))


if __name__ == "__main__":
    main()
