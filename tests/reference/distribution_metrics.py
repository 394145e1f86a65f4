#!/usr/bin/python3
"""Independent reference for include/quantppl/distribution_metrics.h: every statistic of the
comparison of a variant's predictive distributions with fp32's, from the logits, in float64
with numpy (written from the header's definitions and llama.cpp's, not from our C++).

usage:
  /usr/bin/python3 tests/reference/distribution_metrics.py DIR
      DIR holds shape.json {"B","T","V"}, p.f32 and q.f32 (raw float32 logits, B*T*V, fp32 model
      and variant), labels.i64 (B*T), mask.u8 (B*T).
  /usr/bin/python3 tests/reference/distribution_metrics.py --model MODEL.pt --windows WINDOWS.json \
      --variant VARIANT
      Runs the contract model (TorchScript) on every window alone (batch of one, no padding;
      labels = the window, decoder input = labels shifted right: compare's reconstruct mode), once
      as it is (P) and once with its Linear weights fake-quantized by VARIANT (Q), a variant of
      quantized_perplexity.py (fp32, numpy-absmax:BITS, ...).

Prints JSON with the fields of `quantppl compare --format json` (kl_mean, kl_mean_stderr, kl_min,
kl_p001 ... kl_p999, kl_max, top1_agreement[_stderr], delta_nll_mean, delta_nll_ci95, ppl_ratio,
ppl_ratio_ci95_low/high, nll_correlation, delta_p_mean[_stderr], delta_p_rms[_stderr],
delta_p_min, delta_p_p001 ... delta_p_max) plus nll_sum, tokens and the means behind them.
Percentiles are numpy.percentile's default (linear) method. With N = 1 the sample standard
deviation (ddof=1) does not exist: the *_stderr fields, the intervals and the correlation are null.
"""
import json
import math
import os
import sys

import numpy as np

Z95 = 1.959963984540054  # two-sided 95% normal quantile
PERCENTILES = [("p001", 0.1), ("p01", 1), ("p05", 5), ("p10", 10), ("p25", 25), ("median", 50), ("p75", 75),
               ("p90", 90), ("p95", 95), ("p99", 99), ("p999", 99.9)]


def log_softmax(z):
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def stderr(x):
    """sd(x, ddof=1) / sqrt(N); None when N < 2."""
    return float(np.std(x, ddof=1) / math.sqrt(len(x))) if len(x) >= 2 else None


def spread(prefix, x):
    out = {prefix + "_min": float(np.min(x))}
    for name, p in PERCENTILES:
        out[prefix + "_" + name] = float(np.percentile(x, p))
    out[prefix + "_max"] = float(np.max(x))
    return out


def statistics(p, q, labels):
    """p, q: float64 [N, V] logits of fp32 and the variant at the N predicted positions; labels [N]."""
    lp, lq = log_softmax(p), log_softmax(q)
    rows = np.arange(len(labels))
    kl = (np.exp(lp) * (lp - lq)).sum(axis=1)
    nll_p, nll_q = -lp[rows, labels], -lq[rows, labels]
    delta = nll_q - nll_p
    dp = np.exp(-nll_q) - np.exp(-nll_p)
    agree = (p.argmax(1) == q.argmax(1)).astype(np.float64)
    n = len(labels)
    a = agree.mean()
    out = {"tokens": n, "nll_sum": float(nll_q.sum()), "nll_mean": float(nll_q.mean()),
           "reference_nll_mean": float(nll_p.mean())}
    out["kl_mean"] = float(kl.mean())
    out["kl_mean_stderr"] = stderr(kl)
    out.update(spread("kl", kl))
    out["top1_agreement"] = float(a)
    out["top1_agreement_stderr"] = math.sqrt(a * (1 - a) / n)
    out["delta_nll_mean"] = float(delta.mean())
    se = stderr(delta)
    out["delta_nll_ci95"] = Z95 * se if se is not None else None
    out["ppl_ratio"] = math.exp(delta.mean())
    out["ppl_ratio_ci95_low"] = math.exp(delta.mean() - Z95 * se) if se is not None else None
    out["ppl_ratio_ci95_high"] = math.exp(delta.mean() + Z95 * se) if se is not None else None
    out["nll_correlation"] = float(np.corrcoef(nll_p, nll_q)[0, 1]) if n >= 2 else None
    out["delta_p_mean"] = float(dp.mean())
    out["delta_p_mean_stderr"] = stderr(dp)
    rms = math.sqrt((dp ** 2).mean())
    out["delta_p_rms"] = rms
    se2 = stderr(dp ** 2)
    # llama.cpp's delta-method error of the RMS: stderr(dp^2) / (2 rms).
    out["delta_p_rms_stderr"] = None if se2 is None else (0.0 if se2 == 0 else se2 / (2 * rms))
    out.update(spread("delta_p", dp))
    return out


def from_raw_files(d):
    shape = json.load(open(os.path.join(d, "shape.json")))
    B, T, V = shape["B"], shape["T"], shape["V"]
    p = np.fromfile(os.path.join(d, "p.f32"), dtype=np.float32).reshape(B * T, V).astype(np.float64)
    q = np.fromfile(os.path.join(d, "q.f32"), dtype=np.float32).reshape(B * T, V).astype(np.float64)
    labels = np.fromfile(os.path.join(d, "labels.i64"), dtype=np.int64).reshape(B * T)
    mask = np.fromfile(os.path.join(d, "mask.u8"), dtype=np.uint8).reshape(B * T).astype(bool)
    return statistics(p[mask], q[mask], labels[mask])


def from_model(model_path, windows_path, variant):
    import torch

    # Run as a script (tests call it by path), so its own folder is first on sys.path.
    from quantized_perplexity import quantizer

    extra = {"quantppl.json": ""}
    module = torch.jit.load(model_path, _extra_files=extra).eval()
    meta = json.loads(extra["quantppl.json"])
    with open(windows_path, encoding="utf-8") as f:
        windows = json.load(f)

    def logits_of_every_window():
        out = []
        for w in windows:
            ids = torch.tensor([w], dtype=torch.int64)
            dec = torch.tensor([[meta["decoder_start_token_id"]] + w[:-1]], dtype=torch.int64)
            out.append(module(ids, torch.ones_like(ids), dec)[0].double().numpy())
        return np.concatenate(out)

    with torch.no_grad():
        p = logits_of_every_window()
        fq = quantizer(variant)
        if fq is not None:
            for _, sub in module.named_modules():
                if sub.original_name == "Linear":
                    sub.weight.copy_(fq(sub.weight))
        q = logits_of_every_window()
    labels = np.array([t for w in windows for t in w], dtype=np.int64)
    return statistics(p, q, labels)


def main():
    args = sys.argv[1:]
    if args and args[0] == "--model":
        opts = dict(zip(args[0::2], args[1::2]))
        out = from_model(opts["--model"], opts["--windows"], opts["--variant"])
    else:
        out = from_raw_files(args[0])
    print(json.dumps(out))


if __name__ == "__main__":
    main()
