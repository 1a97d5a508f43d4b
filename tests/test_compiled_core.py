"""The compiled core's guard (kvflow.source_digest) and tool (harness.compiled_core), on a stand-in
package in a temporary directory: no compiler needed (CI's compiled stage builds the real one)."""

from __future__ import annotations

from pathlib import Path

import pytest

import kvflow
from harness import compiled_core
from kvflow.source_digest import STAMP_NAME, check_compiled_build, compiled_stamp, source_digest


def package(tmp_path: Path) -> Path:
    pkg = tmp_path / "kvflow"
    (pkg / "policies").mkdir(parents=True)
    for name in ("__init__.py", "radix.py", "source_digest.py", "policies/__init__.py", "policies/lru.py"):
        (pkg / name).write_text(f"# {name}\n")
    return pkg


def test_the_digest_changes_with_any_source_byte_or_a_new_module(tmp_path: Path) -> None:
    pkg = package(tmp_path)
    first = source_digest(pkg)
    assert source_digest(pkg) == first
    (pkg / "radix.py").write_text("# radix.py\n\n")
    second = source_digest(pkg)
    assert second != first
    (pkg / "policies" / "new.py").write_text("")
    assert source_digest(pkg) not in (first, second)
    (pkg / "notes.txt").write_text("not source")  # only .py files count
    third = source_digest(pkg)
    (pkg / "notes.txt").write_text("changed")
    assert source_digest(pkg) == third


def test_no_stamp_is_pure_python_a_current_stamp_is_compiled_a_stale_one_refuses(tmp_path: Path) -> None:
    pkg = package(tmp_path)
    assert compiled_stamp(pkg) is None and check_compiled_build(pkg) is False
    (pkg / STAMP_NAME).write_text(source_digest(pkg) + "\n")
    assert check_compiled_build(pkg) is True
    (pkg / "radix.py").write_text("# edited after the build\n")
    with pytest.raises(ImportError, match=r"rebuild it \(python -m harness.compiled_core build\) or remove it"):
        check_compiled_build(pkg)


def test_the_tool_compiles_every_module_but_the_inits_and_the_guard(tmp_path: Path) -> None:
    pkg = package(tmp_path)
    assert [p.relative_to(pkg).as_posix() for p in compiled_core.compiled_sources(pkg)] == [
        "policies/lru.py",
        "radix.py",
    ]


def test_the_simulators_extras_are_compiled_stamped_and_cleaned_with_the_core(tmp_path: Path) -> None:
    """The COMPILED_EXTRAS beside the package are built with it, under the same stamp: an edit to
    one makes the whole build stale, and clean removes their extensions too."""
    pkg = package(tmp_path)
    before = source_digest(pkg)
    (tmp_path / "sim").mkdir()
    (tmp_path / "sim" / "driver.py").write_text("# driver\n")
    (tmp_path / "sim" / "other.py").write_text("# not an extra\n")
    with_extra = source_digest(pkg)
    assert with_extra != before
    (tmp_path / "sim" / "other.py").write_text("# edited: not compiled, not in the stamp\n")
    assert source_digest(pkg) == with_extra
    assert [p.relative_to(tmp_path).as_posix() for p in compiled_core.compiled_sources(pkg)] == [
        "kvflow/policies/lru.py",
        "kvflow/radix.py",
        "sim/driver.py",
    ]
    (pkg / STAMP_NAME).write_text(with_extra)
    assert check_compiled_build(pkg) is True
    (tmp_path / "sim" / "driver.py").write_text("# driver, edited after the build\n")
    with pytest.raises(ImportError, match="rebuild it"):
        check_compiled_build(pkg)
    (tmp_path / "sim" / "driver.cpython-311-x86_64-linux-gnu.so").write_bytes(b"")
    (tmp_path / "sim" / "other.cpython-311-x86_64-linux-gnu.so").write_bytes(b"")  # not the build's
    assert [p.name for p in compiled_core.built_extensions(pkg)] == ["driver.cpython-311-x86_64-linux-gnu.so"]
    assert compiled_core.clean(pkg) == 2  # the extra's extension and the stamp
    assert (tmp_path / "sim" / "other.cpython-311-x86_64-linux-gnu.so").exists()


def test_describe_and_clean(tmp_path: Path) -> None:
    pkg = package(tmp_path)
    assert compiled_core.describe(pkg) == "pure Python"
    (pkg / "radix.cpython-311-x86_64-linux-gnu.so").write_bytes(b"")
    (pkg / "core__mypyc.cpython-311-x86_64-linux-gnu.so").write_bytes(b"")
    assert "stray extension modules" in compiled_core.describe(pkg)
    (pkg / STAMP_NAME).write_text(source_digest(pkg))
    assert compiled_core.describe(pkg).startswith("compiled (mypyc), 2 extension modules")
    (pkg / "radix.py").write_text("# edited\n")
    assert "STALE" in compiled_core.describe(pkg)
    assert compiled_core.clean(pkg) == 3
    assert compiled_core.describe(pkg) == "pure Python" and not list(pkg.rglob("*.so"))


def test_the_running_core_says_which_it_is() -> None:
    assert kvflow.COMPILED == (compiled_stamp() is not None)
    assert kvflow.COMPILED == kvflow.radix.__file__.endswith((".so", ".pyd"))
    import sim.driver
    import traces.tokens

    assert (
        kvflow.COMPILED
        == sim.driver.__file__.endswith((".so", ".pyd"))
        == traces.tokens.__file__.endswith((".so", ".pyd"))
    )


def test_a_tool_started_on_a_stale_build_says_so_in_one_line(monkeypatch, capsys) -> None:
    from harness import interrupt

    stale = ImportError("kvflow's compiled core in /x was built from other source ...", name="kvflow")

    def fail(module: str) -> None:
        raise stale

    monkeypatch.setattr(interrupt.importlib, "import_module", fail)
    monkeypatch.setattr(interrupt, "watch", lambda: None)  # no SIGINT handler left in the test process
    with pytest.raises(SystemExit) as exit_info:
        interrupt.launch("sim.cli", "kvflow-sim")
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == f"kvflow-sim: {stale}\n"
    stale.name = "some_other_module"  # any other import error is not the core's: a traceback, as before
    with pytest.raises(ImportError):
        interrupt.launch("sim.cli", "kvflow-sim")
