#!/usr/bin/env python3
"""What a q4_1 / q5_1 file holding HQQ's parameters computes, through the gguf package (gguf-py,
llama.cpp's reference in Python), for tests/methods/hqq_test.cpp.

Independently of quantppl, from the weight W and HQQ's float32 inverse scales k and zero points z:
  codes  q = clip(rint(fl32(W * k) + z), 0, L)   (numpy float32, round half to even)
  d      = float16(fl32(1 / k)),  m = float16(-(z * float32(d)))
Then ggml's block bytes are assembled from quantppl's stored d, m and codes (q4_1: d, m, 16 bytes
of nibbles, element j low and j + 16 high; q5_1: d, m, the 32 fifth bits as a little-endian
uint32, then the low nibbles the same way) and gguf.quants.dequantize computes x_hat.

usage: hqq_gguf_reference.py DIR
  DIR/meta.json {"out", "in", "bits"}; DIR/W.f32, DIR/k.f32, DIR/z.f32 (per block of 32),
  DIR/codes.i32 (quantppl's codes), DIR/d.u16, DIR/m.u16 (quantppl's stored float16 bits).
Writes DIR/xhat.f32; prints {"codes_differ": n, "d_differ": n, "m_differ": n, "blocks": n}.
"""
import json
import os
import sys

import numpy as np
import gguf
from gguf import GGMLQuantizationType


def main():
    d = sys.argv[1]
    with open(os.path.join(d, "meta.json")) as f:
        meta = json.load(f)
    n_out, n_in, bits = meta["out"], meta["in"], meta["bits"]
    read = lambda name, dt: np.fromfile(os.path.join(d, name), dtype=dt)
    w = read("W.f32", np.float32).reshape(-1, 32)
    k, z = read("k.f32", np.float32)[:, None], read("z.f32", np.float32)[:, None]
    codes = read("codes.i32", np.int32).reshape(-1, 32)
    d16, m16 = read("d.u16", np.uint16), read("m.u16", np.uint16)
    L = np.float32(2 ** bits - 1)

    q_ref = np.clip(np.rint((w * k).astype(np.float32) + z), np.float32(0), L).astype(np.int32)
    d_ref = (np.float32(1) / k[:, 0]).astype(np.float16)
    m_ref = (-(z[:, 0] * d_ref.astype(np.float32))).astype(np.float16)

    q = codes.astype(np.uint8)
    blocks = q.shape[0]
    lo = (q[:, :16] & 0x0F) | ((q[:, 16:] & 0x0F) << 4)
    parts = [d16.view(np.uint8).reshape(blocks, 2), m16.view(np.uint8).reshape(blocks, 2)]
    if bits == 5:
        parts.append(np.packbits((q >> 4).reshape(blocks, 1, 32), axis=-1, bitorder="little").reshape(blocks, 4))
        qtype = GGMLQuantizationType.Q5_1
    else:
        qtype = GGMLQuantizationType.Q4_1
    parts.append(lo.astype(np.uint8))
    raw = np.concatenate(parts, axis=-1).reshape(n_out, -1)
    xhat = gguf.quants.dequantize(raw, qtype).astype(np.float32).reshape(n_out, n_in)
    xhat.tofile(os.path.join(d, "xhat.f32"))
    print(json.dumps({"codes_differ": int((q_ref != codes).sum()), "d_differ": int((d_ref.view(np.uint16) != d16).sum()),
                      "m_differ": int((m_ref.view(np.uint16) != m16).sum()), "blocks": int(blocks)}))


if __name__ == "__main__":
    main()
