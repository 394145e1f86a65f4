"""Export a Hugging Face T5 checkpoint to a quantppl model file (docs/model-contract.md).

usage: /usr/bin/python3 scripts/export_t5.py CHECKPOINT OUT.pt [--tokenizer spiece.model] [--max-length 512]

CHECKPOINT is a local Hugging Face directory (config.json + model.safetensors or
pytorch_model.bin, possibly sharded with an index, and usually spiece.model), or a hub id such
as google/flan-t5-small when transformers is installed and the machine can reach the hub.
A local checkpoint needs only torch (+ safetensors for .safetensors files) and sentencepiece.

The module is built from config.json (t5_torchscript.py), the weights are loaded strictly
(every key used, none missing), the module is scripted with torch.jit.script (not traced: any
batch size and lengths work), checked against the eager module on a small input
(script_and_check), and saved atomically with the extra files quantppl.json (contract_metadata)
and tokenizer.model (check_tokenizer_bytes) by save_contract. bench_models.py builds its
random-weight models through the same four functions.
"""

import argparse
import json
import os
import sys
import tempfile

from .reexec import reexec_with

PROG = "export_t5"


class UserError(Exception):
    """An error in the user's input: printed as one line, exit status 1."""


def fail(msg):
    print("%s: error: %s" % (PROG, msg), file=sys.stderr)
    sys.exit(1)


# safetensors dtype names -> torch dtypes (the ones a T5 checkpoint can hold).
_ST_DTYPES = {"F32": "float32", "F16": "float16", "BF16": "bfloat16", "F64": "float64",
              "I64": "int64", "I32": "int32", "I16": "int16", "I8": "int8", "U8": "uint8", "BOOL": "bool"}


def read_safetensors(path):
    """Minimal reader of the safetensors format, used when the package is not installed.

    Layout: 8-byte little-endian header length N, N bytes of JSON
    {name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {...}},
    then the raw little-endian tensor bytes; offsets are relative to the end of the header.
    """
    import struct
    import torch

    with open(path, "rb") as f:
        data = f.read()
    if len(data) < 8:
        raise UserError("cannot read %s: too short for a safetensors file" % path)
    (n,) = struct.unpack("<Q", data[:8])
    try:
        header = json.loads(data[8:8 + n].decode("utf-8"))
    except (ValueError, UnicodeDecodeError):
        raise UserError("cannot read %s: not a safetensors file (bad header)" % path)
    body = bytearray(data[8 + n:])  # writable buffer for torch.frombuffer
    state = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        if info.get("dtype") not in _ST_DTYPES:
            raise UserError("cannot read %s: tensor %s has unsupported dtype %r" % (path, name, info.get("dtype")))
        dtype = getattr(torch, _ST_DTYPES[info["dtype"]])
        begin, end = info["data_offsets"]
        if not 0 <= begin <= end <= len(body):
            raise UserError("cannot read %s: tensor %s lies outside the file" % (path, name))
        if end == begin:
            t = torch.empty(info["shape"], dtype=dtype)
        else:
            t = torch.frombuffer(body, dtype=dtype, count=-1, offset=begin)[: (end - begin) // t_size(dtype)]
            t = t.reshape(info["shape"]).clone()
        state[name] = t
    return state


def t_size(dtype):
    import torch
    return torch.empty((), dtype=dtype).element_size()


def load_local_state_dict(ckpt_dir):
    """Read the weights of a local HF checkpoint directory without transformers."""
    import torch

    st_single = os.path.join(ckpt_dir, "model.safetensors")
    st_index = os.path.join(ckpt_dir, "model.safetensors.index.json")
    pt_single = os.path.join(ckpt_dir, "pytorch_model.bin")
    pt_index = os.path.join(ckpt_dir, "pytorch_model.bin.index.json")

    def load_st(path):
        try:
            from safetensors.torch import load_file
        except ImportError:
            load_file = None
        try:
            if load_file is not None:
                return load_file(path, device="cpu")
            return read_safetensors(path)
        except UserError:
            raise
        except Exception as e:  # corrupt file, wrong format
            raise UserError("cannot read %s: %s" % (path, str(e).splitlines()[0] if str(e) else type(e).__name__))

    def load_pt(path):
        try:
            return torch.load(path, map_location="cpu")
        except Exception as e:
            raise UserError("cannot read %s: %s" % (path, str(e).splitlines()[0] if str(e) else type(e).__name__))

    def load_index(index_path, loader):
        try:
            with open(index_path, encoding="utf-8") as f:
                weight_map = json.load(f)["weight_map"]
        except (OSError, ValueError, KeyError) as e:
            raise UserError("cannot read the weight index %s: %s" % (index_path, e))
        state = {}
        for shard in sorted(set(weight_map.values())):
            state.update(loader(os.path.join(ckpt_dir, shard)))
        return state

    if os.path.isfile(st_single):
        return load_st(st_single), "model.safetensors"
    if os.path.isfile(st_index):
        return load_index(st_index, load_st), "model.safetensors (sharded)"
    if os.path.isfile(pt_single):
        return load_pt(pt_single), "pytorch_model.bin"
    if os.path.isfile(pt_index):
        return load_index(pt_index, load_pt), "pytorch_model.bin (sharded)"
    raise UserError("%s has no model.safetensors or pytorch_model.bin (nor a sharded index)" % ckpt_dir)


def load_from_hub(hub_id):
    """Fetch config, weights and spiece.model through transformers (needs the network)."""
    try:
        import transformers
        from transformers import T5ForConditionalGeneration
        from huggingface_hub import hf_hub_download
    except ImportError:
        raise UserError("CHECKPOINT %r is not a local directory, and transformers is not installed to fetch "
                        "it from the hub (run scripts/setup_python_env.sh, or pass a local directory)" % hub_id)
    try:
        hf = T5ForConditionalGeneration.from_pretrained(hub_id)
        spiece = hf_hub_download(hub_id, "spiece.model")
    except Exception as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError("cannot fetch %r from the Hugging Face hub (offline, or not a T5 checkpoint): %s"
                        % (hub_id, first))
    return hf.config.to_dict(), hf.state_dict(), spiece, transformers.__version__


def read_tokenizer(path, cfg):
    """Read and check the sentencepiece model; returns its serialized bytes."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise UserError("cannot read tokenizer %s: %s" % (path, e.strerror))
    return check_tokenizer_bytes(data, cfg, path)


def check_tokenizer_bytes(data, cfg, path):
    """Check a serialized sentencepiece model against the config (at most vocab_size pieces, the
    same eos and pad ids); returns `data`. `path` names it in the error messages."""
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor()
    try:
        sp.LoadFromSerializedProto(data)
    except Exception:
        raise UserError("tokenizer %s is not a sentencepiece model" % path)
    if sp.get_piece_size() > cfg["vocab_size"]:
        raise UserError("tokenizer %s has %d pieces, more than the model's vocab_size %d"
                        % (path, sp.get_piece_size(), cfg["vocab_size"]))
    if sp.eos_id() != cfg["eos_token_id"]:
        raise UserError("tokenizer %s has eos id %d but config.json says eos_token_id %d"
                        % (path, sp.eos_id(), cfg["eos_token_id"]))
    if sp.pad_id() != cfg["pad_token_id"]:
        raise UserError("tokenizer %s has pad id %d but config.json says pad_token_id %d"
                        % (path, sp.pad_id(), cfg["pad_token_id"]))
    return data


def script_and_check(model, cfg):
    """torch.jit.script(model), checked: the scripted module must agree with the eager one (same
    code, so exactly up to float noise) and have the contract's output shape, on a small padded
    batch of two different lengths."""
    import torch

    with torch.no_grad():
        scripted = torch.jit.script(model)
        g = torch.Generator().manual_seed(0)
        ids = torch.randint(0, cfg["vocab_size"], (2, 5), generator=g)
        mask = torch.ones_like(ids)
        mask[1, 3:] = 0
        dec = torch.randint(0, cfg["vocab_size"], (2, 4), generator=g)
        a = model(ids, mask, dec)
        b = scripted(ids, mask, dec)
        if b.dtype != torch.float32 or tuple(b.shape) != (2, 4, cfg["vocab_size"]):
            raise RuntimeError("scripted module returned %s %s" % (b.dtype, tuple(b.shape)))
        if not torch.allclose(a, b, rtol=1e-5, atol=1e-5) or not torch.isfinite(b).all():
            raise RuntimeError("scripted module disagrees with the eager module")
    return scripted


def contract_metadata(cfg, max_length, source):
    """quantppl.json (docs/model-contract.md) of a model built from the normalized config `cfg`;
    `source` says where the weights came from."""
    return {
        "format_version": 1,
        "architecture": "t5",
        "vocab_size": cfg["vocab_size"],
        "pad_token_id": cfg["pad_token_id"],
        "eos_token_id": cfg["eos_token_id"],
        "decoder_start_token_id": cfg["decoder_start_token_id"],
        "max_length": max_length,
        "source": source,
        "config": {k: cfg[k] for k in (
            "d_model", "d_ff", "d_kv", "num_heads", "num_layers", "num_decoder_layers", "feed_forward_proj",
            "relative_attention_num_buckets", "relative_attention_max_distance", "tie_word_embeddings",
            "layer_norm_epsilon")},
    }


def save_contract(scripted, out_path, meta, tok_bytes, prog=PROG, tokenizer_file="tokenizer.model"):
    """Save the contract file atomically: into a fresh temporary directory beside the output,
    under the final file name (torch.jit.save names the archive's top folder after the file, so a
    random temporary *file* name would end up inside the archive and make exports differ byte for
    byte), then rename over the output."""
    import torch

    out_dir = os.path.dirname(os.path.abspath(out_path))
    if not os.path.isdir(out_dir):
        raise UserError("output directory %s does not exist" % out_dir)
    tmp_dir = tempfile.mkdtemp(prefix=".%s." % prog, dir=out_dir)
    tmp = os.path.join(tmp_dir, os.path.basename(out_path))
    try:
        torch.jit.save(scripted, tmp, _extra_files={
            "quantppl.json": json.dumps(meta, indent=2, sort_keys=True).encode("utf-8"),
            tokenizer_file: tok_bytes,
        })
        os.chmod(tmp, 0o644)
        os.replace(tmp, out_path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
        os.rmdir(tmp_dir)


def export(checkpoint, out_path, tokenizer=None, max_length=512, exported_by="scripts/export_t5.py"):
    import torch

    from .t5_torchscript import T5ForLogits, load_hf_state_dict, normalize_config

    transformers_version = None
    if os.path.isdir(checkpoint):
        config_path = os.path.join(checkpoint, "config.json")
        try:
            with open(config_path, encoding="utf-8") as f:
                raw_cfg = json.load(f)
        except OSError as e:
            raise UserError("cannot read %s: %s" % (config_path, e.strerror))
        except ValueError as e:
            raise UserError("%s is not valid JSON: %s" % (config_path, e))
        if raw_cfg.get("model_type", "t5") != "t5":
            raise UserError("%s: model_type is %r, only 't5' is supported" % (config_path, raw_cfg.get("model_type")))
        state, weights_name = load_local_state_dict(checkpoint)
        default_tok = os.path.join(checkpoint, "spiece.model")
    elif os.path.exists(checkpoint):
        raise UserError("CHECKPOINT %s exists but is not a directory" % checkpoint)
    elif checkpoint.startswith((".", "/")) or checkpoint.count("/") > 1 or not checkpoint.strip():
        raise UserError("CHECKPOINT %s: no such directory" % checkpoint)
    else:
        raw_cfg, state, default_tok, transformers_version = load_from_hub(checkpoint)
        weights_name = "hub"

    try:
        cfg = normalize_config(raw_cfg)
    except ValueError as e:
        raise UserError("%s: %s" % (checkpoint, e))

    tok_path = tokenizer or default_tok
    if not os.path.isfile(tok_path):
        raise UserError("no tokenizer: %s does not exist (pass --tokenizer PATH to a sentencepiece model)" % tok_path)
    tok_bytes = read_tokenizer(tok_path, cfg)

    with torch.no_grad():
        model = T5ForLogits(cfg)
        try:
            notes = load_hf_state_dict(model, state)
        except KeyError as e:
            raise UserError("%s (%s): %s" % (checkpoint, weights_name, e.args[0]))
        except RuntimeError as e:  # shape mismatch
            raise UserError("%s (%s): weights do not fit config.json: %s"
                            % (checkpoint, weights_name, str(e).strip().splitlines()[-1]))
        for n in notes:
            print("%s: note: %s" % (PROG, n), file=sys.stderr)
        model.eval()
    scripted = script_and_check(model, cfg)

    source = {"checkpoint": checkpoint, "exported_by": exported_by, "torch_version": torch.__version__}
    if transformers_version:
        source["transformers_version"] = transformers_version
    meta = contract_metadata(cfg, max_length, source)
    save_contract(scripted, out_path, meta, tok_bytes)
    n_params = sum(p.numel() for p in scripted.parameters())
    print("%s: wrote %s (%d parameters, vocab %d, max_length %d)" % (PROG, out_path, n_params, cfg["vocab_size"], max_length))
    return meta


def main(argv=None):
    # TorchScript writes a module's constants in set order, which depends on Python's string-hash
    # seed; a fixed seed makes two exports of the same checkpoint byte-identical (same sha256).
    if argv is None and os.environ.get("PYTHONHASHSEED") != "0":
        reexec_with(dict(os.environ, PYTHONHASHSEED="0"))
    ap = argparse.ArgumentParser(prog=PROG, description="Export a Hugging Face T5 checkpoint to a quantppl model file.")
    ap.add_argument("checkpoint", metavar="CHECKPOINT", help="local HF checkpoint directory or hub id")
    ap.add_argument("out", metavar="OUT.pt", help="output TorchScript file")
    ap.add_argument("--tokenizer", metavar="spiece.model", help="sentencepiece model (default CHECKPOINT/spiece.model)")
    ap.add_argument("--max-length", type=int, default=512, help="longest input/decoder length the model is meant for (default 512)")
    args = ap.parse_args(argv)
    if args.max_length <= 0:
        ap.error("--max-length must be a positive integer, got %d" % args.max_length)
    try:
        export(args.checkpoint, args.out, args.tokenizer, args.max_length)
    except UserError as e:
        fail(str(e))
    return 0


if __name__ == "__main__":
    sys.exit(main())
