"""A fixed pure-Python workload timed on this host, printed beside benchmark figures.

The development VM's speed moved by ~1.5-2.5x between sessions with no code change (docs/
architecture.md, issue 17's targets), so a requests-per-second figure alone cannot say whether a
change helped or the host did. ``reference_mops_per_s`` runs the same mix of operations the
simulator spends its time on (dict lookups and stores, attribute reads, list appends, a binary heap)
and reports millions of loop steps per second: divide a benchmark figure by it to compare runs taken
on different hosts or days.
"""

from __future__ import annotations

import heapq
import time

__all__ = ["describe_host", "reference_mops_per_s"]

REFERENCE_STEPS = 200_000


class _Item:
    __slots__ = ("key", "value")

    def __init__(self, key: int, value: float) -> None:
        self.key = key
        self.value = value


def _workload(steps: int) -> float:
    """``steps`` steps of dict/attribute/list/heap work; returns a checksum so nothing is skipped."""
    table: dict[int, _Item] = {}
    heap: list[tuple[float, int]] = []
    out: list[float] = []
    total = 0.0
    for i in range(steps):
        key = (i * 2654435761) % 65_536
        item = table.get(key)
        if item is None:
            item = table[key] = _Item(key, float(i))
        item.value += 1.0
        heapq.heappush(heap, (item.value, key))
        if len(heap) > 1024:
            total += heapq.heappop(heap)[0]
        out.append(item.value)
        if len(out) > 4096:
            out.clear()
    return total


def reference_mops_per_s(steps: int = REFERENCE_STEPS, repeats: int = 3) -> float:
    """Millions of workload steps per second, best of ``repeats`` (the least disturbed run)."""
    if steps < 1 or repeats < 1:
        raise ValueError(f"steps and repeats must be >= 1, got {steps}, {repeats}")
    best_s = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        _workload(steps)
        best_s = min(best_s, time.perf_counter() - t0)
    return steps / max(best_s, 1e-9) / 1e6


def describe_host() -> str:
    """One line for a benchmark's header."""
    return (
        f"host reference: {reference_mops_per_s():.2f} M steps/s (harness.host_speed, pure Python; "
        "divide figures by it to compare hosts or days)"
    )
