#!/usr/bin/python3
"""Perplexity of a quantppl model file under naive weight quantization, in Python (quantppl_tools/measure.py; layout: scripts/README.md)."""

import sys

from quantppl_tools.measure import main

if __name__ == "__main__":
    sys.exit(main())
