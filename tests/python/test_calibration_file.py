"""The shipped calibration text (data/calibration.txt, data/README.md) and the numpy reader of the
calibration file (scripts/quantppl_tools/calibration_file.py)."""

import hashlib
import os
import struct
import subprocess
import sys

import numpy as np
import pytest

from quantppl_tools.calibration_file import read_calibration_file, write_calibration_file
from quantppl_tools.train import DOC_SOURCES

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CALIBRATION = os.path.join(REPO, "data", "calibration.txt")
EVAL = os.path.join(REPO, "data", "default_eval.txt")


def shingles(text, k=8):
    words = text.split()
    return {" ".join(words[i:i + k]) for i in range(len(words) - k + 1)}


def test_calibration_text_shares_no_8_word_sequence_with_the_eval_text():
    cal = open(CALIBRATION, encoding="utf-8").read()
    ev = open(EVAL, encoding="utf-8").read()
    assert len(cal) > 64_000  # > 16,384 tokens at ~4 characters a token
    assert not shingles(cal) & shingles(ev)


@pytest.mark.skipif(not os.path.isdir(DOC_SOURCES), reason="python3.11-doc is not installed")
def test_calibration_text_is_what_the_script_generates():
    r = subprocess.run([sys.executable, os.path.join(REPO, "scripts", "make_calibration_text.py"), "--check"],
                       capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=os.path.join(REPO, "scripts")))
    assert r.returncode == 0, r.stdout + r.stderr


def test_reader_round_trip_and_errors(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((40, 6)).astype(np.float32)
    h = (2.0 / 40 * x.T @ x).astype(np.float32)
    header = {"format": "quantppl-calibration", "format_version": 1, "model_sha256": "a" * 64, "text": "t.txt",
              "text_sha256": "b" * 64, "tokens": 40, "groups": [{"in_features": 6, "tokens": 40}],
              "layers": [{"name": "q", "group": 0}, {"name": "k", "group": 0}]}
    path = tmp_path / "s.qcal"
    write_calibration_file(str(path), header, [(h, np.abs(x).mean(0), np.abs(x).max(0))])
    data = path.read_bytes()
    assert data[:8] == b"QPPLCAL1"
    (hlen,) = struct.unpack("<Q", data[8:16])
    assert len(data) == 16 + hlen + 4 * (36 + 12) + 32
    assert hashlib.sha256(data[:-32]).digest() == data[-32:]
    stats = read_calibration_file(str(path))
    assert stats["layer_order"] == ["q", "k"]
    assert np.array_equal(stats["layers"]["k"]["hessian"], h)
    assert stats["layers"]["q"]["group"] == stats["layers"]["k"]["group"] == 0
    path.write_bytes(data[:-1])
    with pytest.raises(ValueError):
        read_calibration_file(str(path))
