#!/usr/bin/python3
"""Generates data/calibration.txt, the default calibration text, from Debian's python3.11-doc (quantppl_tools/calibration_text.py; data/README.md)."""

import sys

from quantppl_tools.calibration_text import main

if __name__ == "__main__":
    sys.exit(main())
