"""Train quantppl's shipped default causal model (models/default-causal.pt), reproducibly.

Run with the venv's python (transformers is needed to train a real HF checkpoint):
    scripts/setup_python_env.sh
    nice build/venv/bin/python scripts/train_causal_model.py        # -> models/default-causal.pt

Data: the same English prose as the T5 default model (train.py: the reST sources of Debian's
python3.11-doc, prose extraction extract_prose, 95/5 split by sha1 of the file path), so both
defaults are trained and held out on the same text.

Tokenizer: sentencepiece BPE with byte fallback, Llama's special ids: unk 0, bos 1, eos 2, no
pad; identity normalization as Llama's except that tab / LF / CR become spaces (see below).
add_bos is true (every text starts with BOS).

Model: Llama architecture (RoPE, RMSNorm, SwiGLU, grouped-query attention, untied lm_head)
trained with transformers' LlamaForCausalLM, so the result is a real HF checkpoint, exported by
scripts/export_hf.py exactly like TinyLlama. Every Linear has in_features divisible by 128 (the
C++ group quantizer needs G | in_features).

Objective: next-token prediction on windows of max_length tokens, each window BOS followed by
max_length - 1 tokens of the training stream (the paragraphs' token ids concatenated), which is
exactly how `quantppl compare --mode causal` cuts a text for a model with add_bos.

Everything is seeded; data order is a seeded permutation; torch uses 2 threads. A wall-clock cap
(--max-minutes) stops training early if the machine is slower than planned (the schedule is for
--steps; an early stop is written into the summary, and --stop-step replays it exactly).
"""

import argparse
import hashlib
import json
import math
import os
import subprocess
import sys
import time

from .paths import REPO
from .train import DOC_SOURCES, _tune_environment, load_corpus, ngram_baselines

PROG = "train_causal_model"


def fail(msg):
    print("%s: error: %s" % (PROG, msg), file=sys.stderr)
    sys.exit(1)


def log(msg):
    print("[%s] %s" % (time.strftime("%H:%M:%S"), msg), flush=True)


def window_batch(windows, bos):
    """input_ids B x S: BOS + window. The loss uses labels = input_ids (shifted inside the model)."""
    import torch

    return torch.tensor([[bos] + list(w) for w in windows], dtype=torch.long)


def main(argv=None):
    if argv is None:
        _tune_environment()
    ap = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=os.path.join(REPO, "models", "default-causal.pt"))
    ap.add_argument("--workdir", default=os.path.join(REPO, "build", "default_causal_model"))
    ap.add_argument("--sources", default=DOC_SOURCES, help="reST sources of python3.11-doc")
    ap.add_argument("--vocab", type=int, default=4096, help="sentencepiece vocabulary = model vocab_size")
    ap.add_argument("--d-model", type=int, default=256)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--kv-heads", type=int, default=2)
    ap.add_argument("--d-ff", type=int, default=768)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--max-length", type=int, default=256, help="training window incl. BOS (= max_length)")
    ap.add_argument("--rope-theta", type=float, default=10000.0)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--steps", type=int, default=900)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--warmup", type=int, default=60)
    ap.add_argument("--weight-decay", type=float, default=0.01)
    ap.add_argument("--max-minutes", type=float, default=45.0, help="wall-clock cap for the training loop")
    ap.add_argument("--stop-step", type=int, default=0,
                    help="stop after this many steps, keeping the schedule of --steps (replays a run that "
                         "the wall-clock cap stopped early, exactly)")
    ap.add_argument("--eval-every", type=int, default=150)
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--no-bf16", action="store_true", help="train in fp32 instead of bf16 autocast")
    ap.add_argument("--max-bytes", type=int, default=25_000_000, help="size budget of the exported fp32 file")
    args = ap.parse_args(argv)

    for name in ("vocab", "d_model", "heads", "kv_heads", "d_ff", "layers", "max_length", "batch", "steps"):
        if getattr(args, name) <= 0:
            fail("--%s must be a positive integer" % name.replace("_", "-"))
    if args.max_length < 16:
        fail("--max-length must be at least 16")
    if args.d_model % args.heads or args.heads % args.kv_heads:
        fail("--d-model must be divisible by --heads, and --heads by --kv-heads")
    for name, v in (("--d-model", args.d_model), ("--d-ff", args.d_ff)):
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
        from transformers import LlamaConfig, LlamaForCausalLM
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
    sp_prefix = os.path.join(args.workdir, "tokenizer")
    # Normalization: identity except tab, LF and CR -> space (hex code points, sentencepiece's rule
    # TSV format). quantppl encodes a text line by line with each line's "\n"; with pure identity
    # normalization and byte fallback that "\n" would become the byte piece <0x0A>, which the model
    # never sees in training (a paragraph is one line, its whitespace already collapsed to spaces),
    # so it would be a token the model cannot predict. The training text contains none of the three
    # characters, so the rule changes no training id.
    rule_tsv = os.path.join(args.workdir, "normalization_rule.tsv")
    with open(rule_tsv, "w") as f:
        f.write("9\t20\nA\t20\nD\t20\n")
    spm.SentencePieceTrainer.train(
        input=train_txt, model_prefix=sp_prefix, vocab_size=args.vocab, model_type="bpe",
        unk_id=0, bos_id=1, eos_id=2, pad_id=-1, byte_fallback=True, normalization_rule_tsv=rule_tsv,
        split_digits=True, character_coverage=0.9995, num_threads=2, input_sentence_size=0,
        shuffle_input_sentence=False, minloglevel=2)
    sp = spm.SentencePieceProcessor(model_file=sp_prefix + ".model")
    vocab = sp.get_piece_size()
    if vocab != args.vocab:
        fail("sentencepiece made %d pieces, not --vocab %d" % (vocab, args.vocab))
    bos, eos = 1, 2

    def encode_stream(pars):
        ids = []
        for ps in sp.encode(pars):
            ids.extend(ps)
        return ids

    train_ids = encode_stream(split["train"])
    held_ids = encode_stream(split["heldout"])
    log("tokens: %d train, %d held-out; vocab %d" % (len(train_ids), len(held_ids), vocab))
    baselines = ngram_baselines(train_ids, held_ids, vocab)
    log("baselines on the held-out stream: unigram ppl %.1f, interpolated bigram ppl %.1f (lambda %.2f)"
        % (baselines["unigram_ppl"], baselines["bigram_interpolated_ppl"], baselines["bigram_lambda"]))

    raw = args.max_length - 1  # text tokens per window; + BOS = max_length

    def eval_windows(ids):
        return [ids[i * raw:(i + 1) * raw] for i in range(len(ids) // raw)]

    held_windows = eval_windows(held_ids)

    # --- model --------------------------------------------------------------------------------
    config = LlamaConfig(
        vocab_size=vocab, hidden_size=args.d_model, intermediate_size=args.d_ff, num_hidden_layers=args.layers,
        num_attention_heads=args.heads, num_key_value_heads=args.kv_heads, hidden_act="silu",
        max_position_embeddings=args.max_length, rms_norm_eps=1e-5, rope_theta=args.rope_theta,
        tie_word_embeddings=False, attention_bias=False, mlp_bias=False, attention_dropout=0.0,
        bos_token_id=bos, eos_token_id=eos, pad_token_id=None, initializer_range=0.02)
    model = LlamaForCausalLM(config)
    n_params = sum(p.numel() for p in model.parameters())
    est_bytes = 4 * n_params + os.path.getsize(sp_prefix + ".model") + 200_000
    log("model: %d parameters (%.1f MB fp32 + tokenizer)" % (n_params, est_bytes / 1e6))
    if est_bytes > args.max_bytes:
        fail("model of %d parameters would exceed the %d-byte budget; shrink --d-ff/--layers/--vocab"
             % (n_params, args.max_bytes))

    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": args.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=args.lr, betas=(0.9, 0.98), eps=1e-8)

    def lr_at(step):  # linear warmup, cosine decay to 10% of the peak over --steps
        if step < args.warmup:
            return args.lr * (step + 1) / args.warmup
        prog = min(1.0, (step - args.warmup) / max(1, args.steps - args.warmup))
        return args.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * prog)))

    use_bf16 = not args.no_bf16

    def evaluate(windows, limit=None):
        """Mean NLL per scored token: each window is BOS + text, every text token scored."""
        model.eval()
        ws = windows if limit is None else windows[:limit]
        tot, cnt = 0.0, 0
        with torch.no_grad():
            for b in range(0, len(ws), 16):
                ids = window_batch(ws[b:b + 16], bos)
                logits = model(input_ids=ids).logits.float()
                nll = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, vocab), ids[:, 1:].reshape(-1),
                                                        reduction="sum")
                tot += float(nll)
                cnt += ids[:, 1:].numel()
        model.train()
        return tot / cnt

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
    stopped_early = None
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
        ids = window_batch(next_windows(args.batch), bos)
        for g in opt.param_groups:
            g["lr"] = lr_at(step)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=use_bf16):
            logits = model(input_ids=ids).logits
        loss = torch.nn.functional.cross_entropy(logits[:, :-1].float().reshape(-1, vocab), ids[:, 1:].reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        gnorm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0))
        opt.step()
        tokens_seen += ids.numel()
        ema = float(loss) if ema is None else 0.98 * ema + 0.02 * float(loss)
        if step % 25 == 0:
            el = time.time() - t_loop
            log("step %d/%d loss %.3f (ema %.3f) gnorm %.2f lr %.2e  %.2f s/step, epoch %d"
                % (step, args.steps, float(loss), ema, gnorm, lr_at(step), el / (step + 1), epoch))
        if args.eval_every and step > 0 and step % args.eval_every == 0:
            ev = evaluate(held_windows, limit=64)
            history.append({"step": step, "minutes": (time.time() - t_loop) / 60, "train_loss_ema": ema,
                            "heldout_nll": ev})
            log("eval step %d: held-out (64 windows) ppl %.1f" % (step, math.exp(ev)))
    steps_done = step + 1 if not stopped_early else step
    train_minutes = (time.time() - t_loop) / 60

    # --- final evaluation -------------------------------------------------------------------------
    log("final evaluation on %d held-out windows" % len(held_windows))
    ev_held = evaluate(held_windows)
    rng_eval = np.random.default_rng(args.seed + 1)
    tw = [train_ids[i:i + raw] for i in range(0, len(train_ids) - raw + 1, raw)]
    tw = [tw[i] for i in sorted(rng_eval.choice(len(tw), size=min(len(held_windows), len(tw)), replace=False))]
    ev_train = evaluate(tw)
    log("held-out ppl %.2f; train sample ppl %.2f" % (math.exp(ev_held), math.exp(ev_train)))

    # --- save and export --------------------------------------------------------------------------
    hf_dir = os.path.join(args.workdir, "hf")
    model.save_pretrained(hf_dir, safe_serialization=True)
    with open(sp_prefix + ".model", "rb") as f, open(os.path.join(hf_dir, "tokenizer.model"), "wb") as g:
        g.write(f.read())
    # What HF's LlamaTokenizer reads: BOS prepended, no EOS appended.
    with open(os.path.join(hf_dir, "tokenizer_config.json"), "w") as f:
        json.dump({"tokenizer_class": "LlamaTokenizer", "add_bos_token": True, "add_eos_token": False,
                   "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": None,
                   "model_max_length": args.max_length, "legacy": False}, f, indent=2, sort_keys=True)

    def rel(p):
        p = os.path.abspath(p)
        return os.path.relpath(p, REPO) if p.startswith(REPO + os.sep) else p
    r = subprocess.run(["/usr/bin/python3" if os.path.exists("/usr/bin/python3") else sys.executable,
                        os.path.join("scripts", "export_hf.py"), rel(hf_dir), rel(args.out),
                        "--max-length", str(args.max_length)], cwd=REPO)
    size = sha = None
    if r.returncode != 0:
        log("export of %s to %s failed (the checkpoint is saved; rerun scripts/export_hf.py)" % (hf_dir, args.out))
    else:
        with open(args.out, "rb") as f:
            sha = hashlib.sha256(f.read()).hexdigest()
        size = os.path.getsize(args.out)
        if size > args.max_bytes:
            log("%s is %d bytes, over the %d-byte budget" % (args.out, size, args.max_bytes))

    summary = {
        "command": " ".join([sys.executable, os.path.relpath(sys.argv[0], REPO)] + sys.argv[1:]),
        "args": vars(args),
        "data": {"source": args.sources, "files": nfiles, "paragraphs": {k: len(v) for k, v in split.items()},
                 "chars": n_chars, "tokens": {"train": len(train_ids), "heldout": len(held_ids)},
                 "heldout_windows": len(held_windows)},
        "tokenizer": {"kind": "sentencepiece bpe, byte fallback", "vocab": vocab, "unk": 0, "bos": bos, "eos": eos},
        "parameters": n_params,
        "steps_planned": args.steps, "steps_done": steps_done, "stopped_early": stopped_early,
        "tokens_seen": tokens_seen, "epochs_started": epoch + 1,
        "train_minutes": train_minutes, "total_minutes": (time.time() - t_start) / 60,
        "bf16_autocast": use_bf16, "train_loss_ema": ema,
        "heldout": {"nll": ev_held, "ppl": math.exp(ev_held)},
        "train_sample": {"nll": ev_train, "ppl": math.exp(ev_train)},
        "baselines_heldout": baselines, "history": history,
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                     "sentencepiece": spm.__version__, "numpy": np.__version__},
        "output": {"path": rel(args.out), "bytes": size, "sha256": sha},
    }
    with open(os.path.join(args.workdir, "train_summary.json"), "w") as f:
        json.dump(summary, f, indent=2)
    log("summary in %s" % os.path.join(args.workdir, "train_summary.json"))
    return 0 if r.returncode == 0 else 1


if __name__ == "__main__":
    main()
