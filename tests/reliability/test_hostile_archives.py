"""Hostile model files, archives and JSON (issue 20): every corrupt or implausible input is a one-line
error with the right exit code (3 data, 4 I/O) naming the file, quickly, and never a signal, a hang
or a result computed from a corrupt file.

The inputs are generated here from the tiny fixture: a byte flipped inside a storage record, the
metadata edited in place, truncations, a storage record rewritten shorter with a valid CRC-32,
deeply nested JSON (quantppl.json, a --check file, a .qpack header), huge declared sizes, a zip
bomb, implausible metadata, bad TorchScript code, meta and sparse logits, .qpack files with an
empty or duplicated layer list or whose source model is /dev/zero or a FIFO. docs/reliability.md
("Integrity verification and limits") lists the guarantees. Run by CTest as `cli_reliability`.
"""

import hashlib
import json
import os
import shutil
import struct
import subprocess
import zipfile

import pytest

from cli.conftest import BIN, EXIT_DATA, EXIT_IO, TINY

# Every hostile input must fail fast: well under this (the tiny model loads in ~1 s).
TIMEOUT = 60


def run(*args, timeout=TIMEOUT):
    return subprocess.run([BIN, *args], capture_output=True, text=True, timeout=timeout)


def assert_clean_error(result, code, *needles):
    assert result.returncode == code, (result.returncode, result.stderr)
    err = result.stderr.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith("quantppl: error:"), err
    for needle in needles:
        assert needle in err, err
    for crash in ("terminate called", "Exception raised from", "frame #", "Segmentation", "Aborted", "internal error"):
        assert crash not in result.stderr
    assert result.stdout == ""


def compare(model, *extra):
    return run("compare", "--model", str(model), "--variants", "fp32", "--quiet", *extra)


def members():
    with zipfile.ZipFile(TINY) as z:
        return {i.filename: z.read(i.filename) for i in z.infolist()}, [i.filename for i in z.infolist()]


def rezip(out, replace=None, deflate=()):
    """tiny.pt rewritten by Python's zipfile (valid CRC-32s), with some members replaced."""
    data, order = members()
    with zipfile.ZipFile(out, "w") as z:
        for name in order:
            content = data[name]
            for suffix, new in (replace or {}).items():
                if name.endswith(suffix):
                    content = new(content) if callable(new) else new
            method = zipfile.ZIP_DEFLATED if any(name.endswith(s) for s in deflate) else zipfile.ZIP_STORED
            z.writestr(zipfile.ZipInfo(name), content, compress_type=method)
    return out


def data_offset(path, name):
    with zipfile.ZipFile(path) as z:
        info = z.getinfo(name)
    with open(path, "rb") as f:
        f.seek(info.header_offset)
        header = f.read(30)
    name_len, extra_len = struct.unpack("<HH", header[26:30])
    return info.header_offset + 30 + name_len + extra_len, info.file_size


def largest_storage():
    data, _ = members()
    return max((n for n in data if "/data/" in n), key=lambda n: len(data[n]))


def test_rezipped_fixture_still_loads(tmp_path):
    # The generators below rely on a zipfile-written archive being a valid model when unchanged.
    model = rezip(tmp_path / "same.pt")
    r = run("inspect", "--model", str(model), "--variant", "absmax:8", "--format", "json")
    assert r.returncode == 0, r.stderr


def test_flipped_byte_in_a_storage_record_is_a_crc_error(tmp_path):
    model = tmp_path / "flipped.pt"
    shutil.copy(TINY, model)
    name = largest_storage()
    offset, size = data_offset(model, name)
    with open(model, "r+b") as f:
        f.seek(offset + size // 2)
        byte = f.read(1)
        f.seek(offset + size // 2)
        f.write(bytes([byte[0] ^ 0x01]))
    assert_clean_error(compare(model), EXIT_DATA, str(model), f"member '{name}'", "CRC-32 mismatch")


def test_metadata_edited_in_place_is_a_crc_error(tmp_path):
    model = tmp_path / "edited.pt"
    raw = open(TINY, "rb").read()
    assert raw.count(b'"max_length": 64') == 1
    model.write_bytes(raw.replace(b'"max_length": 64', b'"max_length": 32'))
    assert_clean_error(compare(model), EXIT_DATA, str(model), "quantppl.json", "CRC-32 mismatch")


@pytest.mark.parametrize("fraction", [0.1, 0.5, 0.999])
def test_truncated_archive(tmp_path, fraction):
    model = tmp_path / "truncated.pt"
    raw = open(TINY, "rb").read()
    model.write_bytes(raw[:int(len(raw) * fraction)])
    assert_clean_error(compare(model), EXIT_DATA, str(model))


def test_short_storage_record_with_a_valid_crc(tmp_path):
    name = largest_storage()
    model = rezip(tmp_path / "short.pt", replace={name: lambda b: b[:len(b) // 2]})
    assert_clean_error(compare(model), EXIT_DATA, str(model), "storage record")


def test_huge_declared_sizes(tmp_path):
    # The central directory entry of the largest record declares 4 GB (compressed and uncompressed).
    model = tmp_path / "huge.pt"
    raw = bytearray(open(TINY, "rb").read())
    name = largest_storage().encode()
    at = raw.rfind(b"PK\x01\x02", 0, raw.rfind(name))
    raw[at + 20:at + 28] = struct.pack("<II", 0xFFFFFFF0, 0xFFFFFFF0)
    model.write_bytes(bytes(raw))
    assert_clean_error(compare(model), EXIT_DATA, str(model), "beyond the file")


def test_zip_bomb_tokenizer(tmp_path):
    # tokenizer.model deflated to ~100 KB that expands to 100 MiB.
    model = rezip(tmp_path / "bomb.pt", replace={"extra/tokenizer.model": lambda b: b + bytes(100 << 20)},
                  deflate=("extra/tokenizer.model",))
    assert os.path.getsize(model) < os.path.getsize(TINY) + (1 << 20)
    assert_clean_error(compare(model), EXIT_DATA, str(model), "tokenizer.model", "limit")


def nested(depth):
    return ("[" * depth + "]" * depth).encode()


def test_deeply_nested_metadata(tmp_path):
    model = rezip(tmp_path / "nested.pt", replace={"extra/quantppl.json": nested(100000)})
    assert_clean_error(compare(model), EXIT_DATA, str(model), "quantppl.json", "nested deeper than 64")


def test_deeply_nested_check_file(tmp_path):
    check = tmp_path / "check.json"
    check.write_bytes(b'{"variants": ' + nested(200000) + b"}")
    assert_clean_error(compare(TINY, "--check", str(check)), EXIT_DATA, str(check), "nested deeper than 64")


@pytest.mark.parametrize("field,value", [("max_length", 10**12), ("vocab_size", 10**12), ("max_length", 2**63 - 1)])
def test_implausible_metadata(tmp_path, field, value):
    def change(b):
        meta = json.loads(b)
        meta[field] = value
        return json.dumps(meta).encode()
    model = rezip(tmp_path / "implausible.pt", replace={"extra/quantppl.json": change})
    assert_clean_error(compare(model), EXIT_DATA, str(model), f"field '{field}'", "plausible maximum")


def test_bad_torchscript_code(tmp_path):
    data, _ = members()
    code = next(n for n in data if n.endswith("/code/__torch__/torch/nn/modules/linear.py"))
    model = rezip(tmp_path / "badcode.pt", replace={code: b"class Linear(Module):\n  def forward(self) -> Tensor:\n    return 1 +\n"})
    assert_clean_error(compare(model), EXIT_DATA, str(model))


TORCH_MODULE = r"""
import sys, zipfile, torch
from torch import Tensor, nn

class Odd(nn.Module):
    def __init__(self):
        super().__init__()
        self.lm_head = nn.Linear(4, 4)

    def forward(self, input_ids: Tensor, attention_mask: Tensor, decoder_input_ids: Tensor) -> Tensor:
        b, t = decoder_input_ids.shape[0], decoder_input_ids.shape[1]
        KIND

tiny, out = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(tiny) as z:
    extra = {n.split("/extra/")[1]: z.read(n) for n in z.namelist() if "/extra/" in n}
torch.jit.save(torch.jit.script(Odd()), out, _extra_files=extra)
"""


@pytest.mark.parametrize("kind,code", [
    ("meta", "return torch.zeros([b, t, 384], device=torch.device('meta'))"),
    ("sparse", "return torch.zeros([b, t, 384]).to_sparse()"),
])
def test_meta_and_sparse_logits(tmp_path, kind, code):
    model = tmp_path / f"{kind}.pt"
    script = tmp_path / "make_module.py"  # torch.jit.script needs the source in a file
    script.write_text(TORCH_MODULE.replace("KIND", code))
    subprocess.run(["/usr/bin/python3", str(script), TINY, str(model)], check=True)
    assert_clean_error(compare(model), EXIT_DATA, str(model), "forward")


def test_model_that_is_a_fifo_fails_at_once(tmp_path):
    fifo = tmp_path / "model.pt"
    os.mkfifo(fifo)
    assert_clean_error(compare(fifo), EXIT_IO, str(fifo), "FIFO")
    assert_clean_error(run("compare", "--model", "/dev/zero", "--variants", "fp32", "--quiet"), EXIT_IO,
                       "/dev/zero", "character device")


# ---- .qpack ----

def pack(tmp_path, *extra):
    out = tmp_path / "p.qpack"
    r = run("quantize", "--model", TINY, "--variant", "absmax:4:channel", "--packed", str(out), *extra)
    assert r.returncode == 0, r.stderr
    return out


def rewrite_header(path, out, change):
    """A .qpack with its JSON header changed (and a matching header SHA-256 and padding)."""
    raw = open(path, "rb").read()
    (length,) = struct.unpack("<Q", raw[16:24])
    header = json.loads(raw[88:88 + length])
    payload_at = (88 + length + 63) // 64 * 64
    text = change(header)
    text = text if isinstance(text, bytes) else (json.dumps(header) + "\n").encode()
    start = 88 + len(text)
    padded = (start + 63) // 64 * 64
    data = raw[:16] + struct.pack("<Q", len(text)) + hashlib.sha256(text).hexdigest().encode() + text
    data += bytes(padded - start) + raw[payload_at:]
    out.write_bytes(data)
    return out


def test_qpack_with_empty_or_duplicate_layers(tmp_path):
    good = pack(tmp_path, "--no-embed")
    empty = rewrite_header(good, tmp_path / "empty.qpack", lambda h: h.update(layers=[]))
    assert_clean_error(compare(empty), EXIT_DATA, str(empty), "field 'layers' is empty")
    dup = rewrite_header(good, tmp_path / "dup.qpack",
                         lambda h: h["layers"][1].update(name=h["layers"][0]["name"]))
    assert_clean_error(compare(dup), EXIT_DATA, str(dup), "appears twice")


def test_qpack_with_overflowing_shape(tmp_path):
    good = pack(tmp_path, "--no-embed")
    bad = rewrite_header(good, tmp_path / "shape.qpack",
                         lambda h: h["layers"][0].update(shape=[2**31, 2**31], numel=2**62))
    assert_clean_error(compare(bad), EXIT_DATA, str(bad), "layers[0].shape")


def test_qpack_with_nested_header(tmp_path):
    good = pack(tmp_path, "--no-embed")
    bad = rewrite_header(good, tmp_path / "nested.qpack", lambda h: nested(100000))
    assert_clean_error(compare(bad), EXIT_DATA, str(bad), "nested deeper than 64")


def test_qpack_whose_source_is_dev_zero_or_a_fifo_fails_at_once(tmp_path):
    good = pack(tmp_path, "--no-embed")
    fifo = tmp_path / "fifo.pt"
    os.mkfifo(fifo)
    for source, kind in (("/dev/zero", "character device"), (str(fifo), "FIFO")):
        bad = rewrite_header(good, tmp_path / "src.qpack", lambda h: h["source_model"].update(path=source))
        assert_clean_error(compare(bad), EXIT_IO, str(bad), source, kind)


def test_qpack_whose_source_model_changed_size(tmp_path):
    model = tmp_path / "m.pt"
    shutil.copy(TINY, model)
    out = tmp_path / "p.qpack"
    r = run("quantize", "--model", str(model), "--variant", "absmax:8", "--packed", str(out), "--no-embed")
    assert r.returncode == 0, r.stderr
    with open(model, "ab") as f:
        f.write(b"\0")
    assert_clean_error(compare(out), EXIT_DATA, str(out), "changed since packing")
