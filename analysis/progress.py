"""Sweep progress: ``count_jobs``/``finished_jobs`` feed the bar of ``analysis.callbacks.SweepProgress``
(the bar itself, ``progress``/``enabled``, lives in ``harness.progress``: the simulator uses it too).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from harness.progress import SHOW_AFTER_S, enabled, progress

__all__ = ["SHOW_AFTER_S", "count_jobs", "enabled", "finished_jobs", "progress"]


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
