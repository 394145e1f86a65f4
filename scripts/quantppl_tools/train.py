"""Train quantppl's shipped default model (models/default.pt), reproducibly.

Run with the venv's python (transformers is needed to train a real HF checkpoint):
    scripts/setup_python_env.sh
    build/venv/bin/python scripts/train_default_model.py            # -> models/default.pt

Data: English prose extracted from the reStructuredText sources of the Python 3.11
documentation as installed by Debian's python3.11-doc (PSF licence), read where installed
(/usr/share/doc/python3.11/html/_sources); nothing is copied into the repository.
Split 95/5 by file (a file goes to held-out when sha1(relative path) % 20 == 0).

Tokenizer: sentencepiece unigram, pad 0 / eos 1 / unk 2, no bos, nmt_nfkc; the T5 sentinels
<extra_id_i> get ids n_sp + (n_sentinels - 1 - i) after the sentencepiece pieces, as HF's
T5Tokenizer numbers them; the model vocabulary is rounded up to a multiple of 128.

Model: flan-t5 architecture (gated-GELU FFN, RMS norm, relative position buckets 32/128,
untied lm_head) trained with transformers' T5ForConditionalGeneration, so the result is a real
HF checkpoint exported by scripts/export_t5.py exactly like google/flan-t5-small.
Every Linear has in_features divisible by 128 (the C++ group quantizer needs G | in_features).

Objective: steps alternate T5 span corruption (noise density 0.15, mean span 3; the encoder
sees the text with spans replaced by sentinels, the decoder writes sentinel + span ...) and
prefix-LM (the encoder sees a prefix, the decoder continues the text), so the decoder learns to
predict text rather than to copy the encoder input.

Everything is seeded; data order is a seeded permutation; torch uses 2 threads. A wall-clock cap
(--max-minutes) stops training early if the machine is slower than planned (the learning-rate
schedule is for --steps; an early stop is written into the summary).
"""

import argparse
import hashlib
import json
import math
import os
import re
import subprocess
import sys
import time

from .paths import REPO
from .reexec import reexec_with

# Environment tuned for this 2-core VM (see shared notes): passive OpenMP waiting, one OpenBLAS
# thread, and a malloc that neither returns memory to the OS nor mmaps big blocks (fresh pages
# cost ~11.5 us each here). GLIBC_TUNABLES is read at process start, so re-exec once with it set.
_TUNABLES = "glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=17179869184"


def _tune_environment():
    """Called before torch is imported, only when run as a script (importing is side-effect free)."""
    if os.environ.get("GLIBC_TUNABLES") != _TUNABLES and os.environ.get("QUANTPPL_REEXEC") != "1":
        env = dict(os.environ, GLIBC_TUNABLES=_TUNABLES, QUANTPPL_REEXEC="1")
        env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
        env.setdefault("OPENBLAS_NUM_THREADS", "1")
        reexec_with(env)
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")


DOC_SOURCES = "/usr/share/doc/python3.11/html/_sources"
PROG = "train_default_model"


def fail(msg):
    print("%s: error: %s" % (PROG, msg), file=sys.stderr)
    sys.exit(1)


def log(msg):
    print("[%s] %s" % (time.strftime("%H:%M:%S"), msg), flush=True)


# ---------------------------------------------------------------------------------------------
# Prose extraction from reST
# ---------------------------------------------------------------------------------------------

# Directives whose whole body is code, tables, metadata or navigation: dropped with their body.
# Other directives (note, warning, function, class, versionadded, ...) keep their indented body,
# which is prose; only the directive line and its :option: lines are dropped.
SKIP_DIRECTIVES = {
    "code-block", "sourcecode", "code", "literalinclude", "doctest", "testcode", "testoutput",
    "testsetup", "testcleanup", "productionlist", "highlight", "toctree", "table", "list-table",
    "csv-table", "image", "figure", "index", "raw", "include", "tabularcolumns", "only", "math",
    "moduleauthor", "sectionauthor", "currentmodule", "highlightlang", "audit-event-table", "graphviz",
    "literal", "parsed-literal", "digraph", "availability", "impl-detail", "audit-event", "opcode",
}
_UNDERLINE = re.compile(r"^([=\-~^\"'`#*+<>_.:])\1{2,}\s*$")
_TABLE = re.compile(r"^(\+[-=+]+\+?|\|.*\||=+( +=+)+)\s*$")
_DIRECTIVE = re.compile(r"^\.\.\s+([\w:.-]+)::")


def _indent(line):
    return len(line) - len(line.lstrip(" "))


def clean_inline(s):
    """Strip reST inline markup, keeping the words a reader sees."""
    s = re.sub(r":[\w:.-]+:`~?!?([^`<]*?)\s*<[^`>]*>`", r"\1", s)          # :role:`text <target>`
    s = re.sub(r":[\w:.-]+:`(~?)!?([^`]*)`",                               # :role:`~a.b.c` -> c
               lambda m: m.group(2).split(".")[-1] if m.group(1) else m.group(2), s)
    s = re.sub(r"``([^`]*)``", r"\1", s)                                   # ``literal``
    s = re.sub(r"`([^`<]*?)\s*<[^`>]*>`__?", r"\1", s)                     # `text <url>`_
    s = re.sub(r"`([^`]*)`__?", r"\1", s)                                  # `text`_
    s = re.sub(r"`([^`]*)`", r"\1", s)                                     # `interpreted`
    s = re.sub(r"\*\*([^*]+)\*\*", r"\1", s)
    s = re.sub(r"(?<![\w*])\*([^*\s][^*]*)\*", r"\1", s)
    s = re.sub(r"\[(#|\d+|\*)\w*\]_", "", s)                               # footnote refs
    s = re.sub(r"\|([^|\s][^|]*)\|_?", r"\1", s)                           # substitutions
    s = re.sub(r"\\(.)", r"\1", s)                                         # escapes
    return re.sub(r"\s+", " ", s).strip()


def extract_prose(text):
    """Paragraphs of prose from one reST file (one string per paragraph)."""
    lines = text.expandtabs(8).splitlines()
    n = len(lines)
    pars, cur = [], []

    def flush(literal_follows=False):
        if cur:
            p = " ".join(cur)
            if literal_follows:
                p = p[:-2].rstrip() + ":" if not p.endswith(" ::") else p[:-3]
            pars.append(p)
            cur.clear()

    def skip_block(i, base):
        """Index of the first line after i that is non-blank and indented <= base."""
        j = i + 1
        while j < n and (not lines[j].strip() or _indent(lines[j]) > base):
            j += 1
        return j

    def skip_to_blank(i):
        while i < n and lines[i].strip():
            i += 1
        return i

    i = 0
    while i < n:
        line = lines[i]
        s = line.strip()
        ind = _indent(line)
        if not s:
            flush()
            i += 1
            continue
        if s.startswith(".."):
            flush()
            m = _DIRECTIVE.match(s)
            if m is None or m.group(1) in SKIP_DIRECTIVES or m.group(1).startswith("_"):
                i = skip_block(i, ind)  # comment, link target, footnote, code-like directive
            else:
                i += 1                  # keep the body, drop the signature and its options
                while i < n and lines[i].strip().startswith(":") and _indent(lines[i]) > ind:
                    i += 1
            continue
        if s.startswith(">>>") or _TABLE.match(s):
            flush()
            i = skip_to_blank(i)
            continue
        if _UNDERLINE.match(s):
            cur.clear()  # the title above an underline is not a sentence
            i += 1
            continue
        if s == "::":
            flush()
            i = skip_block(i, ind)
            continue
        if s.startswith(":") and re.match(r"^:[^:`]+:(\s|$)", s):
            s = re.sub(r"^:[^:`]+:\s*", "", s)  # field list marker (:param x:)
            if not s:
                i += 1
                continue
        s = re.sub(r"^([-*+\u2022]|\d+[.)]|#\.)\s+", "", s)  # list bullets
        cur.append(s)
        if s.endswith("::"):
            flush(literal_follows=True)
            i = skip_block(i, ind)  # the literal (code) block
            continue
        i += 1
    flush()
    out = []
    for p in pars:
        p = clean_inline(p)
        words = p.split()
        letters = sum(c.isalpha() or c.isspace() for c in p)
        if len(words) >= 6 and letters >= 0.8 * len(p):
            out.append(p)
    return out


def load_corpus(src):
    """{'train': [paragraphs], 'heldout': [...]} with a deterministic 95/5 split by file."""
    files = []
    for root, dirs, names in os.walk(src):
        dirs.sort()
        for name in sorted(names):
            if name.endswith(".rst.txt"):
                files.append(os.path.join(root, name))
    if not files:
        fail("no .rst.txt files under %s" % src)
    split = {"train": [], "heldout": []}
    nfiles = {"train": 0, "heldout": 0}
    for path in sorted(files):
        rel = os.path.relpath(path, src)
        part = "heldout" if int(hashlib.sha1(rel.encode()).hexdigest(), 16) % 20 == 0 else "train"
        with open(path, encoding="utf-8", errors="replace") as f:
            split[part].extend(extract_prose(f.read()))
        nfiles[part] += 1
    return split, nfiles


# ---------------------------------------------------------------------------------------------
# Objectives
# ---------------------------------------------------------------------------------------------

def random_spans_noise_mask(length, rng, density=0.15, mean_span=3.0):
    """T5's span corruption mask: ~density*length noise tokens in ~noise/mean_span spans,
    noise and non-noise segment lengths drawn as random partitions (as in the T5 code)."""
    import numpy as np

    num_noise = int(round(length * density))
    num_noise = min(max(num_noise, 1), length - 1)
    num_spans = max(int(round(num_noise / mean_span)), 1)
    num_nonnoise = length - num_noise

    def partition(num_items, num_segments):
        first = np.arange(num_items - 1) < (num_segments - 1)
        rng.shuffle(first)
        first = np.pad(first, [[1, 0]])
        seg_id = np.cumsum(first)
        return np.bincount(seg_id, minlength=num_segments)

    noise_lens = partition(num_noise, num_spans)
    nonnoise_lens = partition(num_nonnoise, num_spans)
    mask = np.zeros(length, dtype=bool)
    pos = 0
    for a, b in zip(nonnoise_lens, noise_lens):
        pos += a
        mask[pos:pos + b] = True
        pos += b
    return mask


def span_corruption(tokens, rng, sentinel_ids, eos):
    """(encoder input, labels): spans replaced by <extra_id_k> / sentinel k + the span."""
    mask = random_spans_noise_mask(len(tokens), rng)
    inp, lab = [], []
    k = -1
    prev = False
    for t, m in zip(tokens, mask):
        if m:
            if not prev:
                k += 1
                inp.append(sentinel_ids[k])
                lab.append(sentinel_ids[k])
            lab.append(t)
        else:
            inp.append(t)
        prev = m
    return inp + [eos], lab + [eos]


def prefix_lm(tokens, rng, eos):
    """(encoder input, labels): a prefix of random length, then its continuation."""
    p = int(rng.integers(1, len(tokens)))
    return list(tokens[:p]) + [eos], list(tokens[p:]) + [eos]


def collate(pairs, pad):
    import torch

    s = max(len(a) for a, _ in pairs)
    t = max(len(b) for _, b in pairs)
    ids = torch.full((len(pairs), s), pad, dtype=torch.long)
    mask = torch.zeros((len(pairs), s), dtype=torch.long)
    labels = torch.full((len(pairs), t), -100, dtype=torch.long)  # -100: ignored by the loss
    for r, (a, b) in enumerate(pairs):
        ids[r, :len(a)] = torch.tensor(a)
        mask[r, :len(a)] = 1
        labels[r, :len(b)] = torch.tensor(b)
    return ids, mask, labels


# ---------------------------------------------------------------------------------------------
# Baselines on the held-out token stream
# ---------------------------------------------------------------------------------------------

def ngram_baselines(train_ids, held_ids, vocab):
    """Unigram (add-one) and interpolated bigram perplexities of the held-out stream.
    Bigram: p(w|v) = l * c(v,w)/c(v) + (1-l) * p_uni(w); l picked on the held-out stream
    itself from a grid, so the bigram number is an optimistic (hard-to-beat) baseline."""
    import numpy as np

    tr = np.asarray(train_ids, dtype=np.int64)
    he = np.asarray(held_ids, dtype=np.int64)
    uni = np.bincount(tr, minlength=vocab).astype(np.float64) + 1.0
    uni /= uni.sum()
    uni_ppl = float(np.exp(-np.log(uni[he]).mean()))
    pair = tr[:-1] * vocab + tr[1:]
    keys, counts = np.unique(pair, return_counts=True)
    ctx = np.bincount(tr[:-1], minlength=vocab).astype(np.float64)
    hp = he[:-1] * vocab + he[1:]
    idx = np.searchsorted(keys, hp)
    idx = np.minimum(idx, len(keys) - 1)
    c_pair = np.where(keys[idx] == hp, counts[idx], 0).astype(np.float64)
    c_ctx = ctx[he[:-1]]
    p_big = np.divide(c_pair, c_ctx, out=np.zeros_like(c_pair), where=c_ctx > 0)
    p_uni = uni[he[1:]]
    best = None
    for lam in np.linspace(0.0, 0.95, 20):
        ppl = float(np.exp(-np.log(lam * p_big + (1 - lam) * p_uni).mean()))
        if best is None or ppl < best[0]:
            best = (ppl, float(lam))
    return {"unigram_ppl": uni_ppl, "bigram_interpolated_ppl": best[0], "bigram_lambda": best[1]}


# ---------------------------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------------------------

def main(argv=None):
    if argv is None:
        _tune_environment()
    ap = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=os.path.join(REPO, "models", "default.pt"))
    ap.add_argument("--workdir", default=os.path.join(REPO, "build", "default_model"))
    ap.add_argument("--sources", default=DOC_SOURCES, help="reST sources of python3.11-doc")
    ap.add_argument("--sp-vocab", type=int, default=3000)
    ap.add_argument("--sentinels", type=int, default=32)
    ap.add_argument("--d-model", type=int, default=256)
    ap.add_argument("--d-kv", type=int, default=64)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--d-ff", type=int, default=384)
    ap.add_argument("--enc-layers", type=int, default=3)
    ap.add_argument("--dec-layers", type=int, default=3)
    ap.add_argument("--window", type=int, default=128, help="training window incl. EOS (= max_length)")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--steps", type=int, default=4200)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--warmup", type=int, default=150)
    ap.add_argument("--weight-decay", type=float, default=0.01)
    ap.add_argument("--max-minutes", type=float, default=50.0, help="wall-clock cap for the training loop")
    ap.add_argument("--stop-step", type=int, default=0,
                    help="stop after this many steps, keeping the schedule of --steps (replays a run that "
                         "the wall-clock cap stopped early, exactly)")
    ap.add_argument("--eval-every", type=int, default=300)
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--no-bf16", action="store_true", help="train in fp32 instead of bf16 autocast")
    ap.add_argument("--max-bytes", type=int, default=25_000_000, help="size budget of the exported fp32 file")
    args = ap.parse_args(argv)

    for name in ("sp_vocab", "sentinels", "d_model", "d_kv", "heads", "d_ff", "enc_layers", "dec_layers",
                 "window", "batch", "steps"):
        if getattr(args, name) <= 0:
            fail("--%s must be a positive integer" % name.replace("_", "-"))
    if args.window < 16:
        fail("--window must be at least 16")
    for name, v in (("--d-model", args.d_model), ("--heads x --d-kv", args.heads * args.d_kv), ("--d-ff", args.d_ff)):
        if v % 128:
            fail("%s = %d is not divisible by 128 (every Linear's in_features must be, for group quantization)" % (name, v))

    if not os.path.isdir(args.sources):
        if os.geteuid() == 0 and args.sources == DOC_SOURCES:
            log("installing python3.11-doc with apt-get (the training text)")
            r = subprocess.run(["apt-get", "install", "-y", "--no-install-recommends", "python3.11-doc"])
            if r.returncode != 0 or not os.path.isdir(args.sources):
                fail("could not install python3.11-doc; run: apt-get update && apt-get install python3.11-doc")
        else:
            fail("%s not found: install the training text with: apt-get install python3.11-doc" % args.sources)

    try:
        import numpy as np
        import sentencepiece as spm
        import torch
        import transformers
        from transformers import T5Config, T5ForConditionalGeneration
    except ImportError as e:
        fail("%s; run scripts/setup_python_env.sh and use build/venv/bin/python" % e)

    t_start = time.time()
    torch.manual_seed(args.seed)
    torch.set_num_threads(2)
    rng = np.random.default_rng(args.seed)
    os.makedirs(args.workdir, exist_ok=True)

    # --- data -------------------------------------------------------------------------------
    split, nfiles = load_corpus(args.sources)
    n_chars = {k: sum(len(p) for p in v) for k, v in split.items()}
    log("prose: %d train paragraphs (%d files, %d chars), %d held-out paragraphs (%d files, %d chars)"
        % (len(split["train"]), nfiles["train"], n_chars["train"], len(split["heldout"]), nfiles["heldout"],
           n_chars["heldout"]))
    held_path = os.path.join(args.workdir, "heldout.txt")
    with open(held_path, "w", encoding="utf-8") as f:
        f.write("\n".join(split["heldout"]) + "\n")
    train_txt = os.path.join(args.workdir, "train.txt")
    with open(train_txt, "w", encoding="utf-8") as f:
        f.write("\n".join(split["train"]) + "\n")

    # --- tokenizer ----------------------------------------------------------------------------
    sp_prefix = os.path.join(args.workdir, "spiece")
    spm.SentencePieceTrainer.train(
        input=train_txt, model_prefix=sp_prefix, vocab_size=args.sp_vocab, model_type="unigram",
        pad_id=0, eos_id=1, unk_id=2, bos_id=-1, normalization_rule_name="nmt_nfkc",
        character_coverage=1.0, num_threads=2, seed_sentencepiece_size=200000, input_sentence_size=0,
        shuffle_input_sentence=False, minloglevel=2)
    sp = spm.SentencePieceProcessor(model_file=sp_prefix + ".model")
    n_sp = sp.get_piece_size()
    vocab = ((n_sp + args.sentinels + 127) // 128) * 128
    # HF T5Tokenizer: <extra_id_i> = n_sp + extra_ids - 1 - i (extra_id_0 is the highest id).
    sentinel_ids = [n_sp + args.sentinels - 1 - i for i in range(args.sentinels)]
    eos, pad = 1, 0

    def encode_stream(pars):
        ids = []
        for ps in sp.encode(pars):
            ids.extend(ps)
        return ids

    train_ids = encode_stream(split["train"])
    held_ids = encode_stream(split["heldout"])
    log("tokens: %d train, %d held-out; sp vocab %d, model vocab %d" % (len(train_ids), len(held_ids), n_sp, vocab))
    baselines = ngram_baselines(train_ids, held_ids, vocab)
    log("baselines on the held-out stream: unigram ppl %.1f, interpolated bigram ppl %.1f (lambda %.2f)"
        % (baselines["unigram_ppl"], baselines["bigram_interpolated_ppl"], baselines["bigram_lambda"]))

    raw = args.window - 1  # raw tokens per example; + EOS = window

    def eval_windows(ids):
        n = len(ids) // raw
        return [ids[i * raw:(i + 1) * raw] for i in range(n)]

    held_windows = eval_windows(held_ids)

    # --- model --------------------------------------------------------------------------------
    config = T5Config(
        vocab_size=vocab, d_model=args.d_model, d_kv=args.d_kv, d_ff=args.d_ff, num_layers=args.enc_layers,
        num_decoder_layers=args.dec_layers, num_heads=args.heads, relative_attention_num_buckets=32,
        relative_attention_max_distance=128, dropout_rate=0.0, layer_norm_epsilon=1e-6,
        feed_forward_proj="gated-gelu", tie_word_embeddings=False, is_encoder_decoder=True,
        pad_token_id=pad, eos_token_id=eos, decoder_start_token_id=pad)
    model = T5ForConditionalGeneration(config)
    # HF initialises an untied lm_head with std 1.0 (factor * 1.0): with unit-scale RMS-normed
    # inputs that gives logits of std sqrt(d_model) and an initial loss of ~57 that the first
    # hundreds of steps only undo. Use the usual fan-in scale std = d_model**-0.5 instead.
    with torch.no_grad():
        model.lm_head.weight.normal_(0.0, args.d_model ** -0.5)
    n_params = sum(p.numel() for p in model.parameters())  # shared embedding counted once
    est_bytes = 4 * n_params + os.path.getsize(sp_prefix + ".model") + 200_000
    log("model: %d parameters (%.1f MB fp32 + tokenizer)" % (n_params, est_bytes / 1e6))
    if est_bytes > args.max_bytes:
        fail("model of %d parameters would exceed the %d-byte budget; shrink --d-ff/--layers/--sp-vocab"
             % (n_params, args.max_bytes))
    for name, mod in model.named_modules():
        if isinstance(mod, torch.nn.Linear) and mod.in_features % 128:
            fail("Linear %s has in_features %d, not divisible by 128" % (name, mod.in_features))

    decay = [p for n, p in model.named_parameters() if p.dim() >= 2 and "relative_attention_bias" not in n]
    no_decay = [p for n, p in model.named_parameters() if not (p.dim() >= 2 and "relative_attention_bias" not in n)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": args.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=args.lr, betas=(0.9, 0.98), eps=1e-8)

    def lr_at(step):  # linear warmup, cosine decay to 10% of the peak over --steps
        if step < args.warmup:
            return args.lr * (step + 1) / args.warmup
        prog = min(1.0, (step - args.warmup) / max(1, args.steps - args.warmup))
        return args.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * prog)))

    use_bf16 = not args.no_bf16

    def evaluate(windows, limit=None):
        """Mean NLL per label token for (labels = input) and (prefix-LM continuation at the middle)."""
        model.eval()
        ws = windows if limit is None else windows[:limit]
        res = {}
        with torch.no_grad():
            for kind in ("labels_eq_input", "prefix_continuation"):
                tot, cnt = 0.0, 0
                for b in range(0, len(ws), 32):
                    pairs = []
                    for w in ws[b:b + 32]:
                        w = list(w)
                        if kind == "labels_eq_input":
                            pairs.append((w + [eos], w + [eos]))
                        else:
                            h = len(w) // 2
                            pairs.append((w[:h] + [eos], w[h:] + [eos]))
                    ids, mask, labels = collate(pairs, pad)
                    logits = model(input_ids=ids, attention_mask=mask, labels=labels).logits.float()
                    nll = torch.nn.functional.cross_entropy(logits.view(-1, vocab), labels.view(-1),
                                                            ignore_index=-100, reduction="sum")
                    tot += float(nll)
                    cnt += int((labels != -100).sum())
                res[kind] = tot / cnt
        model.train()
        return res

    # --- training -------------------------------------------------------------------------------
    model.train()
    history = []
    order, epoch, cursor = None, -1, 0
    windows = []

    def next_windows(k):
        nonlocal order, epoch, cursor, windows
        out = []
        while len(out) < k:
            if order is None or cursor >= len(order):
                epoch += 1
                off = int(rng.integers(0, raw))  # a new random phase of the windows each epoch
                windows = [train_ids[i:i + raw] for i in range(off, len(train_ids) - raw + 1, raw)]
                order = rng.permutation(len(windows))
                cursor = 0
            out.append(windows[order[cursor]])
            cursor += 1
        return out

    t_loop = time.time()
    stopped_early = None  # or the reason
    step = 0
    tokens_seen = 0
    ema = None
    for step in range(args.steps):
        if args.stop_step and step >= args.stop_step:
            stopped_early = "stop-step"
            log("--stop-step %d reached (schedule planned for %d steps)" % (args.stop_step, args.steps))
            break
        if (time.time() - t_loop) / 60.0 > args.max_minutes:
            stopped_early = "wall-clock cap"
            log("wall-clock cap of %.1f minutes reached at step %d of %d" % (args.max_minutes, step, args.steps))
            break
        kind = "span" if step % 2 == 0 else "prefix"
        pairs = []
        for w in next_windows(args.batch):
            if kind == "span":
                pairs.append(span_corruption(w, rng, sentinel_ids, eos))
            else:
                pairs.append(prefix_lm(w, rng, eos))
        ids, mask, labels = collate(pairs, pad)
        for g in opt.param_groups:
            g["lr"] = lr_at(step)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=use_bf16):
            out = model(input_ids=ids, attention_mask=mask, labels=labels)
        loss = out.loss.float()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        gnorm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0))
        opt.step()
        tokens_seen += int(mask.sum()) + int((labels != -100).sum())
        ema = float(loss) if ema is None else 0.98 * ema + 0.02 * float(loss)
        if step % 25 == 0:
            el = time.time() - t_loop
            log("step %d/%d %s loss %.3f (ema %.3f) gnorm %.2f lr %.2e  %.2f s/step, epoch %d"
                % (step, args.steps, kind, float(loss), ema, gnorm, lr_at(step), el / (step + 1), epoch))
        if args.eval_every and step > 0 and step % args.eval_every == 0:
            ev = evaluate(held_windows, limit=96)
            history.append({"step": step, "minutes": (time.time() - t_loop) / 60, "train_loss_ema": ema,
                            "heldout_nll": ev})
            log("eval step %d: held-out (96 windows) labels=input ppl %.1f, prefix continuation ppl %.1f"
                % (step, math.exp(ev["labels_eq_input"]), math.exp(ev["prefix_continuation"])))
    steps_done = step + 1 if not stopped_early else step
    train_minutes = (time.time() - t_loop) / 60

    # --- final evaluation -------------------------------------------------------------------------
    log("final evaluation on %d held-out windows" % len(held_windows))
    ev_held = evaluate(held_windows)
    rng_eval = np.random.default_rng(args.seed + 1)
    tw = [train_ids[i:i + raw] for i in range(0, len(train_ids) - raw + 1, raw)]
    tw = [tw[i] for i in sorted(rng_eval.choice(len(tw), size=min(len(held_windows), len(tw)), replace=False))]
    ev_train = evaluate(tw)
    log("held-out: labels=input ppl %.2f, prefix continuation ppl %.2f; train sample: %.2f / %.2f"
        % (math.exp(ev_held["labels_eq_input"]), math.exp(ev_held["prefix_continuation"]),
           math.exp(ev_train["labels_eq_input"]), math.exp(ev_train["prefix_continuation"])))

    # --- save and export --------------------------------------------------------------------------
    hf_dir = os.path.join(args.workdir, "hf")
    model.save_pretrained(hf_dir, safe_serialization=True)
    with open(sp_prefix + ".model", "rb") as f, open(os.path.join(hf_dir, "spiece.model"), "wb") as g:
        g.write(f.read())
    # Run the export from the repository root with repo-relative paths, so that the archive's
    # metadata (source.checkpoint) names build/default_model/hf rather than this machine's path.
    def rel(p):
        p = os.path.abspath(p)
        return os.path.relpath(p, REPO) if p.startswith(REPO + os.sep) else p
    r = subprocess.run([sys.executable, os.path.join("scripts", "export_t5.py"), rel(hf_dir), rel(args.out),
                        "--max-length", str(args.window)], cwd=REPO)
    if r.returncode != 0:
        fail("export of %s to %s failed" % (hf_dir, args.out))
    with open(args.out, "rb") as f:
        sha = hashlib.sha256(f.read()).hexdigest()
    size = os.path.getsize(args.out)
    if size > args.max_bytes:
        fail("%s is %d bytes, over the %d-byte budget" % (args.out, size, args.max_bytes))

    summary = {
        "command": " ".join([os.path.relpath(sys.executable, REPO) if sys.executable.startswith(REPO) else sys.executable]
                            + [os.path.relpath(sys.argv[0], REPO)] + sys.argv[1:]),
        "args": vars(args),
        "data": {"source": args.sources, "files": nfiles, "paragraphs": {k: len(v) for k, v in split.items()},
                 "chars": n_chars, "tokens": {"train": len(train_ids), "heldout": len(held_ids)},
                 "heldout_windows": len(held_windows)},
        "tokenizer": {"sp_vocab": n_sp, "model_vocab": vocab, "sentinels": args.sentinels},
        "parameters": n_params,
        "steps_planned": args.steps, "steps_done": steps_done, "stopped_early": stopped_early,
        "tokens_seen": tokens_seen, "epochs_started": epoch + 1,
        "train_minutes": train_minutes, "total_minutes": (time.time() - t_start) / 60,
        "bf16_autocast": use_bf16, "train_loss_ema": ema,
        "heldout": {k: {"nll": v, "ppl": math.exp(v)} for k, v in ev_held.items()},
        "train_sample": {k: {"nll": v, "ppl": math.exp(v)} for k, v in ev_train.items()},
        "baselines_heldout": baselines, "history": history,
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                     "sentencepiece": spm.__version__, "numpy": np.__version__},
        "output": {"path": os.path.relpath(args.out, REPO), "bytes": size, "sha256": sha},
    }
    with open(os.path.join(args.workdir, "train_summary.json"), "w") as f:
        json.dump(summary, f, indent=2)
    log("wrote %s (%d bytes, sha256 %s); summary in %s" % (args.out, size, sha, os.path.join(args.workdir, "train_summary.json")))


if __name__ == "__main__":
    main()
