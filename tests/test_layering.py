"""DESIGN.md layering, checked on every import (module level or lazy, inside a function):
kvflow/ is pure Python; sim/ and real/ never import each other; harness/ (shared by the backends)
and the backends never import analysis/; no module reaches into another object's private attributes."""

from __future__ import annotations

import ast
import io
import subprocess
import sys
import tokenize
from pathlib import Path

from conftest import REPO

FORBIDDEN = {
    "kvflow": {"sim", "real", "analysis", "harness", "traces", "simpy", "torch"},
    "harness": {"sim", "real", "analysis"},
    "sim": {"real", "analysis"},
    "real": {"sim", "analysis"},
    "traces": {"sim", "real", "analysis", "harness"},
}
# (file, imported package): the only crossings allowed, each with its reason
IMPORT_EXCEPTIONS = {
    ("real/validate.py", "sim"),  # kvflow-real validate runs both backends on one trace, lazily
    ("sim/paper.py", "analysis"),  # the paper protocol reads the paper's numbers (analysis.paper, pure data)
}
# private attributes of third-party code that have no public equivalent
PRIVATE_THIRD_PARTY = {
    "hydra._internal",
    "torch._foreach_copy_",
}  # the latter: real/engine_bench/direct_05.py, many copies in one call
# in-project private accesses across modules: none allowed
PRIVATE_KNOWN: set[tuple[str, str]] = set()
PACKAGES = ("kvflow", "harness", "sim", "real", "traces", "analysis")


def _files(package: str) -> list[Path]:
    return sorted((REPO / package).rglob("*.py"))


def _rel(path: Path) -> str:
    return path.relative_to(REPO).as_posix()


def imports_of(path: Path) -> set[str]:
    """Top-level package of every import in the file, at any depth (lazy imports included)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    return found


def private_accesses(path: Path) -> set[str]:
    """``name._attr`` in code (strings and comments skipped), except on ``self``/``cls``."""
    tokens = [
        t
        for t in tokenize.generate_tokens(io.StringIO(path.read_text()).readline)
        if t.type in (tokenize.NAME, tokenize.OP)
    ]
    found = set()
    for left, dot, right in zip(tokens, tokens[1:], tokens[2:]):
        if (
            left.type == tokenize.NAME
            and dot.string == "."
            and right.type == tokenize.NAME
            and right.string.startswith("_")
            and not right.string.startswith("__")
            and left.string not in ("self", "cls")
        ):
            found.add(f"{left.string}.{right.string}")
    return found


def test_cache_only_replay_needs_no_simpy_or_torch():
    code = "import sys, sim.replay, sim.replay_cli; bad = {'simpy', 'torch', 'real'} & set(sys.modules); print(bad)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "set()"


def test_core_imports_no_simpy_or_torch():
    code = (
        "import sys, kvflow, kvflow.build, kvflow.engine; bad = {'simpy', 'torch', 'sim', 'real', 'traces'}"
        " & set(sys.modules); print(bad)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "set()"


def test_no_forbidden_import_even_lazy():
    bad = []
    for package, forbidden in FORBIDDEN.items():
        for path in _files(package):
            for name in sorted(imports_of(path) & forbidden):
                if (_rel(path), name) not in IMPORT_EXCEPTIONS:
                    bad.append(f"{_rel(path)} imports {name}")
    assert not bad, bad


def test_import_check_sees_lazy_imports(tmp_path: Path):
    (tmp_path / "m.py").write_text("def f():\n    from analysis.report import write_report\n    import sim.x\n")
    assert imports_of(tmp_path / "m.py") == {"analysis", "sim"}


def test_no_private_attribute_across_modules():
    bad = []
    for package in PACKAGES:
        for path in _files(package):
            for access in sorted(private_accesses(path)):
                third_party = any(access.startswith(p) for p in PRIVATE_THIRD_PARTY)
                if not third_party and (_rel(path), access) not in PRIVATE_KNOWN:
                    bad.append(f"{_rel(path)}: {access}")
    assert not bad, bad


def test_private_check_skips_self_strings_and_comments(tmp_path: Path):
    (tmp_path / "m.py").write_text('x = self._a + cls._b\n"""obj._c"""\n# obj._d\ny = obj._e.__dict__\n')
    assert private_accesses(tmp_path / "m.py") == {"obj._e"}
