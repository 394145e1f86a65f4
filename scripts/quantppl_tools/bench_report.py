"""One table of the performance targets (issue 8) from the files of one scripts/bench.sh run.

usage: /usr/bin/python3 scripts/bench_report.py RUN_DIR [--json OUT.json]
       /usr/bin/python3 scripts/bench_report.py --machine-json OUT.json [--binary build/quantppl]

RUN_DIR holds what scripts/bench.sh wrote (every file is optional; a target whose inputs are
missing is shown as "not measured"):
  machine.json             machine description (--machine-json)
  bench.json               build/quantppl_bench --benchmark_format=json output (Google Benchmark)
  sgemm_t{T}.{start,end}.json   GEMM rate of torch.mm (python_baseline.py --sgemm) at the start and end
  compare_b{B}_t{T}[.rN].json   quantppl compare --variants fp32 --format json (one per repetition)
  python_b{B}_t{T}[.mM][.rN].json   python_baseline.py output (M: malloc tunables on/off)
  variants.json            compare with N variants (fp32 first), same text/B/T as compare_b8_t2
  rss_<tag>.json/.kb       compare on the default text (x1), a 4x longer one (x4), x1 at B=8 (x1b8),
                           x1 with --backup file (x1file); .kb = peak RSS (KiB)
  static.kb                peak RSS of `quantppl --version` (LibTorch's static footprint)
  xl.json/.kb/.seconds     compare on the T5-XL-shaped model; xl_build.kb/.seconds the model build
  tutorial_{1k,7k}.rN.json/.seconds   the seed tutorial's pipeline (quantppl_tools.tutorial_baseline run)
  startup_{1k,7k}.rN.json/.seconds    quantppl compare --variants fp32,absmax:8,zeropoint:8, same text and
                           threads; .seconds = wall time of the whole process
  methods.json             build/quantppl_method_bench output (calibration, GPTQ, AWQ seconds)
  gptq_reference.json      bench/gptq_reference_bench.py output (the Python reference GPTQ's seconds)

Targets and how each ratio is formed:
  1 fake-quant     real time of BM_FakeQuantize/<variant>/threads:T over BM_CopyLinearWeights/threads:T;
                   <= 1.5 for per-tensor and per-channel min-max variants; group, percentile and MSE
                   variants are reported without a target; also the reference (unfused) time over the
                   fused, and BM_ApplyVariantParams (re-applying stored parameters, what compare does
                   per batch and variant).
  2 restore        BM_RestoreWeights over BM_CopyLinearWeights, <= 1.10 ("about one copy").
  3 throughput     compare's fp32 tokens/s (results[0].tokens / results[0].seconds) over the Python
                   baseline's (>= 1.0), and over the GEMM bound = sgemm FLOP/s (the best of
                   BM_Sgemm/threads:T's flops_per_second and the torch.mm measurements of the run)
                   / model FLOPs per label token (scripts/model_flops.py,
                   over the text's windows) (>= 0.75 at 1 thread, >= 0.60 at 2), for B in {1, 8},
                   T in {1, 2}. With repetitions, each side takes its best run (the highest tokens/s:
                   on a shared machine interference only slows a run down); the Python side also
                   its best malloc setting.
  4 N variants     sum of the seconds of all N rows of variants.json over N x the fp32 seconds of the
                   fastest fp32-only run (same text, B, T), <= 1.02; also over N x its own fp32 row.
  5 memory         peak RSS over 1.25 x (fp32 model bytes + Linear weight bytes), <= 1 (fp32 model
                   bytes: the tensor storages in the archive); and the peak RSS of the 4x text over
                   the 1x text, <= 1.05 (independent of text length);
                   T5-XL: peak RSS <= 24 GB.
  6 startup        BM_LoadContractModel over BM_JitLoad, <= 1.2.
  7 format / copy  (issue 14) BM_FormatFakeQuantize/<spec>/threads:T (every example spec of every row
                   of the format table but percentile/MSE searches: choose parameters + fake-quantize
                   every Linear weight) over BM_CopyLinearWeights/threads:T, <= 2.
  8 hqq / copy     (issue 16) BM_Hqq/<spec>/threads:T (HQQ's zero-point search with hqq_prepare, then x_hat
                   written, for every Linear weight) over BM_CopyLinearWeights/threads:T, <= 20; the
                   detail shows the mean HQQ iterations per weight.
  6 vs tutorial    (issue 13) median wall seconds of the tutorial pipeline's whole process over
                   quantppl compare's, same model, text and threads: >= 1.15 on the ~1,000-token text,
                   >= 1.0 on the ~7,000-token text. The detail shows both medians and how far the
                   fp32 perplexities of the two sides differ (same weights and token ids: ~1e-5).
  8 GPTQ           (issue 15) methods.json (build/quantppl_method_bench): the calibration pass
                   (16,384 tokens of data/calibration.txt; --quick: 2,048) plus GPTQ of every Linear
                   layer (absmax:4:group128), natural order and actorder, <= 180 s each; and the
                   Python reference GPTQ (bench/gptq_reference_bench.py -> gptq_reference.json, same
                   Hessians, natural order) over quantppl's GPTQ alone, >= 1.0. The detail shows how
                   far the per-layer e of the two differ (largest relative difference).
  9 AWQ            (issue 16) methods.json: AWQ's search over every layer group (absmax:4:group128,
                   20 alphas), after calibration, <= 30 s.
"""

import argparse
import glob
import json
import os
import platform
import re
import subprocess
import sys
import zipfile

from . import model_flops
from .paths import REPO

FAKE_QUANT_LIMIT = 1.5
FORMAT_LIMIT = 2.0
HQQ_LIMIT = 20.0
RESTORE_LIMIT = 1.10
PYTHON_LIMIT = 1.0
GEMM_LIMITS = {1: 0.75, 2: 0.60}
VARIANTS_LIMIT = 1.02
RSS_FACTOR = 1.25
RSS_LENGTH_LIMIT = 1.05
XL_RSS_LIMIT_BYTES = 24 * 1024 ** 3
STARTUP_LIMIT = 1.2
TUTORIAL_LIMITS = {"1k": 1.15, "7k": 1.0}
GPTQ_TOTAL_LIMIT = 180.0
GPTQ_REFERENCE_LIMIT = 1.0
AWQ_LIMIT = 30.0

_UNIT = {"ns": 1e-9, "us": 1e-6, "ms": 1e-3, "s": 1.0}
_THREADS = re.compile(r"^threads:(\d+)$")


# ---------------------------------------------------------------------------------------------
# Google Benchmark JSON
# ---------------------------------------------------------------------------------------------

_DECORATION = re.compile(r"^(real_time|manual_time|process_time|(iterations|repeats|min_time|min_warmup_time):.*)$")


def parse_benchmark_name(name):
    """'BM_FakeQuantize/absmax:4:channel/threads:2/real_time' -> ('BM_FakeQuantize', 'absmax:4:channel', 2).

    Google Benchmark's own decorations (real_time, iterations:N, ...) are dropped; threads:N is
    the thread count."""
    base, *parts = name.split("/")
    threads = None
    args = []
    for part in parts:
        m = _THREADS.match(part)
        if m:
            threads = int(m.group(1))
        elif not _DECORATION.match(part):
            args.append(part)
    return base, "/".join(args) or None, threads


def _median(xs):
    xs = sorted(xs)
    n = len(xs)
    return xs[n // 2] if n % 2 else 0.5 * (xs[n // 2 - 1] + xs[n // 2])


def load_google_benchmark(path):
    """{run name: {"seconds": real time per iteration, "counters": {...}}}.

    With repetitions the median aggregate is used when present, else the median of the
    iteration entries of that name."""
    with open(path, encoding="utf-8") as f:
        doc = json.load(f)
    standard = {"name", "run_name", "run_type", "repetitions", "repetition_index", "threads", "iterations",
                "real_time", "cpu_time", "time_unit", "aggregate_name", "aggregate_unit", "family_index",
                "per_family_instance_index", "label", "error_occurred", "error_message"}
    medians, runs = {}, {}
    for b in doc.get("benchmarks", []):
        if b.get("error_occurred"):
            continue
        run_name = b.get("run_name", b["name"])
        entry = {"seconds": b["real_time"] * _UNIT.get(b.get("time_unit", "ns"), 1e-9),
                 "counters": {k: v for k, v in b.items() if k not in standard and isinstance(v, (int, float))}}
        if b.get("run_type") == "aggregate":
            if b.get("aggregate_name") == "median":
                medians[run_name] = entry
        else:
            runs.setdefault(run_name, []).append(entry)
    out = {}
    for name, entries in runs.items():
        counters = {}
        for k in entries[0]["counters"]:
            counters[k] = _median([e["counters"].get(k, 0.0) for e in entries])
        out[name] = {"seconds": _median([e["seconds"] for e in entries]), "counters": counters}
    out.update(medians)
    return out


def variant_kind(spec):
    """'tensor' / 'channel' (the fake-quant target applies) or 'group' / 'percentile' / 'mse'."""
    parts = spec.split(":")
    gran = parts[2] if len(parts) > 2 else "tensor"
    rng = parts[3] if len(parts) > 3 else "minmax"
    if rng == "mse":
        return "mse"
    if rng.startswith("p"):
        return "percentile"
    if gran.startswith("group"):
        return "group"
    return gran


# ---------------------------------------------------------------------------------------------
# Rows
# ---------------------------------------------------------------------------------------------

class Row:
    def __init__(self, target, config, value, limit, op, note="", fmt="%.3f"):
        self.target, self.config, self.value, self.limit, self.op, self.note, self.fmt = (
            target, config, value, limit, op, note, fmt)

    @property
    def status(self):
        if self.value is None:
            return "n/a"
        if self.limit is None:
            return "info"
        ok = self.value <= self.limit if self.op == "<=" else self.value >= self.limit
        return "PASS" if ok else "FAIL"

    def cells(self):
        value = "not measured" if self.value is None else (self.fmt % self.value)
        limit = "-" if self.limit is None else "%s %s" % (self.op, self.fmt % self.limit)
        return [self.target, self.config, value, limit, self.status, self.note]

    def as_dict(self):
        return {"target": self.target, "config": self.config, "value": self.value, "limit": self.limit,
                "op": self.op, "status": self.status, "note": self.note}


def fake_quant_rows(gb):
    rows = []
    copies = {t: e["seconds"] for n, e in gb.items() for (base, _, t) in [parse_benchmark_name(n)]
              if base == "BM_CopyLinearWeights"}
    fused, refs, applies = {}, {}, {}
    for n, e in gb.items():
        base, variant, t = parse_benchmark_name(n)
        if base == "BM_FakeQuantize" and variant:
            fused[(variant, t)] = e["seconds"]
        elif base == "BM_FakeQuantizeReference" and variant:
            refs[(variant, t)] = e["seconds"]
        elif base == "BM_ApplyVariantParams" and variant:
            applies[(variant, t)] = e["seconds"]
    for (variant, t) in sorted(fused, key=lambda k: (k[1] or 0, k[0])):
        copy = copies.get(t)
        kind = variant_kind(variant)
        limit = FAKE_QUANT_LIMIT if kind in ("tensor", "channel") else None
        note = "%.1f ms vs copy %.1f ms" % (1e3 * fused[(variant, t)], 1e3 * copy) if copy else "no BM_CopyLinearWeights"
        if (variant, t) in refs:
            note += "; reference %.1fx slower" % (refs[(variant, t)] / fused[(variant, t)])
        if (variant, t) in applies:
            note += "; applying stored params %.1f ms" % (1e3 * applies[(variant, t)])
            if copy:
                note += " (%.2fx copy)" % (applies[(variant, t)] / copy)
        rows.append(Row("1 fake-quant / copy", "%s, %s thr" % (variant, t), fused[(variant, t)] / copy if copy else None,
                        limit, "<=", note))
    if not fused:
        rows.append(Row("1 fake-quant / copy", "-", None, FAKE_QUANT_LIMIT, "<=", "no BM_FakeQuantize results"))
    restores = {t: e["seconds"] for n, e in gb.items() for (base, _, t) in [parse_benchmark_name(n)]
                if base == "BM_RestoreWeights"}
    for t in sorted(restores, key=lambda x: x or 0):
        copy = copies.get(t)
        rows.append(Row("2 restore / copy", "%s thr" % t, restores[t] / copy if copy else None, RESTORE_LIMIT, "<=",
                        "%.1f ms" % (1e3 * restores[t])))
    if not restores:
        rows.append(Row("2 restore / copy", "-", None, RESTORE_LIMIT, "<=", "no BM_RestoreWeights results"))
    return rows


def sgemm_rates(gb, run_dir):
    """{threads: (FLOP/s, source)}: the highest rate seen in the run, from BM_Sgemm/threads:T and
    from the torch.mm measurements sgemm_t{T}*.json (same OpenBLAS) taken at the start and the end
    of the run. On a shared machine any measurement can be slowed down by other work; the best
    one is the closest to the machine's real ceiling, and makes the GEMM-bound ratio conservative."""
    found = {}
    for n, e in gb.items():
        base, _, t = parse_benchmark_name(n)
        if base == "BM_Sgemm" and "flops_per_second" in e["counters"]:
            found.setdefault(t, []).append((e["counters"]["flops_per_second"], "BM_Sgemm"))
    for path in glob.glob(os.path.join(run_dir, "sgemm_t*.json")):
        t = int(re.search(r"sgemm_t(\d+)", os.path.basename(path)).group(1))
        found.setdefault(t, []).append((read_json(path)["flops_per_second"], "torch.mm"))
    rates = {}
    for t, seen in found.items():
        rate, source = max(seen)
        others = ", ".join("%.0f" % (r / 1e9) for r, _ in sorted(seen, reverse=True)[1:])
        rates[t] = (rate, source + ("; best of %d, others %s" % (len(seen), others) if others else ""))
    return rates


def read_json(path):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def fp32_rate(doc):
    r = doc["results"][0]
    return r["tokens"] / r["seconds"]


def best(paths, rate):
    """The document with the highest rate among paths, or None."""
    docs = [(rate(d), d, p) for p in paths for d in [read_json(p)]]
    return max(docs, key=lambda x: x[0]) if docs else None


def throughput_rows(run_dir, sgemm):
    rows = []
    configs = sorted({(int(m.group(1)), int(m.group(2)))
                      for p in glob.glob(os.path.join(run_dir, "compare_b*_t*.json"))
                      for m in [re.search(r"compare_b(\d+)_t(\d+)", os.path.basename(p))]})
    flops_cache = {}
    for b, t in configs:
        comp = best(glob.glob(os.path.join(run_dir, "compare_b%d_t%d*.json" % (b, t))), fp32_rate)
        py = best(glob.glob(os.path.join(run_dir, "python_b%d_t%d*.json" % (b, t))), lambda d: d["tokens_per_second"])
        c_rate, c_doc, _ = comp
        cfg = "B=%d, %d thr" % (b, t)
        if py:
            p_rate, p_doc, p_path = py
            note = "%.0f vs %.0f tok/s" % (c_rate, p_rate)
            if p_doc.get("tokens") != c_doc["results"][0]["tokens"]:
                note += "; TOKEN COUNTS DIFFER (%s vs %s)" % (c_doc["results"][0]["tokens"], p_doc.get("tokens"))
            else:
                nll_c = c_doc["results"][0]["nll"] * c_doc["results"][0]["tokens"]
                note += "; NLL rel. diff %.1e" % (abs(nll_c - p_doc["nll_sum"]) / abs(p_doc["nll_sum"]))
            note += "; python malloc tunables %s" % ("on" if p_doc.get("malloc_tunables") else "off")
            if p_doc.get("warmup_seconds") is not None:
                note += ", its %d warm-up batches (untimed) took %.1f s" % (p_doc.get("warmup", 0), p_doc["warmup_seconds"])
            rows.append(Row("3 compare / python", cfg, c_rate / p_rate, PYTHON_LIMIT, ">=", note))
        else:
            rows.append(Row("3 compare / python", cfg, None, PYTHON_LIMIT, ">=", "no python baseline run"))
        key = (c_doc["model"], c_doc["text_tokens"], c_doc["max_length"], c_doc["mode"])
        if key not in flops_cache:
            try:
                mcfg, _ = model_flops.model_config(c_doc["model"])
                flops_cache[key] = model_flops.text_flops_per_token(mcfg, c_doc["text_tokens"], c_doc["max_length"],
                                                                    c_doc["mode"])
            except (OSError, ValueError, KeyError, zipfile.BadZipFile):
                flops_cache[key] = None
        per_token = flops_cache[key]
        limit = GEMM_LIMITS.get(t, GEMM_LIMITS[2])
        if t in sgemm and per_token:
            rate, source = sgemm[t]
            bound = rate / per_token
            rows.append(Row("3 compare / GEMM bound", cfg, c_rate / bound, limit, ">=",
                            "bound %.0f tok/s = %.1f GFLOP/s (%s) / %.1f MFLOP per token; compare %.1f GFLOP/s"
                            % (bound, rate / 1e9, source, per_token / 1e6, c_rate * per_token / 1e9)))
        else:
            rows.append(Row("3 compare / GEMM bound", cfg, None, limit, ">=",
                            "no sgemm rate at %d threads" % t if t not in sgemm else "model FLOPs unknown"))
    if not configs:
        rows.append(Row("3 compare / python", "-", None, PYTHON_LIMIT, ">=", "no compare runs"))
    return rows


def variants_rows(run_dir):
    """Target 4. Primary: the N-variant run's total (sum of its rows' seconds: each variant's own
    work, model loading excluded) over N x the total of the fastest fp32-only run with the same
    text, B and T. Both totals contain the first-call warm-up once, so this is like for like; but
    separate processes vary by 10-25% on a busy machine, more than the 2% margin. Also shown: the
    same run's total over N x its own fp32 row (no process noise, but the fp32 row also carries
    the warm-up, which makes this ratio optimistic)."""
    path = os.path.join(run_dir, "variants.json")
    if not os.path.exists(path):
        return [Row("4 N variants / (N x fp32)", "-", None, VARIANTS_LIMIT, "<=", "not run")]
    doc = read_json(path)
    res = doc["results"]
    n = len(res)
    total = sum(r["seconds"] for r in res)
    fp32 = res[0]["seconds"]
    names = ",".join(r["variant"] for r in res)
    rows = []
    single = glob.glob(os.path.join(run_dir, "compare_b%d_t%d*.json" % (doc["batch_size"], doc["threads"])))
    single = [d for p in single for d in [read_json(p)] if d["text_sha256"] == doc["text_sha256"]]
    cfg = "N=%d, B=%d, %d thr" % (n, doc["batch_size"], doc["threads"])
    if single:
        s = min(d["results"][0]["seconds"] for d in single)
        rows.append(Row("4 N variants / (N x fp32)", cfg + ", vs fp32-only run", total / (n * s), VARIANTS_LIMIT, "<=",
                        "%.1f s for %s; fastest fp32-only run %.1f s (of %d)" % (total, names, s, len(single))))
    else:
        rows.append(Row("4 N variants / (N x fp32)", cfg + ", vs fp32-only run", None, VARIANTS_LIMIT, "<=",
                        "no fp32-only run with the same text, B and T"))
    rows.append(Row("4 N variants / (N x fp32)", cfg + ", same run", total / (n * fp32), None, "<=",
                    "fp32 row %.1f s, includes the warm-up: optimistic" % fp32))
    return rows


def model_bytes(path):
    """Bytes of the tensor storages in a TorchScript archive (each stored once)."""
    with zipfile.ZipFile(path) as z:
        return sum(i.file_size for i in z.infolist() if re.search(r"/data/\d+$", i.filename))


def read_kb(path):
    with open(path, encoding="utf-8") as f:
        lines = [l.strip() for l in f if l.strip()]
    return int(lines[-1]) * 1024  # GNU time %M: KiB


def memory_rows(run_dir):
    """Target 5: every rss_<tag>.json + rss_<tag>.kb pair against the budget; x4 over x1."""
    rows = []
    rss = {}
    for js in sorted(glob.glob(os.path.join(run_dir, "rss_*.json"))):
        tag = os.path.basename(js)[len("rss_"):-len(".json")]
        kb = os.path.join(run_dir, "rss_%s.kb" % tag)
        if os.path.exists(kb):
            rss[tag] = (read_json(js), read_kb(kb))
    budget = None
    for tag, (doc, peak) in sorted(rss.items()):
        if budget is None:
            try:
                mb = model_bytes(doc["model"])
            except (OSError, zipfile.BadZipFile):
                break
            linear = 4 * doc["parameters_quantized"]
            budget = RSS_FACTOR * (mb + linear)
        rows.append(Row("5 peak RSS / budget", "text %s (%d tokens), B=%d, backup %s, %s" % (
            tag, doc["text_tokens"], doc["batch_size"], doc.get("backup", "?"),
            ",".join(r["variant"] for r in doc["results"])),
            peak / budget, 1.0, "<=", "%.0f MiB vs 1.25 x (%.0f + %.0f) = %.0f MiB" % (
                peak / 2 ** 20, mb / 2 ** 20, linear / 2 ** 20, budget / 2 ** 20)))
    static_kb = os.path.join(run_dir, "static.kb")
    if budget is not None and os.path.exists(static_kb) and "x1" in rss:
        static = read_kb(static_kb)
        rows.append(Row("5 (peak - static) / budget", "text x1, B=%d" % rss["x1"][0]["batch_size"],
                        (rss["x1"][1] - static) / budget, 1.0, "<=",
                        "LibTorch's static footprint (quantppl --version) %.0f MiB left out" % (static / 2 ** 20)))
    if "x1" in rss and "x4" in rss:
        rows.append(Row("5 RSS 4x text / 1x text", "%d vs %d tokens" % (rss["x4"][0]["text_tokens"],
                                                                       rss["x1"][0]["text_tokens"]),
                        rss["x4"][1] / rss["x1"][1], RSS_LENGTH_LIMIT, "<=", "independent of text length"))
    if not rows:
        rows.append(Row("5 peak RSS / budget", "-", None, 1.0, "<=", "not run"))
    xl_kb = os.path.join(run_dir, "xl.kb")
    if os.path.exists(xl_kb):
        peak = read_kb(xl_kb)
        note = "%.2f GiB" % (peak / 2 ** 30)
        sec = os.path.join(run_dir, "xl.seconds")
        if os.path.exists(sec):
            with open(sec) as f:
                note += ", %.0f s wall" % float(f.read().split()[-1])
        xl_json = os.path.join(run_dir, "xl.json")
        ok = os.path.exists(xl_json) and os.path.getsize(xl_json) > 0
        if ok:
            d = read_json(xl_json)
            note += ", %d tokens, variants %s" % (d["results"][0]["tokens"], ",".join(r["variant"] for r in d["results"]))
        else:
            note += ", compare FAILED (see xl.err)"
        rows.append(Row("5 T5-XL peak RSS (GiB)", "3B params", peak / 2 ** 30 if ok else None,
                        XL_RSS_LIMIT_BYTES / 2 ** 30, "<=", note, fmt="%.2f"))
    build_kb = os.path.join(run_dir, "xl_build.kb")
    if os.path.exists(build_kb):
        note = ""
        sec = os.path.join(run_dir, "xl_build.seconds")
        if os.path.exists(sec):
            with open(sec) as f:
                note = "%.0f s wall" % float(f.read().split()[-1])
        rows.append(Row("   T5-XL build peak RSS (GiB)", "make_bench_models.py", read_kb(build_kb) / 2 ** 30, None, "<=",
                        note, fmt="%.2f"))
    return rows


def startup_rows(gb):
    jit = [e["seconds"] for n, e in gb.items() if parse_benchmark_name(n)[0] == "BM_JitLoad"]
    ours = [e["seconds"] for n, e in gb.items() if parse_benchmark_name(n)[0] == "BM_LoadContractModel"]
    if not jit or not ours:
        return [Row("6 load / jit::load", "-", None, STARTUP_LIMIT, "<=", "no BM_JitLoad / BM_LoadContractModel")]
    return [Row("6 load / jit::load", "model + tokenizer", ours[0] / jit[0], STARTUP_LIMIT, "<=",
                "%.0f ms vs %.0f ms" % (1e3 * ours[0], 1e3 * jit[0]))]


def read_seconds(path):
    try:
        with open(path, encoding="utf-8") as f:
            return float(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def tutorial_rows(run_dir):
    """Whole-process wall time of the seed tutorial's pipeline over quantppl compare's (medians)."""
    rows = []
    for tag, limit in sorted(TUTORIAL_LIMITS.items()):
        sides = {}
        for side in ("tutorial", "startup"):
            runs = sorted(glob.glob(os.path.join(run_dir, "%s_%s.r*.json" % (side, tag))))
            sides[side] = [(p, read_seconds(p[:-len(".json")] + ".seconds")) for p in runs]
            sides[side] = [(p, s) for p, s in sides[side] if s is not None]
        config = "text %s, fp32+absmax:8+zeropoint:8" % tag
        if not sides["tutorial"] or not sides["startup"]:
            rows.append(Row("6 tutorial / quantppl", config, None, limit, ">=", "not run"))
            continue
        base = _median([s for _, s in sides["tutorial"]])
        ours = _median([s for _, s in sides["startup"]])
        tut, cmp = read_json(sides["tutorial"][0][0]), read_json(sides["startup"][0][0])
        ppl_ours = {r["variant"]: r["ppl"] for r in cmp.get("results", [])}
        ppl_tut = tut.get("perplexity", {})
        diffs = ["%s %.1e" % (v, abs(ppl_tut[v] / ppl_ours[v] - 1)) for v in ("fp32", "absmax:8", "zeropoint:8")
                 if v in ppl_tut and v in ppl_ours]
        note = "%.2f s vs %.2f s (medians of %d/%d), %d tokens, %s thr; ppl rel. diff %s" % (
            base, ours, len(sides["tutorial"]), len(sides["startup"]), cmp.get("text_tokens", 0),
            cmp.get("threads", "?"), ", ".join(diffs) or "?")
        rows.append(Row("6 tutorial / quantppl", config, base / ours, limit, ">=", note))
    return rows


def method_rows(run_dir):
    """Targets 8 and 9: GPTQ (calibration included) and AWQ's search, from methods.json."""
    path = os.path.join(run_dir, "methods.json")
    if not os.path.exists(path):
        return [Row("8 GPTQ calib+all layers", "-", None, GPTQ_TOTAL_LIMIT, "<=", "not run"),
                Row("8 Python ref / GPTQ", "-", None, GPTQ_REFERENCE_LIMIT, ">=", "not run"),
                Row("9 AWQ search", "-", None, AWQ_LIMIT, "<=", "not run")]
    m = read_json(path)
    config = "%s, %d layers, %d tok, %s thr" % (m["spec"], m["layers"], m["calibration_tokens"], m["threads"])
    rows = []
    for key, label in (("gptq", "natural"), ("gptq_actorder", "actorder")):
        if m.get(key + "_seconds", -1) < 0:
            continue
        cpu = m.get("cpu_seconds", {})
        note = "calibration %.1f s + GPTQ %.1f s" % (m["calibration_seconds"], m[key + "_seconds"])
        if key in cpu:
            note += " (CPU %.1f s + %.1f s)" % (cpu["calibration"], cpu[key])
        rows.append(Row("8 GPTQ calib+all layers", "%s, %s" % (config, label), m[key + "_total_seconds"],
                        GPTQ_TOTAL_LIMIT, "<=", note, fmt="%.1f"))
    ref_path = os.path.join(run_dir, "gptq_reference.json")
    if os.path.exists(ref_path):
        ref = read_json(ref_path)
        ours = dict(zip(m["layer_names"], m["gptq_relative_errors"]))
        ours_seconds = dict(zip(m["layer_names"], m["gptq_layer_seconds"]))
        common = [n for n in ref["layer_names"] if n in ours]
        ours_total = sum(ours_seconds[n] for n in common)
        diffs = [abs(e / ours[n] - 1) for n, e in zip(ref["layer_names"], ref["relative_errors"])
                 if n in ours and ours[n] > 0]
        note = ("reference %.1f s vs quantppl %.1f s on the same %d layers (GPTQ only, natural order); "
                "e differs by <= %.2g%%" % (ref["seconds"], ours_total, len(common),
                                            100 * max(diffs) if diffs else float("nan")))
        if "cpu_seconds" in ref and "gptq" in m.get("cpu_seconds", {}) and len(common) == len(m["layer_names"]):
            note += "; CPU %.1f s vs %.1f s" % (ref["cpu_seconds"], m["cpu_seconds"]["gptq"])
        rows.append(Row("8 Python ref / GPTQ", "%s, natural" % config,
                        ref["seconds"] / ours_total if ours_total > 0 else None, GPTQ_REFERENCE_LIMIT, ">=", note))
    else:
        rows.append(Row("8 Python ref / GPTQ", config, None, GPTQ_REFERENCE_LIMIT, ">=", "reference not run"))
    rows.append(Row("9 AWQ search", "%s, %d groups" % (config, m["awq_groups"]), m["awq_seconds"], AWQ_LIMIT, "<=",
                    "after calibration (%.1f s)%s" % (m["calibration_seconds"], "; CPU %.1f s" % m["cpu_seconds"]["awq"]
                                                      if "awq" in m.get("cpu_seconds", {}) else ""), fmt="%.1f"))
    return rows


# ---------------------------------------------------------------------------------------------
# Machine
# ---------------------------------------------------------------------------------------------

def describe_machine(binary=None):
    info = {"cpu": None, "logical_cpus": os.cpu_count(), "physical_cores": None, "ram_gib": None,
            "blas": None, "kernel": platform.release(), "openblas_coretype": os.environ.get("OPENBLAS_CORETYPE")}
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            text = f.read()
        names = re.findall(r"^model name\s*:\s*(.*)$", text, re.M)
        info["cpu"] = names[0].strip() if names else None
        cores = {(p, c) for p, c in re.findall(r"^physical id\s*:\s*(\d+)$.*?^core id\s*:\s*(\d+)$", text, re.M | re.S)}
        info["physical_cores"] = len(cores) or None
        flags = re.search(r"^flags\s*:\s*(.*)$", text, re.M)
        if flags:
            fl = set(flags.group(1).split())
            info["simd"] = " ".join(x for x in ("avx2", "fma", "avx512f") if x in fl)
    except OSError:
        pass
    try:
        with open("/proc/meminfo", encoding="utf-8") as f:
            m = re.search(r"^MemTotal:\s*(\d+) kB", f.read(), re.M)
            info["ram_gib"] = round(int(m.group(1)) / 2 ** 20, 1) if m else None
    except OSError:
        pass
    if binary and os.path.exists(binary):
        try:
            ldd = subprocess.run(["ldd", binary], capture_output=True, text=True, timeout=30).stdout
            m = re.search(r"libblas\.so\S*\s*=>\s*(\S+)", ldd)
            if m:
                real = os.path.realpath(m.group(1))
                kind = "OpenBLAS" if "openblas" in real else ("MKL" if "mkl" in real else "BLAS")
                info["blas"] = "%s (%s)" % (kind, real)
            elif "openblas" in ldd:
                info["blas"] = "OpenBLAS"
        except (OSError, subprocess.SubprocessError):
            pass
    return info


# ---------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------

def format_rows(gb):
    """Target 7: each format-table example's fused fake-quantize over the copy (see the module doc)."""
    copies = {t: e["seconds"] for n, e in gb.items() for (base, _, t) in [parse_benchmark_name(n)]
              if base == "BM_CopyLinearWeights"}
    timed = {}
    for n, e in gb.items():
        base, spec, t = parse_benchmark_name(n)
        if base == "BM_FormatFakeQuantize" and spec:
            timed[(spec, t)] = e["seconds"]
    rows = []
    for (spec, t) in sorted(timed, key=lambda k: (k[1] or 0, k[0])):
        copy = copies.get(t)
        fields = spec.split(":")
        searched = any(f == "mse" or re.fullmatch(r"p[0-9.]+", f) for f in fields[1:])
        note = "%.1f ms vs copy %.1f ms" % (1e3 * timed[(spec, t)], 1e3 * copy) if copy else "no BM_CopyLinearWeights"
        rows.append(Row("7 format / copy", "%s, %s thr" % (spec, t), timed[(spec, t)] / copy if copy else None,
                        None if searched else FORMAT_LIMIT, "<=", note))
    if not timed:
        rows.append(Row("7 format / copy", "-", None, FORMAT_LIMIT, "<=", "no BM_FormatFakeQuantize results"))
    return rows


def hqq_rows(gb):
    """Target 8: HQQ on every Linear weight over the copy (see the module doc)."""
    copies = {t: e["seconds"] for n, e in gb.items() for (base, _, t) in [parse_benchmark_name(n)]
              if base == "BM_CopyLinearWeights"}
    timed = {}
    for n, e in gb.items():
        base, spec, t = parse_benchmark_name(n)
        if base == "BM_Hqq" and spec:
            timed[(spec, t)] = e
    rows = []
    for (spec, t) in sorted(timed, key=lambda k: (k[1] or 0, k[0])):
        seconds = timed[(spec, t)]["seconds"]
        copy = copies.get(t)
        note = "%.1f ms vs copy %.1f ms" % (1e3 * seconds, 1e3 * copy) if copy else "no BM_CopyLinearWeights"
        iters = timed[(spec, t)]["counters"].get("mean_iterations")
        if iters is not None:
            note += "; %.1f HQQ iterations per weight" % iters
        rows.append(Row("10 hqq / copy", "%s, %s thr" % (spec, t), seconds / copy if copy else None, HQQ_LIMIT, "<=",
                        note))
    if not timed:
        rows.append(Row("10 hqq / copy", "-", None, HQQ_LIMIT, "<=", "no BM_Hqq results"))
    return rows


def collect(run_dir):
    gb_path = os.path.join(run_dir, "bench.json")
    gb = load_google_benchmark(gb_path) if os.path.exists(gb_path) else {}
    rows = fake_quant_rows(gb)
    rows += throughput_rows(run_dir, sgemm_rates(gb, run_dir))
    rows += variants_rows(run_dir)
    rows += memory_rows(run_dir)
    rows += startup_rows(gb)
    rows += tutorial_rows(run_dir)
    rows += format_rows(gb)
    rows += method_rows(run_dir)
    rows += hqq_rows(gb)
    return rows


def format_table(rows):
    header = ["target", "configuration", "measured", "target value", "result", "detail"]
    cells = [header] + [r.cells() for r in rows]
    widths = [max(len(c[i]) for c in cells) for i in range(len(header) - 1)]
    lines = []
    for k, c in enumerate(cells):
        lines.append("  ".join(c[i].ljust(widths[i]) for i in range(len(widths))) + "  " + c[-1])
        if k == 0:
            lines.append("  ".join("-" * w for w in widths) + "  " + "-" * 6)
    return "\n".join(lines)


def machine_lines(run_dir):
    path = os.path.join(run_dir, "machine.json")
    m = read_json(path) if os.path.exists(path) else describe_machine()
    libtorch = None
    for p in sorted(glob.glob(os.path.join(run_dir, "compare_*.json"))):
        libtorch = read_json(p).get("libtorch_version")
        break
    parts = ["CPU %s" % m.get("cpu"), "%s logical CPUs" % m.get("logical_cpus")]
    if m.get("physical_cores"):
        parts.append("%s cores" % m["physical_cores"])
    if m.get("simd"):
        parts.append(m["simd"])
    parts.append("RAM %s GiB" % m.get("ram_gib"))
    parts.append("LibTorch %s" % (libtorch or m.get("libtorch_version") or "?"))
    parts.append("BLAS %s" % (m.get("blas") or "?"))
    if m.get("openblas_coretype"):
        parts.append("OPENBLAS_CORETYPE=%s" % m["openblas_coretype"])
    lines = ["machine: " + ", ".join(parts)]
    loads = []
    for tag in ("before", "after"):
        path = os.path.join(run_dir, "loadavg." + tag)
        if os.path.exists(path):
            with open(path) as f:
                loads.append("%s %s" % (tag, " ".join(f.read().split()[:3])))
    if loads:
        lines.append("load average (1/5/15 min) %s: other work on the machine slows every run" % ", ".join(loads))
    return lines


def main(argv=None):
    ap = argparse.ArgumentParser(prog="bench_report", description="One table of the performance targets.")
    ap.add_argument("run_dir", nargs="?", metavar="RUN_DIR")
    ap.add_argument("--json", metavar="OUT.json", help="also write the rows as JSON")
    ap.add_argument("--machine-json", metavar="OUT.json", help="write the machine description and exit")
    ap.add_argument("--binary", default=os.path.join(REPO, "build", "quantppl"),
                    help="binary whose BLAS library is reported (default build/quantppl)")
    args = ap.parse_args(argv)
    if args.machine_json:
        with open(args.machine_json, "w", encoding="utf-8") as f:
            json.dump(describe_machine(args.binary), f, indent=2, sort_keys=True)
        return 0
    if not args.run_dir or not os.path.isdir(args.run_dir):
        ap.error("RUN_DIR must be a directory written by scripts/bench.sh")
    rows = collect(args.run_dir)
    print("\n".join(machine_lines(args.run_dir)))
    print()
    print(format_table(rows))
    counts = {s: sum(1 for r in rows if r.status == s) for s in ("PASS", "FAIL", "n/a")}
    print()
    print("%d pass, %d fail, %d not measured (run directory %s)" % (counts["PASS"], counts["FAIL"], counts["n/a"],
                                                                  args.run_dir))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump({"rows": [r.as_dict() for r in rows], "machine": machine_lines(args.run_dir)}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
