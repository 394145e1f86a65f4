#!/usr/bin/python3
"""FLOPs of one forward pass of a quantppl contract model (quantppl_tools/model_flops.py; layout: scripts/README.md)."""

import sys

from quantppl_tools.model_flops import main

if __name__ == "__main__":
    sys.exit(main())
