#!/usr/bin/python3
"""Perplexity of a causal quantppl model under naive weight quantization (quantppl_tools/measure_causal.py; layout: scripts/README.md)."""

import sys

from quantppl_tools.measure_causal import main

if __name__ == "__main__":
    sys.exit(main())
