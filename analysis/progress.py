"""Progress bars for long runs and sweeps: shown on a terminal, silent in CI and in pipes/logs.

``progress`` wraps tqdm for one long run (the simulator ticks it per finished request);
``count_jobs``/``finished_jobs`` feed the sweep bar of ``analysis.callbacks.SweepProgress``.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, TextIO

from tqdm.auto import tqdm

SHOW_AFTER_S = 1.0  # short runs never flash a bar


def enabled(stream: TextIO | None = None) -> bool:
    """A bar only on an interactive terminal, never when ``CI`` is set (any value but 0/false)."""
    if os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no"):
        return False
    stream = stream if stream is not None else sys.stderr
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


def progress(iterable: Iterable[Any] | None = None, total: int | None = None, desc: str | None = None,
             unit: str = "it", **kwargs: Any) -> tqdm:
    """tqdm on stderr that disables itself off-terminal and appears only after ``SHOW_AFTER_S``.
    Use as an iterable wrapper or, with ``iterable=None``, call ``update(n)`` / ``close()``."""
    kwargs.setdefault("delay", SHOW_AFTER_S)
    kwargs.setdefault("leave", False)
    return tqdm(iterable, total=total, desc=desc, unit=unit, file=sys.stderr, disable=not enabled(), **kwargs)


def count_jobs(task_overrides: Iterable[str], sweeper_params: Mapping[str, Any] | None = None) -> int | None:
    """Jobs the basic sweeper will launch for these overrides (cartesian product of the sweeps);
    None when it cannot tell (an exotic sweeper or override syntax): the bar then has no total."""
    try:
        from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
        from hydra.core.override_parser.overrides_parser import OverridesParser

        items = [f"{k}={v}" for k, v in (sweeper_params or {}).items()] + [str(o) for o in task_overrides]
        overrides = OverridesParser.create().parse_overrides(items)
        return sum(len(batch) for batch in BasicSweeper.split_arguments(overrides, None))
    except Exception:  # noqa: BLE001 - a progress bar must never break a sweep
        return None


def _done(d: Path) -> bool:
    try:
        return (d / "summary.json").is_file() or any((c / "summary.json").is_file() for c in d.iterdir())
    except OSError:  # a job dir being created or removed right now
        return False


def finished_jobs(sweep_dir: Path, total: int | None) -> int:
    """Numbered job dirs under the sweep dir that hold a complete run (compare mode: any policy)."""
    if not sweep_dir.is_dir():
        return 0
    jobs = [d for d in sweep_dir.iterdir() if d.is_dir() and d.name.isdigit()]
    return sum(1 for d in jobs if (total is None or int(d.name) < total) and _done(d))
