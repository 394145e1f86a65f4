#!/usr/bin/python3
"""The baseline of GPTQ's speed target (issue 15, item 5): the independent Python reference GPTQ
(tests/reference/gptq_reference.py: numpy, float64, the paper's algorithm without lazy batches) on
every Linear layer of a contract model, with the very Hessians quantppl captured (the statistics
file quantppl_method_bench --stats-out or `quantppl calibrate --output` writes).

usage: gptq_reference_bench.py MODEL STATS [--spec absmax:B:groupG|absmax:B:channel|...]
                               [--threads T] [--act-order] [--include REGEX]
                               [--verbose]

Only the reference's gptq() and its relative error e = tr(dW H dW^T) / tr(W H W^T) are timed
(what quantppl's gptq_quantize computes); loading the model and the file is not. cpu_seconds:
the process CPU time over the loop (reading each layer's arrays included). Prints one JSON
object: seconds, layers, layer_names, relative_errors and layer_seconds (per layer, in the file's
layer order). --include times a subset (scripts/bench.sh --quick: the first encoder block); the
report compares it with quantppl's seconds on the same layers.
"""
import argparse
import json
import os
import re
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)


def parse_spec(spec):
    """absmax|zeropoint:B[:groupG|:channel|:tensor] -> the reference's meta fields."""
    fields = spec.split(":")
    if len(fields) not in (2, 3) or fields[0] not in ("absmax", "zeropoint"):
        raise SystemExit("gptq_reference_bench: --spec must be absmax|zeropoint:B[:groupG|channel|tensor], got %r" % spec)
    meta = {"scheme": fields[0], "bits": int(fields[1]), "granularity": "tensor", "group_size": 0}
    if len(fields) == 3:
        gran = fields[2]
        if gran.startswith("group"):
            meta["granularity"], meta["group_size"] = "group", int(gran[len("group"):])
        elif gran in ("channel", "tensor"):
            meta["granularity"] = gran
        else:
            raise SystemExit("gptq_reference_bench: unknown granularity %r" % gran)
    return meta


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model")
    ap.add_argument("stats")
    ap.add_argument("--spec", default="absmax:4:group128")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--act-order", action="store_true")
    ap.add_argument("--include", default="", metavar="REGEX",
                    help="only the layers whose name matches (re.search); default all")
    ap.add_argument("--verbose", action="store_true", help="one line per layer on stderr")
    args = ap.parse_args()
    # numpy's BLAS (inverse, Cholesky, the products of e) gets the same threads as quantppl.
    os.environ["OPENBLAS_NUM_THREADS"] = str(args.threads)
    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    import numpy as np
    import torch

    sys.path.insert(0, os.path.join(REPO, "tests", "reference"))
    sys.path.insert(0, os.path.join(REPO, "scripts"))
    from gptq_reference import gptq
    from quantppl_tools.calibration_file import read_calibration_file

    torch.set_num_threads(args.threads)
    params = dict(torch.jit.load(args.model, map_location="cpu").named_parameters())
    stats = read_calibration_file(args.stats)
    meta = dict(parse_spec(args.spec), act_order=args.act_order, damp=0.01)
    names, errors, seconds = [], [], []
    total = 0.0
    cpu0 = time.process_time()
    for name in stats["layer_order"]:
        if args.include and not re.search(args.include, name):
            continue
        w = params[name + ".weight"].detach().numpy().astype(np.float64)
        h = stats["layers"][name]["hessian"].astype(np.float64)
        m = dict(meta, out=w.shape[0])
        m["in"] = w.shape[1]
        t0 = time.perf_counter()
        xhat, _ = gptq(w, h, m)
        dw = xhat - w
        e = float(np.sum((dw @ h) * dw)) / float(np.sum((w @ h) * w))
        seconds.append(time.perf_counter() - t0)
        total += seconds[-1]
        names.append(name)
        errors.append(e)
        if args.verbose:
            print("%-50s e %.6g  (%.1f s so far)" % (name, e, total), file=sys.stderr)
    print(json.dumps({"seconds": total, "cpu_seconds": time.process_time() - cpu0, "layers": len(names),
                      "spec": args.spec, "act_order": args.act_order, "threads": args.threads, "layer_names": names, "relative_errors": errors,
                      "layer_seconds": seconds}, indent=1))


if __name__ == "__main__":
    main()
