"""DESIGN.md layering: kvflow/ is pure Python; sim/ and real/ never import each other."""

from __future__ import annotations

import re
import subprocess
import sys

from conftest import REPO


def test_core_imports_no_simpy_or_torch():
    code = "import sys, kvflow, kvflow.replay; bad = {'simpy', 'torch', 'sim', 'real'} & set(sys.modules); print(bad)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "set()"


def _top_level_imports(package: str) -> set[str]:
    """Packages imported at module level (column 0); lazy imports inside functions are allowed
    for glue such as real/validate.py, which compares both backends."""
    found = set()
    for path in (REPO / package).rglob("*.py"):
        for line in path.read_text().splitlines():
            m = re.match(r"(?:from|import)\s+([a-zA-Z_]\w*)", line)
            if m:
                found.add(m.group(1))
    return found


def test_backends_do_not_import_each_other():
    assert "real" not in _top_level_imports("sim")
    assert "sim" not in _top_level_imports("real")
    assert not {"sim", "real", "analysis"} & _top_level_imports("kvflow")
