"""Run directories: find them under a root, load them, and decide whether a run may be skipped.

A run is complete exactly when its ``summary.json`` exists and parses (backends write it last, via a
temp file + ``os.replace``), so both the report and a resumed sweep key on that one file. Anything
else that looks like a run (a Hydra job dir, a ``config.yaml`` or ``requests.csv``) but has no valid
summary is *partial*: reported by name and skipped, never a traceback.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from analysis import hydra_meta

SUMMARY = "summary.json"
RUN_MARKERS = (".hydra", "config.yaml", "requests.csv")  # a dir holding one of these looks like a run
CONFIG_KEYS_IGNORED = ("force", "output", "hydra")  # change nothing simulated: no reason to recompute


class RunError(ValueError):
    """A malformed or partial run directory; ``str()`` is the one line shown to the user."""


@dataclass
class Run:
    """One loaded run: its summary as written, the overrides that made it, and Hydra context."""

    path: Path
    summary: dict[str, Any]
    config: dict[str, Any] = field(default_factory=dict)
    overrides: dict[str, Any] = field(default_factory=dict)  # swept key -> value (typed)
    choices: dict[str, Any] = field(default_factory=dict)  # Hydra config-group choices
    command: str | None = None  # the kvflow-sim command line that produced the run (or its sweep)


def write_json_atomic(path: Path, obj: Any) -> None:
    """Write JSON via a temp file in the same directory + ``os.replace``: readers (and a resumed
    sweep) see either the old file or the complete new one, never a truncated one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


def read_summary(run_dir: Path) -> dict[str, Any]:
    """The run's summary, or ``RunError`` saying in one line why it is unusable."""
    path = Path(run_dir) / SUMMARY
    if not path.is_file():
        raise RunError(f"{run_dir}: no {SUMMARY} (run incomplete or interrupted)")
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError) as exc:
        raise RunError(f"{path}: unreadable ({exc.__class__.__name__})") from None
    except json.JSONDecodeError as exc:
        raise RunError(f"{path}: not valid JSON (line {exc.lineno}: {exc.msg})") from None
    if not isinstance(data, dict):
        raise RunError(f"{path}: expected a JSON object, got {type(data).__name__}")
    if not data.get("policy") or not isinstance(data["policy"], str):
        raise RunError(f"{path}: missing or non-string field 'policy'")
    return data


def is_complete(run_dir: Path) -> bool:
    """True when ``run_dir/summary.json`` exists and is a valid summary."""
    try:
        read_summary(run_dir)
    except RunError:
        return False
    return True


def _normalise(config: Mapping[str, Any]) -> Any:
    plain = {k: v for k, v in config.items() if k not in CONFIG_KEYS_IGNORED}
    return yaml.safe_load(yaml.safe_dump(plain, sort_keys=True))


def should_skip(run_dir: Path, config: Mapping[str, Any] | None = None, force: bool = False) -> bool:
    """Resume rule for sweeps, keyed by the run directory: skip a run whose summary is complete.

    With ``config`` (the resolved config the run would write as ``config.yaml``), also require the
    stored ``config.yaml`` to match it (ignoring ``force``/``output``), so a different sweep pointed
    at the same ``hydra.sweep.dir`` (job dirs are numbered by job index) recomputes instead of
    silently reusing another setting's results. ``force`` always recomputes.
    """
    run_dir = Path(run_dir)
    if force or not is_complete(run_dir):
        return False
    if config is None:
        return True
    stored = run_dir / "config.yaml"
    try:
        return _normalise(yaml.safe_load(stored.read_text()) or {}) == _normalise(config)
    except (OSError, yaml.YAMLError, AttributeError):
        return False


def _looks_like_run(d: Path) -> bool:
    return any((d / m).exists() for m in RUN_MARKERS) or (d / SUMMARY).exists()


def find_run_dirs(root: Path, exclude: Iterable[Path] = ()) -> tuple[list[Path], list[Path]]:
    """(run dirs with a summary.json, dirs that look like runs but have none) under ``root``.

    A Hydra multirun may nest at any depth; compare-mode runs put one sub-dir per policy under a
    Hydra run dir, so a dir with run descendants is a container, not a partial run.
    """
    root = Path(root)
    skip = {Path(p).resolve() for p in exclude}
    runs: list[Path] = []
    partial: list[Path] = []

    def walk(d: Path) -> bool:
        if d.resolve() in skip:
            return False
        if (d / SUMMARY).exists():
            runs.append(d)
            return True
        children = sorted((c for c in d.iterdir() if c.is_dir() and not c.name.startswith(".")),
                          key=lambda c: (not c.name.isdigit(), int(c.name) if c.name.isdigit() else 0, c.name))
        found = [walk(c) for c in children]
        if not any(found) and _looks_like_run(d):
            partial.append(d)
            return True
        return any(found)

    if root.is_dir():
        walk(root)
    return runs, partial


def _load_config(run_dir: Path) -> dict[str, Any]:
    for path in (run_dir / "config.yaml", run_dir / ".hydra" / "config.yaml"):
        if path.is_file():
            try:
                data = yaml.safe_load(path.read_text())
            except yaml.YAMLError as exc:
                raise RunError(f"{path}: not valid YAML ({' '.join(str(exc).split())[:120]})") from None
            return data if isinstance(data, dict) else {}
    return {}


def load_run(run_dir: Path) -> Run:
    """Load one complete run; ``RunError`` for anything malformed."""
    run_dir = Path(run_dir)
    summary = read_summary(run_dir)
    meta = hydra_meta.read(run_dir)
    overrides = dict(meta.overrides)
    params = summary.get("params")
    if isinstance(params, dict):
        overrides.update(params)
    return Run(run_dir, summary, _load_config(run_dir), overrides, meta.choices, meta.command)


def load_runs(roots: Iterable[Path], exclude: Iterable[Path] = ()) -> tuple[list[Run], list[str]]:
    """All complete runs under the roots, plus one problem line per malformed or partial run."""
    runs: list[Run] = []
    problems: list[str] = []
    exclude = list(exclude)
    for root in roots:
        root = Path(root)
        if not root.is_dir():
            problems.append(f"{root}: not a directory")
            continue
        complete, partial = find_run_dirs(root, exclude)
        problems += [f"{d}: no {SUMMARY} (run incomplete or interrupted)" for d in partial]
        for d in complete:
            try:
                runs.append(load_run(d))
            except RunError as exc:
                problems.append(str(exc))
    return runs, problems
