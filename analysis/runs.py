"""Run directories: find them under a root, load them, and decide whether a run may be skipped.

A run is complete exactly when its ``summary.json`` exists and parses (backends write it last, via a
temp file + ``os.replace``), so both the report and a resumed sweep key on that one file. Anything
else that looks like a run (a Hydra job dir, a ``config.yaml`` or ``requests.csv``) but has no valid
summary is *partial*: reported by name and skipped, never a traceback.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from analysis import hydra_meta
from harness.run_dir import (
    SUMMARY,
    RunError,
    is_complete,
    looks_like_run,
    read_run_summary,
    read_summary,
    should_skip,
    validate_run_dir,
    write_json_atomic,
)
from harness.summary import SUMMARY_KEYS

__all__ = [
    "Run",
    "RunError",
    "find_run_dirs",
    "is_complete",
    "load_run",
    "load_runs",
    "read_summary",
    "should_skip",
    "validate_run_dir",
    "write_json_atomic",
]


METRIC_KEYS = SUMMARY_KEYS[SUMMARY_KEYS.index("requests") : SUMMARY_KEYS.index("wall_s") + 1]


@dataclass
class Run:
    """One loaded run: its summary as written, the overrides that made it, and Hydra context."""

    path: Path
    summary: dict[str, Any]
    config: dict[str, Any] = field(default_factory=dict)
    overrides: dict[str, Any] = field(default_factory=dict)  # swept key -> value (typed)
    choices: dict[str, Any] = field(default_factory=dict)  # Hydra config-group choices
    command: str | None = None  # the kvflow-sim command line that produced the run (or its sweep)


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
        children = sorted(
            (c for c in d.iterdir() if c.is_dir() and not c.name.startswith(".")),
            key=lambda c: (not c.name.isdigit(), int(c.name) if c.name.isdigit() else 0, c.name),
        )
        found = [walk(c) for c in children]
        if not any(found) and looks_like_run(d):
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


def _check_metrics(summary: dict[str, Any], path: Path) -> None:
    """Headline metrics are numbers (or null): a string latency used to break every mean taken
    over the column; now the run is named and skipped."""
    for key in METRIC_KEYS:
        value = summary.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
            raise RunError(f"{path}: {key!r} must be a number, got {value!r:.40}")


def _hashable(value: Any) -> Any:
    """A swept value as a table cell: lists and mappings (``compare=[a,b]``) as their YAML flow text,
    so grouping runs by setting never meets an unhashable value."""
    if isinstance(value, (list, tuple, dict)):
        return yaml.safe_dump(value, default_flow_style=True).strip()
    return value


def load_run(run_dir: Path) -> Run:
    """Load one complete run; ``RunError`` for anything malformed."""
    run_dir = Path(run_dir)
    summary = read_run_summary(run_dir)  # the contract's schema (harness.run_dir)
    _check_metrics(summary, run_dir / SUMMARY)
    meta = hydra_meta.read(run_dir)
    overrides = dict(meta.overrides)
    params = summary.get("params")
    if isinstance(params, dict):
        overrides.update(params)
    overrides = {k: _hashable(v) for k, v in overrides.items()}
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
