#!/usr/bin/python3
"""Independent reference for tests/distribution_metrics_test.cpp, in float64 with numpy.

usage: /usr/bin/python3 tests/reference/distribution_metrics.py DIR
DIR holds shape.json {"B","T","V"}, p.f32 and q.f32 (raw float32 logits, B*T*V, fp32 model and
variant), labels.i64 (B*T), mask.u8 (B*T). Prints the metrics of include/quantppl/distribution_metrics.h
as JSON: kl_mean, kl_p99, kl_max, top1_agreement, delta_nll_mean, delta_nll_ci95, nll_sum, tokens.
"""
import json
import os
import sys

import numpy as np


def log_softmax(z):
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def main():
    d = sys.argv[1]
    shape = json.load(open(os.path.join(d, "shape.json")))
    B, T, V = shape["B"], shape["T"], shape["V"]
    p = np.fromfile(os.path.join(d, "p.f32"), dtype=np.float32).reshape(B * T, V).astype(np.float64)
    q = np.fromfile(os.path.join(d, "q.f32"), dtype=np.float32).reshape(B * T, V).astype(np.float64)
    labels = np.fromfile(os.path.join(d, "labels.i64"), dtype=np.int64).reshape(B * T)
    mask = np.fromfile(os.path.join(d, "mask.u8"), dtype=np.uint8).reshape(B * T).astype(bool)
    lp, lq = log_softmax(p[mask]), log_softmax(q[mask])
    kl = (np.exp(lp) * (lp - lq)).sum(axis=1)
    rows = np.arange(mask.sum())
    nll_p = -lp[rows, labels[mask]]
    nll_q = -lq[rows, labels[mask]]
    delta = nll_q - nll_p
    n = len(delta)
    out = {
        "kl_mean": kl.mean(), "kl_p99": float(np.percentile(kl, 99)), "kl_max": kl.max(),
        "top1_agreement": float((p[mask].argmax(1) == q[mask].argmax(1)).mean()),
        "delta_nll_mean": delta.mean(), "delta_nll_ci95": 1.959963984540054 * delta.std(ddof=1) / np.sqrt(n),
        "nll_sum": nll_q.sum(), "tokens": int(n),
    }
    print(json.dumps({k: float(v) for k, v in out.items()}))


if __name__ == "__main__":
    main()
