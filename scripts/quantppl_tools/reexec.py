"""Restart the running command with a different environment.

Some settings only take effect at process start (PYTHONHASHSEED, GLIBC_TUNABLES), so a tool that
needs them replaces itself once with the same command line and the new environment.
sys.orig_argv is the interpreter's own argument list: it repeats the command as it was given,
`scripts/export_t5.py ARGS` or `python -m quantppl_tools.export ARGS` alike.
"""

import os
import sys


def reexec_with(env):
    """Replace this process by the same command run with `env` (does not return)."""
    os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], env)
