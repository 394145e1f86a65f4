#!/usr/bin/python3
"""The Python/LibTorch baseline of quantppl compare --variants fp32 (quantppl_tools/python_baseline.py; layout: scripts/README.md)."""

import sys

from quantppl_tools.python_baseline import main

if __name__ == "__main__":
    sys.exit(main())
