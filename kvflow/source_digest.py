"""One digest of the core's source files: the stamp that ties a compiled core (mypyc, built by
``python -m harness.compiled_core build``) to the exact source it was built from.

A compiled module is imported in preference to its ``.py``; after an edit the stale build would run
silently. ``kvflow/__init__.py`` compares this digest with the build's stamp at import and refuses a
stale build, so a compiled core is either the current source or not used.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
STAMP_NAME = "_compiled_from.sha256"  # written beside this file by the build, removed by ``clean``
# The simulator's per-event modules, compiled with the core (relative to the directory above the
# package; each imports kvflow, so this guard runs before any of them): about a fifth faster again
# at 1,024 workflows (docs/architecture.md). Paths only: kvflow imports none of them.
COMPILED_EXTRAS = (
    "harness/step_times.py",
    "sim/driver.py",
    "sim/engine_loop.py",
    "sim/pcie.py",
    "traces/table_run.py",
    "traces/tokens.py",
)


def extra_sources(package_dir: Path = PACKAGE_DIR) -> list[Path]:
    """The ``COMPILED_EXTRAS`` present beside the package (none beside a stand-in package in a test)."""
    root = package_dir.parent
    return [root / name for name in COMPILED_EXTRAS if (root / name).is_file()]


def source_digest(package_dir: Path = PACKAGE_DIR) -> str:
    """sha256 over every ``.py`` under the package and the ``COMPILED_EXTRAS`` beside it (relative
    path and bytes, in sorted order)."""
    named = [(p.relative_to(package_dir).as_posix(), p) for p in sorted(package_dir.rglob("*.py"))]
    named += [("../" + p.relative_to(package_dir.parent).as_posix(), p) for p in extra_sources(package_dir)]
    h = hashlib.sha256()
    for name, path in named:
        h.update(name.encode())
        h.update(b"\0")
        h.update(path.read_bytes())
        h.update(b"\0")
    return h.hexdigest()


def compiled_stamp(package_dir: Path = PACKAGE_DIR) -> str | None:
    """The digest the compiled core was built from, or None when there is no compiled build."""
    stamp = package_dir / STAMP_NAME
    return stamp.read_text().strip() if stamp.exists() else None


def check_compiled_build(package_dir: Path = PACKAGE_DIR) -> bool:
    """True when a current compiled build is in place, False when there is none; ImportError (one
    line saying how to fix it) when the build is older than the source."""
    stamp = compiled_stamp(package_dir)
    if stamp is None:
        return False
    if stamp != source_digest(package_dir):
        raise ImportError(
            f"kvflow's compiled core in {package_dir} was built from other source than is there now: "
            "rebuild it (python -m harness.compiled_core build) or remove it (python -m harness.compiled_core clean)",
            name="kvflow",  # the command-line tools print it as one line (harness.interrupt.launch)
            path=str(package_dir),
        )
    return True
