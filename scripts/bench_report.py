#!/usr/bin/python3
"""One table of the performance targets from the files of one scripts/bench.sh run (quantppl_tools/bench_report.py; layout: scripts/README.md)."""

import sys

from quantppl_tools.bench_report import main

if __name__ == "__main__":
    sys.exit(main())
