"""The repository's own files the tools default to (models/default.pt, build/quantppl, ...).

The package is scripts/quantppl_tools/ of a checkout (installed editable, never copied), so the
repository root is two folders above this file.
"""

import os

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
