#!/usr/bin/python3
"""Train quantppl's shipped default causal model (models/default-causal.pt) (quantppl_tools/train_causal.py; layout: scripts/README.md)."""

import sys

from quantppl_tools.train_causal import main

if __name__ == "__main__":
    sys.exit(main())
