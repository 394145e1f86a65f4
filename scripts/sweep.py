#!/usr/bin/python3
"""Sweep a grid of quantization variants through quantppl compare (quantppl_tools/sweep.py; layout: scripts/README.md)."""

import sys

from quantppl_tools.sweep import main

if __name__ == "__main__":
    sys.exit(main())
