"""Prefetchers: proactive CPU -> GPU loads of what a workflow will need next.

``make_prefetcher`` picks one from ``EngineConfig`` (once): ``NoPrefetcher`` (prefetch off, or no
load-back), ``NextStepPrefetcher`` (KVFlow 2.5, ``prefetch_mode="next_step"``) or
``DeadlinePrefetcher`` (``prefetch_mode="deadline"``) or ``ResumePrefetcher`` (``prefetch_mode="resume"``:
paused sessions' KV before their predicted next call). The interface is ``Prefetcher`` (base.py).
"""

from __future__ import annotations

from collections.abc import Sized
from typing import TYPE_CHECKING

from kvflow.prefetch.base import CopyingPrefetcher, HintsView, NoPrefetcher, Prefetcher, cpu_run
from kvflow.prefetch.deadline import DeadlinePrefetcher
from kvflow.prefetch.next_step import NextStepPrefetcher
from kvflow.prefetch.resume import ResumePrefetcher

if TYPE_CHECKING:
    from kvflow.cache import KVCacheManager
    from kvflow.engine import EngineConfig

__all__ = [
    "CopyingPrefetcher",
    "DeadlinePrefetcher",
    "HintsView",
    "NextStepPrefetcher",
    "NoPrefetcher",
    "Prefetcher",
    "ResumePrefetcher",
    "cpu_run",
    "make_prefetcher",
]


def make_prefetcher(config: EngineConfig, cache: KVCacheManager, hints: HintsView, waiting: Sized = ()) -> Prefetcher:
    """The prefetcher ``config`` asks for; ``hints`` is the engine's live hints view, ``waiting``
    its waiting queue (a resume prefetch never starts while a request waits)."""
    if not (config.prefetch and config.load_back):
        return NoPrefetcher()
    if config.prefetch_mode == "resume":
        return ResumePrefetcher(cache, hints, config, waiting)
    if config.prefetch_mode == "deadline":
        return DeadlinePrefetcher(cache, hints, config)
    return NextStepPrefetcher(cache, hints)
