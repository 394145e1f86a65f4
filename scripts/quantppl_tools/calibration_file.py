"""Read (and write) quantppl's calibration statistics file with numpy, for reference tests.

The format is docs/calibration.md's (include/quantppl/methods/calibration_file.h):

    8 bytes   magic b"QPPLCAL1"
    8 bytes   header length H, unsigned little-endian
    H bytes   header, UTF-8 JSON
    D bytes   per group, float32 little-endian: hessian (in x in), mean_abs (in), max_abs (in)
    32 bytes  SHA-256 of all bytes before it

    stats = read_calibration_file("c.qcal")
    stats["layers"]["encoder.block.0.layer.0.SelfAttention.q"]["hessian"]   # np.float32 [in, in]

Every layer's dict holds name, in_features, tokens, group (the shared_input id), hessian,
mean_abs, max_abs; layers of one group share the same arrays. Raises ValueError for a file that
is not well-formed (the C++ reader's checks, less thorough messages).
"""

import hashlib
import json
import struct

import numpy as np

MAGIC = b"QPPLCAL1"
FORMAT = "quantppl-calibration"
VERSION = 1


def read_calibration_file(path):
    with open(path, "rb") as f:
        data = f.read()
    if len(data) < 16 + 2 + 32 or data[:8] != MAGIC:
        raise ValueError("%s: not a quantppl calibration file" % path)
    if hashlib.sha256(data[:-32]).digest() != data[-32:]:
        raise ValueError("%s: SHA-256 mismatch (corrupt file)" % path)
    (hlen,) = struct.unpack("<Q", data[8:16])
    header = json.loads(data[16:16 + hlen].decode("utf-8"))
    if header.get("format") != FORMAT or header.get("format_version") != VERSION:
        raise ValueError("%s: unsupported format %r version %r" % (path, header.get("format"),
                                                                 header.get("format_version")))
    offset = 16 + hlen
    groups = []
    for g in header["groups"]:
        n = int(g["in_features"])
        arrays = {}
        for key, count, shape in (("hessian", n * n, (n, n)), ("mean_abs", n, (n,)), ("max_abs", n, (n,))):
            arrays[key] = np.frombuffer(data, dtype="<f4", count=count, offset=offset).reshape(shape)
            offset += 4 * count
        arrays["in_features"] = n
        arrays["tokens"] = int(g["tokens"])
        groups.append(arrays)
    if offset != len(data) - 32:
        raise ValueError("%s: size does not match the header" % path)
    layers = {}
    for entry in header["layers"]:
        g = groups[int(entry["group"])]
        layers[entry["name"]] = dict(g, name=entry["name"], group=int(entry["group"]))
    return {
        "model_sha256": header["model_sha256"],
        "text": header["text"],
        "text_sha256": header["text_sha256"],
        "tokens": int(header["tokens"]),
        "groups": groups,
        "layers": layers,
        "layer_order": [e["name"] for e in header["layers"]],
    }


def write_calibration_file(path, header, group_arrays):
    """Write a file from a header dict and [(hessian, mean_abs, max_abs)] (tests build hostile files)."""
    head = json.dumps(header).encode("utf-8")
    body = MAGIC + struct.pack("<Q", len(head)) + head
    for arrays in group_arrays:
        for a in arrays:
            body += np.ascontiguousarray(a, dtype="<f4").tobytes()
    with open(path, "wb") as f:
        f.write(body + hashlib.sha256(body).digest())
