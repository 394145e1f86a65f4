"""Export a Hugging Face checkpoint to a quantppl model file (docs/model-contract.md).

usage: /usr/bin/python3 scripts/export_hf.py CHECKPOINT OUT.pt [--tokenizer FILE] [--max-length N]

CHECKPOINT is a local Hugging Face directory: config.json, the weights (model.safetensors or
pytorch_model.bin, possibly sharded with an index) and the tokenizer files. config.json's
model_type picks the architecture:
  t5                      -> the encoder-decoder contract, format_version 1 (export.py, unchanged)
  llama, mistral, qwen2   -> causal contract, format_version 2 (causal_torchscript.LlamaForLogits)
  gpt2                    -> causal contract, format_version 2 (causal_torchscript.GPT2ForLogits)

The tokenizer of a causal model is, in order: --tokenizer FILE; CHECKPOINT/tokenizer.model
(sentencepiece: Llama-2, TinyLlama, Mistral); CHECKPOINT/tokenizer.json (byte-level BPE:
GPT-2, Qwen2, Llama-3). It is stored in the archive as tokenizer.model or tokenizer.json and
named in quantppl.json's "tokenizer". Whether a text starts with BOS (add_bos) is read where
Hugging Face reads it: for sentencepiece, tokenizer_config.json's add_bos_token (LlamaTokenizer's
default, true, when absent); for tokenizer.json, its post_processor (a TemplateProcessing whose
single-sequence template starts with a special token prepends that token).

Needs only torch, sentencepiece and (for .safetensors, optional) safetensors; not transformers.
"""

import argparse
import json
import os
import sys

from . import export as t5_export
from .export import UserError, load_local_state_dict, save_contract
from .reexec import reexec_with

PROG = "export_hf"
DEFAULT_MAX_LENGTH_CAP = 2048


def fail(msg):
    print("%s: error: %s" % (PROG, msg), file=sys.stderr)
    sys.exit(1)


def note(msg):
    print("%s: note: %s" % (PROG, msg), file=sys.stderr)


def read_json(path, what):
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except OSError as e:
        raise UserError("cannot read %s %s: %s" % (what, path, e.strerror))
    except ValueError as e:
        raise UserError("%s %s is not valid JSON: %s" % (what, path, e))


def _id_or_none(raw, key, vocab, where):
    v = raw.get(key)
    if isinstance(v, list):  # e.g. Llama-3-Instruct's eos_token_id [128001, 128008, 128009]
        if not v:
            return None
        v = v[0]
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v < vocab:
        raise UserError("%s: %s must be an integer in [0, %d) or null, got %r" % (where, key, vocab, v))
    return v


# ---------------------------------------------------------------------------------------------
# Tokenizers
# ---------------------------------------------------------------------------------------------

def tokenizer_kind_of(path, data):
    """'bpe' for a tokenizer.json (a JSON object), 'sentencepiece' otherwise."""
    if path.endswith(".json") or data.lstrip()[:1] == b"{":
        return "bpe"
    return "sentencepiece"


def check_sentencepiece(data, path, vocab):
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor()
    try:
        sp.LoadFromSerializedProto(data)
    except Exception:
        raise UserError("tokenizer %s is not a sentencepiece model" % path)
    if sp.get_piece_size() > vocab:
        raise UserError("tokenizer %s has %d pieces, more than the model's vocab_size %d"
                        % (path, sp.get_piece_size(), vocab))
    return sp


def template_bos(post, path):
    """The id a tokenizer.json post_processor prepends to a single text, or None.

    Supported: null, ByteLevel (no special tokens: GPT-2, Qwen2), TemplateProcessing
    (Llama-3: "<|begin_of_text|>" $A) and a Sequence of those. A template that appends special
    tokens after the text (an EOS) is refused: the contract has no add_eos."""
    if post is None:
        return None
    kind = post.get("type")
    if kind == "ByteLevel":
        return None
    if kind == "Sequence":
        found = None
        for p in post.get("processors", []):
            b = template_bos(p, path)
            if b is not None:
                found = b
        return found
    if kind == "TemplateProcessing":
        single = post.get("single", [])
        specials = post.get("special_tokens", {})
        seen_text = False
        first = None
        for i, piece in enumerate(single):
            if "Sequence" in piece:
                seen_text = True
                continue
            tok = piece.get("SpecialToken", {}).get("id")
            if seen_text:
                raise UserError("tokenizer %s: post_processor appends special token %r after the text (an EOS); "
                                "the contract has no add_eos" % (path, tok))
            if i > 0:
                raise UserError("tokenizer %s: post_processor prepends more than one special token" % path)
            ids = specials.get(tok, {}).get("ids", [])
            if len(ids) != 1:
                raise UserError("tokenizer %s: post_processor special token %r has ids %r, expected one id"
                                % (path, tok, ids))
            first = ids[0]
        return first
    raise UserError("tokenizer %s: post_processor type %r is not supported (ByteLevel, TemplateProcessing, Sequence)"
                    % (path, kind))


def check_bpe(data, path, vocab):
    """Parse a tokenizer.json; returns (json, the id its post_processor prepends or None)."""
    try:
        tj = json.loads(data.decode("utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise UserError("tokenizer %s is not valid UTF-8 JSON: %s" % (path, e))
    if not isinstance(tj, dict) or not isinstance(tj.get("model"), dict):
        raise UserError("tokenizer %s is not a tokenizer.json (no \"model\" object)" % path)
    mtype = tj["model"].get("type")
    if mtype != "BPE":
        raise UserError("tokenizer %s: model type %r is not supported (only BPE)" % (path, mtype))
    ids = list(tj["model"].get("vocab", {}).values()) + [t.get("id") for t in tj.get("added_tokens", [])]
    bad = [i for i in ids if isinstance(i, bool) or not isinstance(i, int) or i < 0]
    if bad:
        raise UserError("tokenizer %s: token id %r is not a non-negative integer" % (path, bad[0]))
    if ids and max(ids) >= vocab:
        raise UserError("tokenizer %s has token id %d, beyond the model's vocab_size %d" % (path, max(ids), vocab))
    return tj, template_bos(tj.get("post_processor"), path)


def resolve_tokenizer(checkpoint, override, model_type, raw_cfg, vocab):
    """(kind, bytes, archive file name, token ids dict) for a causal checkpoint."""
    if override:
        path = override
    else:
        cands = [os.path.join(checkpoint, n) for n in ("tokenizer.model", "tokenizer.json")]
        found = [p for p in cands if os.path.isfile(p)]
        if not found:
            raise UserError("no tokenizer: %s has neither tokenizer.model nor tokenizer.json "
                            "(pass --tokenizer FILE)" % checkpoint)
        path = found[0]
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise UserError("cannot read tokenizer %s: %s" % (path, e.strerror))
    kind = tokenizer_kind_of(path, data)
    where = os.path.join(checkpoint, "config.json")
    bos = _id_or_none(raw_cfg, "bos_token_id", vocab, where)
    eos = _id_or_none(raw_cfg, "eos_token_id", vocab, where)
    pad = _id_or_none(raw_cfg, "pad_token_id", vocab, where)
    tc_path = os.path.join(checkpoint, "tokenizer_config.json")
    tok_cfg = read_json(tc_path, "tokenizer config") if os.path.isfile(tc_path) else {}
    if kind == "sentencepiece":
        sp = check_sentencepiece(data, path, vocab)
        add_bos = tok_cfg.get("add_bos_token")
        if add_bos is None:
            # LlamaTokenizer's default; other sentencepiece causal models are not expected here.
            add_bos = model_type in ("llama", "mistral")
        if not isinstance(add_bos, bool):
            raise UserError("%s: add_bos_token must be true or false, got %r" % (tc_path, add_bos))
        if add_bos:
            if bos is None:
                bos = sp.bos_id() if sp.bos_id() >= 0 else None
            if bos is None:
                raise UserError("the tokenizer prepends BOS but neither config.json nor %s defines a BOS id" % path)
            if sp.bos_id() >= 0 and sp.bos_id() != bos:
                raise UserError("tokenizer %s has BOS id %d but config.json says bos_token_id %d"
                                % (path, sp.bos_id(), bos))
        if eos is not None and sp.eos_id() >= 0 and sp.eos_id() != eos:
            note("tokenizer %s has EOS id %d, config.json says eos_token_id %d (config.json kept)"
                 % (path, sp.eos_id(), eos))
        name = "tokenizer.model"
    else:
        _, prepended = check_bpe(data, path, vocab)
        add_bos = prepended is not None
        if add_bos and bos != prepended:
            if bos is not None:
                note("tokenizer %s prepends id %d, config.json says bos_token_id %d: the tokenizer's id is kept"
                     % (path, prepended, bos))
            bos = prepended
        name = "tokenizer.json"
    return kind, data, name, {"bos_token_id": bos, "eos_token_id": eos, "pad_token_id": pad, "add_bos": bool(add_bos)}


# ---------------------------------------------------------------------------------------------
# Module, metadata, export
# ---------------------------------------------------------------------------------------------

def script_and_check(model, vocab):
    """torch.jit.script(model), checked against the eager module (same code: equal up to float
    noise) and the contract's output shape, on a right-padded batch of two lengths."""
    import torch

    with torch.no_grad():
        scripted = torch.jit.script(model)
        g = torch.Generator().manual_seed(0)
        ids = torch.randint(0, vocab, (2, 5), generator=g)
        mask = torch.ones_like(ids)
        mask[1, 3:] = 0
        a = model(ids, mask)
        b = scripted(ids, mask)
        if b.dtype != torch.float32 or tuple(b.shape) != (2, 5, vocab):
            raise RuntimeError("scripted module returned %s %s" % (b.dtype, tuple(b.shape)))
        if not torch.allclose(a, b, rtol=1e-5, atol=1e-5) or not torch.isfinite(b).all():
            raise RuntimeError("scripted module disagrees with the eager module")
    return scripted


CONFIG_FIELDS = {
    "gpt2": ("model_type", "vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
             "intermediate_size", "max_position_embeddings", "layer_norm_epsilon", "activation_function",
             "scale_attn_weights", "scale_attn_by_inverse_layer_idx", "tie_word_embeddings", "layers_prefix"),
    "llama": ("model_type", "vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
              "num_key_value_heads", "head_dim", "intermediate_size", "max_position_embeddings", "rms_norm_eps",
              "rope_theta", "rope_scaling", "hidden_act", "qkv_bias", "o_bias", "mlp_bias", "tie_word_embeddings",
              "sliding_window", "layers_prefix"),
}


def causal_metadata(cfg, max_length, source, kind, tok_name, ids):
    """quantppl.json (docs/model-contract.md, format_version 2) of a causal model."""
    fields = CONFIG_FIELDS["gpt2" if cfg["model_type"] == "gpt2" else "llama"]
    meta = {
        "format_version": 2,
        "architecture": "causal",
        "vocab_size": cfg["vocab_size"],
        "max_length": max_length,
        "source": source,
        "tokenizer": {"kind": kind, "file": tok_name},
        "config": {k: cfg[k] for k in fields},
    }
    meta.update(ids)
    return meta


def export_causal(checkpoint, out_path, raw_cfg, tokenizer=None, max_length=None):
    import torch

    from .causal_torchscript import build_module, load_hf_state_dict, normalize_config

    try:
        cfg = normalize_config(raw_cfg)
    except ValueError as e:
        raise UserError("%s: %s" % (os.path.join(checkpoint, "config.json"), e))
    limit = cfg["max_position_embeddings"]
    if max_length is None:
        max_length = min(limit, DEFAULT_MAX_LENGTH_CAP)
    if max_length > limit:
        raise UserError("--max-length %d exceeds the model's max_position_embeddings %d" % (max_length, limit))
    window = cfg.get("sliding_window")
    if window is not None and max_length > window:
        raise UserError("--max-length %d exceeds the model's sliding_window %d (sliding-window attention is not "
                        "implemented; export with --max-length %d or less)" % (max_length, window, window))

    kind, tok_bytes, tok_name, ids = resolve_tokenizer(checkpoint, tokenizer, cfg["model_type"], raw_cfg,
                                                       cfg["vocab_size"])
    state, weights_name = load_local_state_dict(checkpoint)
    with torch.no_grad():
        model = build_module(cfg, init=False)
        try:
            notes = load_hf_state_dict(model, state)
        except KeyError as e:
            raise UserError("%s (%s): %s" % (checkpoint, weights_name, e.args[0]))
        except RuntimeError as e:
            raise UserError("%s (%s): weights do not fit config.json: %s"
                            % (checkpoint, weights_name, str(e).strip().splitlines()[-1]))
        del state
        for n in notes:
            note(n)
        model.eval()
    scripted = script_and_check(model, cfg["vocab_size"])
    source = {"checkpoint": checkpoint, "exported_by": "scripts/export_hf.py", "torch_version": torch.__version__}
    meta = causal_metadata(cfg, max_length, source, kind, tok_name, ids)
    save_contract(scripted, out_path, meta, tok_bytes, prog=PROG, tokenizer_file=tok_name)
    n_params = sum(p.numel() for p in scripted.parameters())
    print("%s: wrote %s (%s, %d parameters, vocab %d, max_length %d, tokenizer %s, add_bos %s)"
          % (PROG, out_path, cfg["model_type"], n_params, cfg["vocab_size"], max_length, kind,
             "true" if ids["add_bos"] else "false"))
    return meta


def export(checkpoint, out_path, tokenizer=None, max_length=None):
    if not os.path.isdir(checkpoint):
        if os.path.exists(checkpoint):
            raise UserError("CHECKPOINT %s exists but is not a directory" % checkpoint)
        raise UserError("CHECKPOINT %s: no such directory (download one first, e.g. "
                        "huggingface-cli download TinyLlama/TinyLlama-1.1B-Chat-v1.0 --local-dir DIR)" % checkpoint)
    raw_cfg = read_json(os.path.join(checkpoint, "config.json"), "config")
    if not isinstance(raw_cfg, dict):
        raise UserError("%s is not a JSON object" % os.path.join(checkpoint, "config.json"))
    model_type = raw_cfg.get("model_type")
    if model_type == "t5":
        return t5_export.export(checkpoint, out_path, tokenizer, 512 if max_length is None else max_length,
                                exported_by="scripts/export_hf.py")
    return export_causal(checkpoint, out_path, raw_cfg, tokenizer, max_length)


def main(argv=None):
    # TorchScript writes a module's constants in set order, which depends on Python's string-hash
    # seed; a fixed seed makes two exports of the same checkpoint byte-identical (same sha256).
    if argv is None and os.environ.get("PYTHONHASHSEED") != "0":
        reexec_with(dict(os.environ, PYTHONHASHSEED="0"))
    ap = argparse.ArgumentParser(
        prog=PROG, description="Export a local Hugging Face checkpoint (T5, Llama, Mistral, Qwen2, GPT-2) to a "
                               "quantppl model file (docs/model-contract.md).")
    ap.add_argument("checkpoint", metavar="CHECKPOINT", help="local HF checkpoint directory")
    ap.add_argument("out", metavar="OUT.pt", help="output TorchScript file")
    ap.add_argument("--tokenizer", metavar="FILE",
                    help="tokenizer.model (sentencepiece) or tokenizer.json (BPE); default: the checkpoint's "
                         "tokenizer.model, else tokenizer.json (T5: spiece.model)")
    ap.add_argument("--max-length", type=int, default=None,
                    help="longest sequence the model is meant for (default: T5 512; causal "
                         "min(max_position_embeddings, %d))" % DEFAULT_MAX_LENGTH_CAP)
    args = ap.parse_args(argv)
    if args.max_length is not None and args.max_length <= 0:
        ap.error("--max-length must be a positive integer, got %d" % args.max_length)
    try:
        export(args.checkpoint, args.out, args.tokenizer, args.max_length)
    except UserError as e:
        fail(str(e))
    return 0


if __name__ == "__main__":
    sys.exit(main())
