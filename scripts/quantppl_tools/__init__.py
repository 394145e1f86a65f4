"""quantppl's Python tools: the model pipeline (export, training, measuring), the sweep and its
report, and the benchmark helpers. Layout and conventions: scripts/README.md.

Each command the README shows is a thin script in scripts/ (scripts/sweep.py, scripts/export_t5.py,
...) that calls main() of one module here; `python -m quantppl_tools.MODULE` runs the same main().
"""
