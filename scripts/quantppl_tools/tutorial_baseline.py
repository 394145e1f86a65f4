"""The seed tutorial's pipeline, as the Python baseline of
`quantppl compare --variants fp32,absmax:8,zeropoint:8` (issue 13, item 6).

usage (the venv's Python, which has transformers; PYTHONPATH=scripts):
  python -m quantppl_tools.tutorial_baseline checkpoint MODEL.pt DIR
  python -m quantppl_tools.tutorial_baseline run DIR TEXT [--threads T] [--max-length 512]

`checkpoint` (untimed preparation) writes a Hugging Face checkpoint directory holding exactly
the weights of a quantppl contract model (for instance the random flan-t5-small-shaped model of
scripts/make_bench_models.py): the TorchScript module's state dict has Hugging Face's parameter
names (scripts/t5_torchscript.py mirrors them), so it loads into a `T5ForConditionalGeneration`
built from the archive's quantppl.json with strict=True; every tensor is then checked bit-equal
with the archive's, and the logits of both modules on a short input are checked to agree. The
archive's tokenizer.model becomes the directory's spiece.model (a `T5Tokenizer`), and the
ids it gives for a text are checked equal to the ids quantppl computes (each line encoded on
its own, EOS appended once: src/text_windows.cpp) -- so both sides evaluate the same weights on
the same token ids.

`run` is the timed pipeline, written as the seed tutorial
(../shared/seeds/naive-quantization-flan-t5-tutorial.txt) writes it:
  * `tokenizer(text, return_tensors='pt')` and `T5ForConditionalGeneration.from_pretrained`;
  * the tutorial's `absmax_quantize` and `zeropoint_quantize`, verbatim, applied to the weight
    of every `nn.Linear` (145 on flan-t5-small, lm_head included: what compare quantizes);
    each variant quantizes the original weights, which are kept (no copy) by reference;
  * perplexity as the tutorial's `calculate_perplexity`: `exp(model(input_ids,
    labels=target_ids).loss)`, one call per window of at most --max-length tokens (512: the
    tutorial's single call cannot take a longer text), the windows cut as quantppl cuts them.
    The per-window perplexities are printed, and the corpus perplexity exp(sum_w n_w loss_w /
    sum_w n_w) (each window's mean loss weighted by its n_w labels), which is the quantity
    quantppl reports.
Its arithmetic is the tutorial's (scale = 127 / max|w|, round(scale w) / scale), not
quantppl's (s = max|w| / 127, round(w / s) * s): quantized perplexities agree with compare's to
a few 1e-4 relative, fp32 perplexities to ~1e-5 (float32 sums in different orders).

Threads: --threads T calls torch.set_num_threads(T). OMP_WAIT_POLICY and OPENBLAS_NUM_THREADS
are read when the libraries load; scripts/bench.sh sets them (PASSIVE, T) in this process's
environment, the settings quantppl applies to itself, so that both sides run T threads.

Output: one JSON object on stdout: {wall_seconds (from the start of this module, imports
included), load_seconds, seconds (per variant), perplexity (per variant, corpus), window_perplexities,
text_tokens, windows, threads, torch_threads, omp_wait_policy, openblas_threads, torch_version,
transformers_version}.
"""

import argparse
import json
import math
import os
import sys
import time

STARTED = time.perf_counter()
PROG = "tutorial_baseline"
VARIANTS = ("fp32", "absmax:8", "zeropoint:8")


# ---------------------------------------------------------------------------------------------
# The tutorial's functions (verbatim but for layout)
# ---------------------------------------------------------------------------------------------

def absmax_quantize(ip):
    import torch

    # Calculate scale
    scale = 127 / torch.max(torch.abs(ip))
    # Quantize
    ip_quant = (scale * ip).round()
    # Dequantize
    ip_dequant = ip_quant / scale
    return ip_quant.to(torch.int8), ip_dequant


def zeropoint_quantize(ip):
    import torch

    # Calculate scale
    ip_range = torch.max(ip) - torch.min(ip)
    ip_range = 1 if ip_range == 0 else ip_range
    scale = 255 / ip_range
    # calculate zeropoint
    zeropoint = (-scale * torch.min(ip) - 128).round()
    # quantize by rounding
    ip_quant = torch.clip((ip * scale + zeropoint).round(), -128, 127)
    # dequantize
    ip_dequant = (ip_quant - zeropoint) / scale
    return ip_quant.to(torch.int8), ip_dequant


def calculate_perplexity(model, tokenizer, text, max_length):
    """The tutorial's calculate_perplexity, one call per window of at most max_length tokens.
    Returns (corpus perplexity, per-window perplexities, token count)."""
    import torch

    # Encode the text
    encodings = tokenizer(text, return_tensors="pt")
    ids = encodings.input_ids
    losses, counts = [], []
    for begin in range(0, ids.size(1), max_length):
        # Define input_ids and target_ids
        input_ids = ids[:, begin:begin + max_length]
        target_ids = input_ids.clone()
        with torch.no_grad():
            # loss, logits, past_key_values, decoder_hidden_states
            negative_log_likelihood = model(input_ids, labels=target_ids).loss
        losses.append(negative_log_likelihood.item())
        counts.append(input_ids.size(1))
    # calculate perplexity (per window, as the tutorial; and over the corpus, as quantppl)
    windows = [math.exp(loss) for loss in losses]
    corpus = math.exp(sum(n * loss for n, loss in zip(counts, losses)) / sum(counts))
    return corpus, windows, ids.size(1)


def run(checkpoint, text_path, threads, max_length):
    import torch
    import transformers
    from transformers import T5ForConditionalGeneration, T5Tokenizer

    torch.set_num_threads(threads)
    transformers.logging.set_verbosity_error()  # a deprecation notice per forward call otherwise
    started = time.perf_counter()
    tokenizer = T5Tokenizer.from_pretrained(checkpoint)
    model = T5ForConditionalGeneration.from_pretrained(checkpoint)
    model.eval()
    with open(text_path, encoding="utf-8") as f:
        text = f.read()
    load_seconds = time.perf_counter() - started

    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    originals = [m.weight.data for m in linears]
    out = {"perplexity": {}, "window_perplexities": {}, "seconds": {}, "load_seconds": load_seconds,
           "linear_layers": len(linears)}
    for variant in VARIANTS:
        started = time.perf_counter()
        if variant != "fp32":
            quantize = absmax_quantize if variant.startswith("absmax") else zeropoint_quantize
            for m, w in zip(linears, originals):
                _, m.weight.data = quantize(w)
        ppl, windows, tokens = calculate_perplexity(model, tokenizer, text, max_length)
        out["perplexity"][variant] = ppl
        out["window_perplexities"][variant] = windows
        out["seconds"][variant] = time.perf_counter() - started
    out.update({
        "text_tokens": tokens,
        "windows": len(out["window_perplexities"]["fp32"]),
        "max_length": max_length,
        "threads": threads,
        "torch_threads": torch.get_num_threads(),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
        "openblas_threads": os.environ.get("OPENBLAS_NUM_THREADS"),
        "glibc_tunables": os.environ.get("GLIBC_TUNABLES"),
        "torch_version": torch.__version__,
        "transformers_version": transformers.__version__,
    })
    out["wall_seconds"] = time.perf_counter() - STARTED
    return out


# ---------------------------------------------------------------------------------------------
# Preparation: contract model -> Hugging Face checkpoint (untimed)
# ---------------------------------------------------------------------------------------------

def quantppl_token_ids(sp, text, eos_id):
    """quantppl's ids for `text` (src/text_windows.cpp): every line, with its '\\n', encoded on its
    own; EOS once at the end. (Lines over 64 KiB, which quantppl cuts further, are rejected here.)"""
    ids = []
    for line in text.splitlines(keepends=True):
        if len(line.encode("utf-8")) > 64 * 1024:
            raise ValueError("a line over 64 KiB: quantppl cuts it differently")
        ids.extend(sp.encode(line))
    return ids + [eos_id]


def make_checkpoint(model_path, out_dir):
    import torch
    from transformers import T5Config, T5ForConditionalGeneration, T5Tokenizer

    extra = {"quantppl.json": "", "tokenizer.model": ""}
    scripted = torch.jit.load(model_path, map_location="cpu", _extra_files=extra)
    meta = json.loads(extra["quantppl.json"])
    if meta.get("architecture") != "t5":
        raise ValueError("%s: architecture %r, expected t5" % (model_path, meta.get("architecture")))
    config = T5Config(vocab_size=meta["vocab_size"], pad_token_id=meta["pad_token_id"],
                      eos_token_id=meta["eos_token_id"], decoder_start_token_id=meta["decoder_start_token_id"],
                      **meta["config"])
    state = scripted.state_dict()
    model = T5ForConditionalGeneration(config)
    model.load_state_dict(state, strict=True)
    model.eval()
    for name, tensor in model.state_dict().items():
        if not torch.equal(tensor, state[name]):
            raise ValueError("parameter %s differs after loading" % name)
    with torch.no_grad():
        ids = torch.randint(2, config.vocab_size, (1, 12), generator=torch.Generator().manual_seed(0))
        mask = torch.ones_like(ids)
        dec = torch.cat([torch.zeros(1, 1, dtype=torch.int64), ids[:, :-1]], dim=1)
        a = scripted(ids, mask, dec)
        b = model(input_ids=ids, attention_mask=mask, decoder_input_ids=dec).logits
        if not torch.allclose(a, b, rtol=1e-4, atol=1e-4):
            raise ValueError("Hugging Face logits differ from the contract model's (max |diff| %g)"
                             % (a - b).abs().max().item())
    os.makedirs(out_dir, exist_ok=True)
    model.save_pretrained(out_dir)
    spiece = os.path.join(out_dir, "spiece.model")
    with open(spiece, "wb") as f:
        f.write(extra["tokenizer.model"] if isinstance(extra["tokenizer.model"], bytes)
                else extra["tokenizer.model"].encode("latin-1"))
    tokenizer = T5Tokenizer(vocab_file=spiece, legacy=True)
    tokenizer.save_pretrained(out_dir)
    return out_dir


def main(argv=None):
    ap = argparse.ArgumentParser(prog=PROG, description="The seed tutorial's pipeline as a Python baseline.")
    sub = ap.add_subparsers(dest="command", required=True)
    ck = sub.add_parser("checkpoint", help="write a Hugging Face checkpoint of a contract model (untimed)")
    ck.add_argument("model", metavar="MODEL.pt")
    ck.add_argument("out", metavar="DIR")
    ck.add_argument("--check-text", metavar="TEXT", action="append", default=[],
                    help="check that the tokenizer gives quantppl's ids for this text (repeatable)")
    rn = sub.add_parser("run", help="the timed pipeline: fp32, absmax:8, zeropoint:8 perplexities")
    rn.add_argument("checkpoint", metavar="DIR")
    rn.add_argument("text", metavar="TEXT")
    rn.add_argument("--threads", type=int, default=1)
    rn.add_argument("--max-length", type=int, default=512)
    args = ap.parse_args(argv)
    try:
        if args.command == "checkpoint":
            make_checkpoint(args.model, args.out)
            for text in args.check_text:
                check_token_ids(args.out, text)
            print(args.out)
            return 0
        if args.threads < 1 or args.max_length < 1:
            ap.error("--threads and --max-length must be >= 1")
        print(json.dumps(run(args.checkpoint, args.text, args.threads, args.max_length), indent=2, sort_keys=True))
        return 0
    except (OSError, ValueError, RuntimeError) as e:
        print("%s: error: %s" % (PROG, str(e).strip().splitlines()[0]), file=sys.stderr)
        return 1


def check_token_ids(out_dir, text_path):
    """The ids the checkpoint's tokenizer gives for a text equal quantppl's."""
    import sentencepiece as spm
    from transformers import T5Tokenizer

    with open(os.path.join(out_dir, "config.json")) as f:
        eos = json.load(f)["eos_token_id"]
    with open(text_path, encoding="utf-8") as f:
        text = f.read()
    sp = spm.SentencePieceProcessor(model_file=os.path.join(out_dir, "spiece.model"))
    want = quantppl_token_ids(sp, text, eos)
    got = T5Tokenizer.from_pretrained(out_dir)(text).input_ids
    if got != want:
        first = next((i for i, (x, y) in enumerate(zip(got, want)) if x != y), min(len(got), len(want)))
        raise ValueError("%s: the tokenizer's ids differ from quantppl's at token %d (%d vs %d tokens)"
                         % (text_path, first, len(got), len(want)))


if __name__ == "__main__":
    sys.exit(main())
