"""A very long single line (issue 6): tens of MB without a newline must be tokenized in bounded
memory. text_windows.h cuts lines longer than 64 KiB at whitespace before sentencepiece sees them;
encoding such a line in one call costs sentencepiece ~90 bytes of memory per input byte (a 20 MB
line: ~2 GB).

`sensitivity --max-tokens` reads, validates, hashes and tokenizes the whole text, then evaluates
only its first tokens, so the test measures the text path without an hour of forward passes.
(compare evaluates every token: ~3 minutes per MB of text on the tiny model, 2 cores.)
"""

import hashlib
import json
import os
import subprocess
import sys

from cli.conftest import BIN, DEFAULT_TEXT, TINY

LINE_BYTES = 20 * 1024 * 1024
# Peak RSS allowed on top of the same command on the default text, per byte of the line. Measured
# 8.2 (20 MB: the text, its ids and windows at 8 bytes a token, ~0.42 tokens a byte on the tiny
# tokenizer); encoding the line in one sentencepiece call would take ~90.
kRssPerTextByte = 16
# AddressSanitizer adds redzones and a quarantine of freed memory (256 MB by default) on top.
kAsanSlackBytes = 512 * 1024 * 1024


# Peak RSS is measured by a small Python in between: a child forked from this pytest process (which
# may hold torch, hundreds of MB) inherits the parent's resident pages until it execs, and Linux
# counts them in the child's ru_maxrss.
RSS_WRAPPER = """
import resource, subprocess, sys
with open(sys.argv[1], "wb") as out:
    code = subprocess.run(sys.argv[2:], stdout=out).returncode
print(code, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
"""


def peak_rss_run(args, out_path):
    """Runs quantppl with stdout to out_path; returns (exit code, stderr, peak RSS in bytes)."""
    r = subprocess.run([sys.executable, "-c", RSS_WRAPPER, str(out_path), BIN, *args], capture_output=True,
                       text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    code, max_rss_kib = map(int, r.stdout.split())
    return code, r.stderr, max_rss_kib * 1024


def test_a_20_mb_single_line_is_tokenized_in_bounded_memory(tmp_path):
    with open(DEFAULT_TEXT, encoding="utf-8") as f:
        words = " ".join(f.read().split())  # the default text's words, newlines gone
    line = (words + " ") * (LINE_BYTES // (len(words) + 1) + 1)
    big = tmp_path / "one_line.txt"
    big.write_bytes(line[:LINE_BYTES].rsplit(" ", 1)[0].encode("utf-8"))  # no newline at all
    data = big.read_bytes()
    assert b"\n" not in data and len(data) > 19 * 1024 * 1024

    cmd = ["sensitivity", "--model", TINY, "--variant", "absmax:8", "--max-tokens", "512", "--keep", "0",
           "--include", "lm_head", "--format", "json", "--quiet", "--threads", "1"]
    code, stderr, baseline_rss = peak_rss_run([*cmd, "--text", DEFAULT_TEXT], tmp_path / "small.json")
    assert code == 0, stderr
    code, stderr, rss = peak_rss_run([*cmd, "--text", str(big)], tmp_path / "big.json")
    assert code == 0, stderr
    report = json.loads((tmp_path / "big.json").read_text())
    assert report["text_sha256"] == hashlib.sha256(data).hexdigest()  # the whole line was read
    assert report["text_tokens"] == 512

    slack = kAsanSlackBytes if "ASAN_OPTIONS" in os.environ else 0  # scripts/sanitize.sh sets it
    growth = rss - baseline_rss
    print(f"peak RSS {rss / 2**20:.0f} MiB, {growth / 2**20:.0f} MiB over the default text "
          f"({growth / len(data):.1f} bytes per text byte)")
    assert growth < kRssPerTextByte * len(data) + slack, (rss, baseline_rss)
