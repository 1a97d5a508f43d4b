"""Adapter suite for real/sglang: runs only where SGLang 0.5.23 is importable (its own venv).

Without ``sglang`` every test file of this folder reports one skip with the reason below instead
of failing to import; the default run excludes the folder anyway (tests/conftest.py). Run it with
``bash .ci/sglang_stage.sh``.
"""

from __future__ import annotations

import importlib.util

import pytest

_SPEC = importlib.util.find_spec("sglang")
# a regular package only: this very folder can look like a namespace package named "sglang"
HAVE_SGLANG = _SPEC is not None and _SPEC.origin is not None
REASON = (
    "sglang is not importable: the SGLang adapter suite runs in its own virtualenv (bash .ci/sglang_stage.sh builds it)"
)


class _Skipped(pytest.Item):
    def runtest(self) -> None:
        pytest.skip(REASON)

    def reportinfo(self):
        return self.path, 0, self.name


class _SkippedModule(pytest.File):
    def collect(self):
        yield _Skipped.from_parent(self, name="sglang_missing")


def pytest_pycollect_makemodule(module_path, parent):
    if not HAVE_SGLANG:
        return _SkippedModule.from_parent(parent, path=module_path)
    return None
