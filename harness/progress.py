"""Progress bar for one long run: shown on a terminal, silent in CI and in pipes/logs.

The simulator ticks it per finished request; the sweep bar (``analysis.callbacks.SweepProgress``)
uses the same switch.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable
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


def progress(
    iterable: Iterable[Any] | None = None,
    total: int | None = None,
    desc: str | None = None,
    unit: str = "it",
    **kwargs: Any,
) -> tqdm:
    """tqdm on stderr that disables itself off-terminal and appears only after ``SHOW_AFTER_S``.
    Use as an iterable wrapper or, with ``iterable=None``, call ``update(n)`` / ``close()``."""
    kwargs.setdefault("delay", SHOW_AFTER_S)
    kwargs.setdefault("leave", False)
    return tqdm(iterable, total=total, desc=desc, unit=unit, file=sys.stderr, disable=not enabled(), **kwargs)
