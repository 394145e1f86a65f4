#!/usr/bin/python3
"""Export a local Hugging Face checkpoint (T5, Llama, Mistral, Qwen2, GPT-2) to a quantppl model file (quantppl_tools/causal_export.py; layout: scripts/README.md)."""

import sys

from quantppl_tools.causal_export import main

if __name__ == "__main__":
    sys.exit(main())
