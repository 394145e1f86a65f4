"""Generates data/calibration.txt, quantppl's default calibration text (data/README.md);
the entry point is scripts/make_calibration_text.py.

usage: PYTHONPATH=scripts /usr/bin/python3 scripts/make_calibration_text.py [--check] [OUT]

Source: the reStructuredText sources of the Python 3.11 documentation as Debian's python3.11-doc
installs them (/usr/share/doc/python3.11/html/_sources, PSF licence), reduced to prose paragraphs
by the same extract_prose() that built the default model's training data
(scripts/quantppl_tools/train.py).

Which files: sorted by relative path, those with sha1(relative path) % 20 == 1. The default
model's held-out split is sha1 % 20 == 0, so these files are all in its TRAINING split (as
GPTQ calibrates on C4's training split) and none is in the held-out split that
scripts/measure_default_model.py evaluates. data/default_eval.txt was written for the project
and shares no text with the Python documentation. Paragraphs are taken in file order until
TARGET_CHARS characters, at most PER_FILE_CHARS from one file (~23,000 tokens of the default model's tokenizer, so that the default
--calibration-tokens 16384 never runs out), one paragraph per line, blank-line separated.

--check: exit 1 unless OUT (default data/calibration.txt) equals what would be generated.
"""

import argparse
import hashlib
import os
import sys

from quantppl_tools.paths import REPO
from quantppl_tools.train import DOC_SOURCES, extract_prose

TARGET_CHARS = 92_000
PER_FILE_CHARS = 6_000  # at most this much of one file, so the text spans many topics
BUCKET = 1  # sha1(path) % 20; the default model's held-out split is bucket 0


def generate(src=DOC_SOURCES):
    files = []
    for root, dirs, names in os.walk(src):
        dirs.sort()
        for name in sorted(names):
            if name.endswith(".rst.txt"):
                files.append(os.path.relpath(os.path.join(root, name), src))
    if not files:
        raise SystemExit("make_calibration_text: no .rst.txt files under %s (apt-get install python3.11-doc)" % src)
    paragraphs, total = [], 0
    for rel in sorted(files):
        if int(hashlib.sha1(rel.encode()).hexdigest(), 16) % 20 != BUCKET:
            continue
        with open(os.path.join(src, rel), encoding="utf-8", errors="replace") as f:
            in_file = 0
            for p in extract_prose(f.read()):
                if in_file >= PER_FILE_CHARS:
                    break
                paragraphs.append(p)
                total += len(p) + 2
                in_file += len(p) + 2
                if total >= TARGET_CHARS:
                    return "\n\n".join(paragraphs) + "\n"
    return "\n\n".join(paragraphs) + "\n"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out", nargs="?", default=os.path.join(REPO, "data", "calibration.txt"))
    ap.add_argument("--check", action="store_true", help="compare with OUT instead of writing it")
    args = ap.parse_args()
    text = generate()
    if args.check:
        with open(args.out, encoding="utf-8") as f:
            same = f.read() == text
        print("%s: %s" % (args.out, "up to date" if same else "DIFFERS from the generated text"))
        return 0 if same else 1
    tmp = args.out + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, args.out)
    print("wrote %s: %d characters, %d paragraphs" % (args.out, len(text), text.count("\n\n") + 1))
    return 0

