#!/usr/bin/python3
"""Export a Hugging Face T5 checkpoint to a quantppl model file (quantppl_tools/export.py; layout: scripts/README.md)."""

import sys

from quantppl_tools.export import main

if __name__ == "__main__":
    sys.exit(main())
