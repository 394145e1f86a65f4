#!/usr/bin/env python3
"""HQQ as the `hqq` package (PyPI, 0.2.8.post1) computes it, for include/quantppl/methods/hqq.h.

The optimiser is the package's own default, hqq.core.optimize.optimize_weights_proximal, called
on the same weights and settings (lp_norm 0.7, beta 10, kappa 1.01, 20 iterations: its
defaults). The package's hqq.core.quantize (which imports termcolor and the package's other
requirements, not installed here: scripts/setup_python_env.sh installs hqq without
dependencies) is not imported; its set-up of the optimiser's inputs is restated below from
Quantizer.quantize with channel_wise=True, axis=1, round_zero=False:

    W = W.reshape([-1, group_size]); min/max per row (block); max_v = 2^nbits - 1
    scale = max_v / (max - min), 1 where |max - min| <= 1e-4, clamped to <= 2e4  (inverse scale)
    zero = -min * scale
    W_q, scale, zero = optimize_weights_proximal(tensor=W, scale, zero, min_max=[0, max_v], axis=1)
    dequantized = (W_q - zero) * (1 / scale)

(axis=1 with groups of consecutive inputs of a row: quantppl's block layout. The package's
default axis=0 groups the same number of elements differently.) A group size of 0 means one
block for the whole tensor.

usage: hqq_reference.py DIR
  DIR/meta.json: {"out", "in", "bits", "group"}; DIR/W.f32 (raw float32 [out, in]).
Writes DIR/zero.f32, DIR/k.f32 (inverse scales, per block) and DIR/xhat.f32; prints
{"blocks": n}.
"""
import json
import os
import sys

import torch

from hqq.core.optimize import optimize_weights_proximal


def main():
    d = sys.argv[1]
    with open(os.path.join(d, "meta.json")) as f:
        meta = json.load(f)
    n_out, n_in, bits, group = meta["out"], meta["in"], meta["bits"], meta["group"]
    w = torch.from_file(os.path.join(d, "W.f32"), size=n_out * n_in, dtype=torch.float32).reshape(n_out, n_in)
    blocks = w.reshape([-1, group]) if group > 0 else w.reshape([1, -1])
    _min = blocks.min(axis=1, keepdim=True)[0]
    _max = blocks.max(axis=1, keepdim=True)[0]
    max_v = round(2 ** bits - 1)
    denom = _max - _min
    scale = max_v / denom
    scale = torch.where(denom.abs() <= 1e-4, torch.full_like(scale, 1.0), scale)
    scale = scale.clamp(max=2e4)
    zero = -_min * scale
    w_q, scale, zero = optimize_weights_proximal(tensor=blocks, scale=scale, zero=zero, min_max=[0, max_v],
                                                 axis=1, device="cpu")
    xhat = ((w_q - zero) * (1.0 / scale)).reshape(n_out, n_in)
    zero.contiguous().numpy().astype("float32").tofile(os.path.join(d, "zero.f32"))
    scale.contiguous().numpy().astype("float32").tofile(os.path.join(d, "k.f32"))
    xhat.contiguous().numpy().astype("float32").tofile(os.path.join(d, "xhat.f32"))
    print(json.dumps({"blocks": int(blocks.shape[0])}))


if __name__ == "__main__":
    main()
