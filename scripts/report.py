#!/usr/bin/python3
"""Turn a sweep directory into report.html and report.md (quantppl_tools/report.py; layout: scripts/README.md)."""

import sys

from quantppl_tools.report import main

if __name__ == "__main__":
    sys.exit(main())
