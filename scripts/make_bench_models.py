#!/usr/bin/python3
"""Build a random-weight contract model of a known shape, for benchmarks (quantppl_tools/bench_models.py; layout: scripts/README.md)."""

import sys

from quantppl_tools.bench_models import main

if __name__ == "__main__":
    sys.exit(main())
