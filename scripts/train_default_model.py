#!/usr/bin/python3
"""Train quantppl's shipped default model (models/default.pt) (quantppl_tools/train.py; layout: scripts/README.md)."""

import sys

from quantppl_tools.train import main

if __name__ == "__main__":
    sys.exit(main())
