"""An optional compiled build of the policy core: the same ``kvflow/`` source compiled with mypyc
(it ships with mypy, in the ``.[lint]`` extra; needs a C compiler), about 1.5x faster simulations.

    python -m harness.compiled_core build   # compile kvflow/ in place (C extensions beside the .py)
    python -m harness.compiled_core check   # which core runs: compiled (current), pure Python, or stale
    python -m harness.compiled_core clean   # remove the build: pure Python again

Why in place: the extensions sit beside their sources, so every entry point (kvflow-sim, the
benchmarks, the tests) uses them with no other change. The build writes a stamp, the digest of the
sources it compiled (``kvflow.source_digest``); importing ``kvflow`` refuses a build whose stamp no
longer matches the source (after an edit or a checkout), so a stale build can never run silently.
Results are the same as the pure-Python core's (CI's compiled stage runs the golden simulations
and the core tests against the build).

Not compiled: the package ``__init__`` modules (``kvflow.policies``'s module ``__getattr__`` does not
compile) and ``kvflow.source_digest`` (it checks the build). Compiled with the core: the simulator's
per-event modules (``kvflow.source_digest.COMPILED_EXTRAS``: the driver, the engine loop, the PCIe
channels, prompt expansion), under the same stamp.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
import sys
import tempfile
from pathlib import Path
from types import ModuleType


def _load_source_digest() -> ModuleType:
    """``kvflow.source_digest`` without running ``kvflow/__init__`` (which refuses a stale build:
    the one state this tool must still be able to clean or rebuild)."""
    spec = importlib.util.find_spec("kvflow")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("compiled core: the kvflow package is not importable here")
    path = Path(next(iter(spec.submodule_search_locations))) / "source_digest.py"
    module_spec = importlib.util.spec_from_file_location("kvflow_source_digest", path)
    assert module_spec is not None and module_spec.loader is not None
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module


_digest = _load_source_digest()
PACKAGE_DIR: Path = _digest.PACKAGE_DIR
STAMP_NAME: str = _digest.STAMP_NAME
source_digest = _digest.source_digest

NOT_COMPILED = {"__init__.py", "source_digest.py"}


def compiled_sources(package_dir: Path = PACKAGE_DIR) -> list[Path]:
    """The modules the build compiles: every ``.py`` of the core but ``NOT_COMPILED``, then the
    simulator's ``COMPILED_EXTRAS`` beside it."""
    core = [p for p in sorted(package_dir.rglob("*.py")) if p.name not in NOT_COMPILED]
    return core + _digest.extra_sources(package_dir)


def built_extensions(package_dir: Path = PACKAGE_DIR) -> list[Path]:
    """The build's files: extension modules under the package (mypyc's shared library among them)
    and those of the ``COMPILED_EXTRAS``."""
    found = [*package_dir.rglob("*.so"), *package_dir.rglob("*.pyd")]
    for name in _digest.COMPILED_EXTRAS:
        source = package_dir.parent / name
        found += [p for p in source.parent.glob(source.stem + ".*") if p.suffix in (".so", ".pyd")]
    return sorted(found)


def clean(package_dir: Path = PACKAGE_DIR) -> int:
    """Remove the build (extensions and stamp); the number of files removed."""
    removed = 0
    for path in [*built_extensions(package_dir), package_dir / STAMP_NAME]:
        if path.exists():
            path.unlink()
            removed += 1
    return removed


def build(package_dir: Path = PACKAGE_DIR) -> None:
    """Compile the core in place with mypyc, then write the stamp (last: a failed build leaves none)."""
    try:
        from mypyc.build import mypycify
        from setuptools import setup
    except ImportError as exc:
        raise SystemExit(
            f"compiled core: {exc.name} is missing (pip install -e '.[lint]' installs mypy with mypyc)"
        ) from None
    clean(package_dir)
    root = package_dir.parent
    sources = [str(p.relative_to(root)) for p in compiled_sources(package_dir)]
    with tempfile.TemporaryDirectory(prefix="kvflow-mypyc-") as tmp:
        cwd = os.getcwd()
        os.chdir(root)
        try:
            ext_modules = mypycify(sources, opt_level="3", target_dir=os.path.join(tmp, "c"), group_name="kvflow.core")
            setup(
                name="kvflow-compiled-core",
                ext_modules=ext_modules,
                script_args=["-q", "build_ext", "--inplace", "--build-temp", os.path.join(tmp, "o")],
            )
        finally:
            os.chdir(cwd)
        shutil.rmtree(os.path.join(tmp, "c"), ignore_errors=True)
    (package_dir / STAMP_NAME).write_text(source_digest(package_dir) + "\n")


def describe(package_dir: Path = PACKAGE_DIR) -> str:
    """One line: which core an import of ``kvflow`` runs."""
    stamp = _digest.compiled_stamp(package_dir)
    if stamp is None:
        extra = " (stray extension modules, no stamp: run clean)" if built_extensions(package_dir) else ""
        return f"pure Python{extra}"
    if stamp != source_digest(package_dir):
        return "compiled but STALE (the source changed since the build): run build or clean"
    return f"compiled (mypyc), {len(built_extensions(package_dir))} extension modules, current"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m harness.compiled_core", description=__doc__.split("\n\n")[0].replace("\n", " ")
    )
    ap.add_argument("action", choices=["build", "check", "clean"], help="build in place, report, or remove")
    args = ap.parse_args(argv)
    if args.action == "build":
        build()
    elif args.action == "clean":
        print(f"removed {clean()} file(s)")
    print(f"kvflow core: {describe()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
