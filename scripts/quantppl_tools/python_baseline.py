"""The Python/LibTorch baseline of `quantppl compare --variants fp32`: the same forward passes,
in Python, in its best configuration. It is what the compare throughput target is measured against.

usage: /usr/bin/python3 scripts/python_baseline.py MODEL TEXT --batch-size B --threads T
           [--max-length L] [--mode reconstruct|prefix] [--warmup N] [--malloc-tunables on|off]
       /usr/bin/python3 scripts/python_baseline.py - - --threads T --sgemm

Same work as compare's fp32 pass:
  * tokens: the text split at line ends (a line over 64 KiB cut at its last whitespace, or at
    a UTF-8 character boundary), each piece encoded by the model's own sentencepiece model
    (the archive's tokenizer.model), EOS appended once (src/text_windows.cpp);
  * windows: consecutive cuts of at most L tokens (L = the model's max_length by default);
  * batches: examples sorted by length, longest first (stable), B at a time, right-padded with
    pad_token_id, attention_mask 0 on padding, decoder input = [decoder_start] + labels[:-1]
    (src/perplexity.cpp's make_batches);
  * NLL: -log_softmax(logits)[label] in float32, 512 positions at a time, summed in double over
    the real label positions: the same quantity as perplexity.h's token_nll (which computes it
    as logsumexp - z[label] in one fused pass, without the log_softmax copy; the two agree to
    ~1e-7 relative), computed the way a Python loop would.

Configuration (what makes it fast here, see ../shared/notes/performance-measurements.md):
torch.inference_mode(); torch.set_num_threads(T); OMP_WAIT_POLICY=PASSIVE and
OPENBLAS_NUM_THREADS=T in the environment (both are read when the libraries load, so the
script re-executes itself once with them set unless they are already set); the glibc malloc
tunables `glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=17179869184` (no fresh pages per
large temporary) with --malloc-tunables on, the default because it was the faster setting on
the 2-core machine (flan-t5-small shape, 17,349 tokens, tok/s on vs off: B=1 1 thread 736 vs
544, B=1 2 threads 1245 vs 778, B=8 1 thread 725 vs 476, B=8 2 threads 651 vs 436);
scripts/bench.sh still tries both once and keeps the faster. A
GLIBC_TUNABLES already set in the environment is left alone. Also tried, and no faster (within
+-8%, noise): torch.jit.freeze, the legacy graph executor, the graph optimizer off.

Timing: the first --warmup batches (default 2) are run once first (the TorchScript profiling
executor optimises the graph during the first calls; their time is reported apart as
warmup_seconds), then forward + NLL over ALL batches is timed with time.perf_counter. Output:
one JSON object on stdout:
  {tokens, seconds, tokens_per_second, nll_sum, batch_size, threads, warmup, warmup_seconds, text_tokens,
   windows, batches, max_length, mode, malloc_tunables, openblas_threads, omp_wait_policy, torch_version}
tokens counts label tokens (= compare's results[*].tokens), text_tokens and windows equal
compare's fields of the same names.
"""

import argparse
import json
import os
import sys
import time

from .reexec import reexec_with

PROG = "python_baseline"
MALLOC_TUNABLES = "glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=17179869184"
MAX_PIECE_BYTES = 64 * 1024  # src/text_windows.cpp's kMaxPieceBytes
NLL_ROWS_PER_CHUNK = 512     # src/perplexity.cpp's kNllRowsPerChunk
_REEXEC_MARK = "QUANTPPL_PYTHON_BASELINE_ENV"
_SPACE = b" \t\n\r\v\f"


def wanted_environment(env, threads, malloc_tunables):
    """The environment variables this run needs that must be set before torch is imported."""
    want = {}
    if "OMP_WAIT_POLICY" not in env:
        want["OMP_WAIT_POLICY"] = "PASSIVE"
    if env.get("OPENBLAS_NUM_THREADS") != str(threads):
        want["OPENBLAS_NUM_THREADS"] = str(threads)
    if malloc_tunables and "GLIBC_TUNABLES" not in env:
        want["GLIBC_TUNABLES"] = MALLOC_TUNABLES
    return want


# ---------------------------------------------------------------------------------------------
# Text -> tokens -> windows (src/text_windows.cpp)
# ---------------------------------------------------------------------------------------------

def text_pieces(data):
    """Byte pieces as tokenize_text cuts them: lines (with their '\\n'); a line longer than
    64 KiB is cut at the last whitespace before the limit, else at a character boundary."""
    pos, n = 0, len(data)
    while pos < n:
        nl = data.find(b"\n", pos)
        end = n if nl < 0 else nl + 1
        if end - pos > MAX_PIECE_BYTES:
            end = pos + MAX_PIECE_BYTES
            cut = end
            while cut > pos and data[cut - 1] not in _SPACE:
                cut -= 1
            if cut == pos:
                cut = end
                while cut > pos and (data[cut] & 0xC0) == 0x80:
                    cut -= 1
            end = cut
        yield data[pos:end]
        pos = end


def tokenize(sp, data, eos_id):
    ids = []
    for piece in text_pieces(data):
        ids.extend(sp.encode(piece.decode("utf-8")))
    ids.append(eos_id)
    return ids


def cut_windows(ids, max_length):
    return [ids[i:i + max_length] for i in range(0, len(ids), max_length)]


# ---------------------------------------------------------------------------------------------
# Windows -> batches (src/perplexity.cpp's make_batches)
# ---------------------------------------------------------------------------------------------

def make_batches(windows, mode, batch_size, meta):
    import torch

    examples = []
    for w, win in enumerate(windows):
        n = len(win)
        if mode == "reconstruct":
            if n >= 1:
                examples.append((w, n, n))
        elif n >= 2:
            examples.append((w, n // 2, n - n // 2))
    if not examples:
        raise ValueError("no window gives a label")
    examples.sort(key=lambda e: -(e[1] + e[2]))  # longest first, stable
    pad, start = meta["pad_token_id"], meta["decoder_start_token_id"]
    batches = []
    for first in range(0, len(examples), batch_size):
        group = examples[first:first + batch_size]
        s = max(e[1] for e in group)
        t = max(e[2] for e in group)
        input_ids = torch.full((len(group), s), pad, dtype=torch.int64)
        attention_mask = torch.zeros((len(group), s), dtype=torch.int64)
        decoder_input_ids = torch.full((len(group), t), pad, dtype=torch.int64)
        labels = torch.full((len(group), t), pad, dtype=torch.int64)
        label_mask = torch.zeros((len(group), t), dtype=torch.bool)
        for r, (w, enc_len, lab_len) in enumerate(group):
            win = windows[w]
            input_ids[r, :enc_len] = torch.tensor(win[:enc_len], dtype=torch.int64)
            attention_mask[r, :enc_len] = 1
            begin = 0 if mode == "reconstruct" else enc_len
            lab = win[begin:begin + lab_len]
            labels[r, :lab_len] = torch.tensor(lab, dtype=torch.int64)
            label_mask[r, :lab_len] = True
            decoder_input_ids[r, :lab_len] = torch.tensor([start] + lab[:-1], dtype=torch.int64)
        batches.append((input_ids, attention_mask, decoder_input_ids, labels, label_mask))
    return batches


# ---------------------------------------------------------------------------------------------
# NLL (perplexity.h (1)-(2))
# ---------------------------------------------------------------------------------------------

def batch_nll_sum(logits, labels, label_mask):
    """sum over real label positions of -log_softmax(logits)[label], float32 terms summed in double."""
    import torch

    vocab = logits.size(2)
    flat = logits.reshape(-1, vocab)
    flat_labels = labels.reshape(-1, 1)
    nll = torch.empty(flat.size(0), dtype=torch.float32)
    for begin in range(0, flat.size(0), NLL_ROWS_PER_CHUNK):
        end = min(flat.size(0), begin + NLL_ROWS_PER_CHUNK)
        nll[begin:end] = torch.log_softmax(flat[begin:end], dim=-1).gather(1, flat_labels[begin:end]).squeeze(1).neg()
    return nll.masked_select(label_mask.reshape(-1)).to(torch.float64).sum().item()


def load_model(path):
    import torch

    extra = {"quantppl.json": "", "tokenizer.model": ""}
    module = torch.jit.load(path, map_location="cpu", _extra_files=extra)
    module.eval()
    return module, json.loads(extra["quantppl.json"]), extra["tokenizer.model"]


def prepare(model_path, text_path, batch_size, max_length=None, mode="reconstruct"):
    """Load the model and build the batches; returns (module, meta, info, batches)."""
    import sentencepiece as spm

    module, meta, tok_bytes = load_model(model_path)
    sp = spm.SentencePieceProcessor()
    sp.LoadFromSerializedProto(tok_bytes)
    with open(text_path, "rb") as f:
        data = f.read()
    if not data.strip():
        raise ValueError("text %s is empty" % text_path)
    length = max_length or meta["max_length"]
    if length > meta["max_length"]:
        raise ValueError("--max-length %d exceeds the model's max_length %d" % (length, meta["max_length"]))
    ids = tokenize(sp, data, meta["eos_token_id"])
    windows = cut_windows(ids, length)
    batches = make_batches(windows, mode, batch_size, meta)
    info = {"text_tokens": len(ids), "windows": len(windows), "batches": len(batches), "max_length": length,
            "mode": mode}
    return module, meta, info, batches


def run(module, batches, warmup):
    """Warm-up on the first `warmup` batches (timed apart), then timed forward + NLL over all
    batches. Returns (tokens, seconds, nll_sum, warmup_seconds)."""
    import torch

    with torch.inference_mode():
        start = time.perf_counter()
        for b in batches[:warmup]:
            batch_nll_sum(module(b[0], b[1], b[2]), b[3], b[4])
        warmup_seconds = time.perf_counter() - start
        tokens, nll_sum = 0, 0.0
        start = time.perf_counter()
        for input_ids, attention_mask, decoder_input_ids, labels, label_mask in batches:
            logits = module(input_ids, attention_mask, decoder_input_ids)
            nll_sum += batch_nll_sum(logits, labels, label_mask)
            tokens += int(label_mask.sum())
        seconds = time.perf_counter() - start
    return tokens, seconds, nll_sum, warmup_seconds


def sgemm_flops_per_second(threads, m=512, k=512, n=2048, min_seconds=1.0):
    """float32 GEMM rate of torch.mm ([m,k] @ [k,n]) at the current thread settings: the
    GEMM-bound fallback when build/quantppl_bench (BM_Sgemm) is not available. Best of 5 runs
    of at least min_seconds / 5 each, after one warm-up call."""
    import torch

    torch.set_num_threads(threads)
    g = torch.Generator().manual_seed(0)
    a = torch.randn(m, k, generator=g)
    b = torch.randn(k, n, generator=g)
    out = torch.empty(m, n)
    torch.mm(a, b, out=out)
    best = 0.0
    for _ in range(5):
        calls, start = 0, time.perf_counter()
        while True:
            torch.mm(a, b, out=out)
            calls += 1
            elapsed = time.perf_counter() - start
            if elapsed >= min_seconds / 5:
                break
        best = max(best, 2.0 * m * k * n * calls / elapsed)
    return best


def main(argv=None):
    ap = argparse.ArgumentParser(prog=PROG, description="Python/LibTorch baseline of quantppl compare's fp32 pass.")
    ap.add_argument("model", metavar="MODEL", help="contract model (.pt)")
    ap.add_argument("text", metavar="TEXT", help="UTF-8 text file")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--max-length", type=int, default=0, help="window length (0: the model's max_length)")
    ap.add_argument("--mode", choices=("reconstruct", "prefix"), default="reconstruct")
    ap.add_argument("--warmup", type=int, default=2, help="untimed warm-up batches (default 2)")
    ap.add_argument("--malloc-tunables", choices=("on", "off"), default="on",
                    help="set GLIBC_TUNABLES=%s (default on)" % MALLOC_TUNABLES)
    ap.add_argument("--sgemm", action="store_true",
                    help="instead: print the float32 GEMM rate of torch.mm (512x512 @ 512x2048) in this "
                         "configuration as {flops_per_second, threads}; MODEL and TEXT are ignored")
    args = ap.parse_args(argv)
    if args.batch_size < 1 or args.threads < 1 or args.max_length < 0 or args.warmup < 0:
        ap.error("--batch-size and --threads must be >= 1, --max-length and --warmup >= 0")

    want = wanted_environment(os.environ, args.threads, args.malloc_tunables == "on")
    if want and os.environ.get(_REEXEC_MARK) != "1":
        env = dict(os.environ, **want)
        env[_REEXEC_MARK] = "1"
        reexec_with(env)

    import torch

    torch.set_num_threads(args.threads)
    if args.sgemm:
        print(json.dumps({"flops_per_second": sgemm_flops_per_second(args.threads), "threads": args.threads,
                          "shape": [512, 512, 2048], "source": "torch.mm (python_baseline.py --sgemm)",
                          "openblas_threads": os.environ.get("OPENBLAS_NUM_THREADS")}, sort_keys=True))
        return 0
    try:
        module, meta, info, batches = prepare(args.model, args.text, args.batch_size, args.max_length or None,
                                              args.mode)
    except (OSError, ValueError, RuntimeError) as e:
        print("%s: error: %s" % (PROG, str(e).strip().splitlines()[0]), file=sys.stderr)
        return 1
    tokens, seconds, nll_sum, warmup_seconds = run(module, batches, args.warmup)
    out = {
        "warmup_seconds": warmup_seconds,
        "tokens": tokens,
        "seconds": seconds,
        "tokens_per_second": tokens / seconds if seconds > 0 else None,
        "nll_sum": nll_sum,
        "batch_size": args.batch_size,
        "threads": args.threads,
        "warmup": min(args.warmup, len(batches)),
        "malloc_tunables": os.environ.get("GLIBC_TUNABLES") == MALLOC_TUNABLES,
        "openblas_threads": os.environ.get("OPENBLAS_NUM_THREADS"),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
        "torch_threads": torch.get_num_threads(),
        "torch_version": torch.__version__,
    }
    out.update(info)
    print(json.dumps(out, indent=2, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
