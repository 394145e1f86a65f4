"""scripts/ as a package (scripts/README.md): quantppl_tools imports without path edits, its
modules form no import cycle, and every thin entry point in scripts/ runs from any directory.

Run: build/venv/bin/python -m pytest -q tests/python/test_package.py
"""

import ast
import os
import re
import subprocess
import sys

import pytest

from conftest import REPO, SYSTEM_PYTHON

SCRIPTS = os.path.join(REPO, "scripts")
PACKAGE = os.path.join(SCRIPTS, "quantppl_tools")
MODULES = sorted(n[:-3] for n in os.listdir(PACKAGE) if n.endswith(".py") and n != "__init__.py")
ENTRY_POINTS = sorted(n for n in os.listdir(SCRIPTS) if n.endswith(".py"))
# a call that edits the import path at run time, written so that this file does not match it
PATH_EDIT = re.compile(r"\bsys\s*\.\s*path\s*\.\s*(insert|append|extend)\s*\(|\bsys\s*\.\s*path\s*(\+=|=[^=])")


def python_files(*roots):
    for root in roots:
        for d, dirs, files in os.walk(root):
            dirs[:] = [x for x in dirs if x not in ("__pycache__",)]
            yield from (os.path.join(d, f) for f in files if f.endswith(".py"))


def test_no_file_in_scripts_or_tests_edits_sys_path():
    offenders = []
    for path in python_files(SCRIPTS, os.path.join(REPO, "tests")):
        with open(path, encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                if PATH_EDIT.search(line):
                    offenders.append("%s:%d: %s" % (os.path.relpath(path, REPO), n, line.strip()))
    assert offenders == []


def test_the_path_check_would_catch_an_edit():
    for edit in ("path.insert(0, here)", "path.append(d)", "path = [d] + old", "path += [d]"):
        assert PATH_EDIT.search("sys." + edit), edit  # (split so this file passes the check above)
    assert not PATH_EDIT.search("if sys." + "path == old:")


def package_imports(module):
    """The quantppl_tools modules `module` imports, anywhere in its body (functions too)."""
    with open(os.path.join(PACKAGE, module + ".py"), encoding="utf-8") as f:
        tree = ast.parse(f.read())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level == 1 or base.startswith("quantppl_tools"):
                base = base.split(".", 1)[1] if base.startswith("quantppl_tools.") else (
                    "" if base == "quantppl_tools" else base)
                if base:
                    found.add(base.split(".")[0])
                else:  # from . import a, b
                    found.update(a.name for a in node.names)
            elif node.level > 1:
                raise AssertionError("%s: import from outside the package: level %d" % (module, node.level))
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name.startswith("quantppl_tools."):
                    found.add(a.name.split(".")[1])
                elif a.name.split(".")[0] in MODULES:  # a bare sibling import would need a path edit
                    raise AssertionError("%s: 'import %s' is not a package import" % (module, a.name))
    return found & set(MODULES)


def test_the_package_has_no_import_cycle():
    graph = {m: package_imports(m) for m in MODULES}
    assert graph["report"] and "sweep" not in graph["report"]  # the old report <-> sweep cycle
    state = {}

    def visit(m, stack):
        if state.get(m) == "done":
            return
        assert state.get(m) != "open", "import cycle: " + " -> ".join(stack + [m])
        state[m] = "open"
        for dep in sorted(graph[m]):
            visit(dep, stack + [m])
        state[m] = "done"

    for m in MODULES:
        visit(m, [])


@pytest.mark.parametrize("module", MODULES)
def test_each_module_imports_alone_in_a_fresh_interpreter(module, tmp_path):
    # PYTHONPATH puts this checkout's scripts/ first (before any editable install of another one);
    # the working directory is elsewhere so nothing is found by accident.
    env = dict(os.environ, PYTHONPATH=SCRIPTS)
    r = subprocess.run([sys.executable, "-c", "import quantppl_tools.%s as m; print(m.__file__)" % module],
                       cwd=str(tmp_path), env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == os.path.join(PACKAGE, module + ".py")


@pytest.mark.parametrize("script", ENTRY_POINTS)
def test_every_entry_point_runs_from_another_directory_without_an_install(script, tmp_path):
    # Debian's python3 has no quantppl_tools installed, and -E -s ignore PYTHONPATH and the user's
    # site-packages: the script's own folder (scripts/) on sys.path is what finds the package.
    r = subprocess.run([SYSTEM_PYTHON, "-E", "-s", os.path.join(SCRIPTS, script), "--help"], cwd=str(tmp_path),
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, (script, r.stderr)
    assert "usage" in (r.stdout + r.stderr).lower(), script


def test_every_entry_point_is_thin():
    for script in ENTRY_POINTS:
        with open(os.path.join(SCRIPTS, script), encoding="utf-8") as f:
            tree = ast.parse(f.read())
        imports = [n for n in tree.body if isinstance(n, ast.ImportFrom)]
        assert len(imports) == 1 and imports[0].module.startswith("quantppl_tools.") \
            and [a.name for a in imports[0].names] == ["main"], script
        assert not [n for n in tree.body if isinstance(n, (ast.FunctionDef, ast.ClassDef))], script
