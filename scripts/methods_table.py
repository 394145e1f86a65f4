#!/usr/bin/python3
"""The README's methods table: RTN, AWQ, HQQ, GPTQ and AWQ+GPTQ side by side from one `quantppl compare` run (quantppl_tools/methods_table.py)."""

import sys

from quantppl_tools.methods_table import main

if __name__ == "__main__":
    sys.exit(main())
