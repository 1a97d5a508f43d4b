"""The host link as two channels, H2D and D2H (full duplex, one copy at a time each).

Copies in opposite directions overlap; two copies in the same direction queue. Measured hosts show
H2D slowing while D2H runs (REFERENCE_NUMBERS.md section 2), so a copy that starts while the other
direction is busy runs at the profile's ``bidirectional_<dir>_factor`` until that copy ends, and at
full rate after it. Only the copy in progress counts (one started later does not slow a running
one): simple, and it keeps an 8 MiB backup from halving the whole of a 1 GiB load, which an
all-or-nothing rule did, depending on which of two same-instant events SimPy ran first.

Each channel is a queue driven by callbacks, not SimPy processes and resources: a copy costs one
SimPy event (its end), which made the simulator's many small backups and prefetches cheap. Urgent
copies (reactive loads a scheduled request waits on) go before queued background copies
(prefetches, backups) at the next copy boundary, FIFO within each class.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Generator
from typing import Any

import simpy

from harness.cost_model import DIRECTIONS, CostModel

# one queued copy: bytes, called when done (with ``tag`` if one is given), the tag, timeline label,
# called with its duration when it starts
_Copy = tuple[int, "Callable[..., object] | None", Any, str, "Callable[[float], object] | None"]
_NO_TAG = object()


class _Channel:
    __slots__ = ("urgent", "background", "busy", "current")

    def __init__(self) -> None:
        self.urgent: deque[_Copy] = deque()
        self.background: deque[_Copy] = deque()
        self.busy = False
        self.current: tuple[int, float, Callable[..., object] | None, Any] | None = None  # the copy running


class PCIeLink:
    """H2D and D2H channels with byte and busy-time counters (for utilisation)."""

    def __init__(
        self,
        env: simpy.Environment,
        cost: CostModel,
        bidirectional_penalty: bool = True,
        timeline: list[tuple[str, float, float, str]] | None = None,
    ) -> None:
        self.env = env
        self.cost = cost
        self.bidirectional_penalty = bidirectional_penalty
        self.channels = {d: _Channel() for d in DIRECTIONS}
        self.active = {d: 0 for d in DIRECTIONS}
        self.bytes_moved = {d: 0 for d in DIRECTIONS}
        self.busy_s = {d: 0.0 for d in DIRECTIONS}
        self.copies = {d: 0 for d in DIRECTIONS}
        self.busy_until = {d: 0.0 for d in DIRECTIONS}  # end of the copy running in each direction
        self.timeline = timeline  # a list to record copies into (Gantt plots), or None
        # the cost model's constants per direction (latency, full rate), looked up once per run
        self._latency_s = {d: cost.links[d].latency_s for d in DIRECTIONS}
        self._rate = {d: cost.links[d].effective_gbps * 1e9 * 1.0 for d in DIRECTIONS}
        self._on_end = {d: (lambda _event, d=d: self._finish(d)) for d in DIRECTIONS}  # Timeout callbacks

    @staticmethod
    def other(direction: str) -> str:
        return "d2h" if direction == "h2d" else "h2d"

    def duration_s(self, nbytes: int, direction: str) -> float:
        """Time a copy starting now would take, given what the other direction is doing."""
        fast = self._latency_s[direction] + nbytes / self._rate[direction]  # = cost.transfer_time_s
        other = self.other(direction)
        overlap_s = self.busy_until[other] - self.env.now
        if not self.bidirectional_penalty or self.active[other] == 0 or overlap_s <= 0:
            return fast
        slow = self.cost.transfer_time_s(nbytes, direction, other_direction_busy=True)
        if slow <= overlap_s:
            return slow
        latency = self.cost.transfer_time_s(0, direction)
        slow_phase_s = max(0.0, overlap_s - latency)
        done = slow_phase_s / (slow - latency)  # share of the bytes moved while the other side ran
        return latency + slow_phase_s + (1.0 - done) * (fast - latency)

    # -- copies --------------------------------------------------------------------------------
    def copy(
        self,
        nbytes: int,
        direction: str,
        on_done: Callable[..., object] | None = None,
        label: str = "load",
        urgent: bool = False,
        on_start: Callable[[float], object] | None = None,
        tag: Any = _NO_TAG,
    ) -> None:
        """Queue a copy; ``on_start(duration_s)`` runs when it gets the channel, ``on_done()`` (or
        ``on_done(tag)`` when a tag is given: no closure per copy) when its bytes have arrived."""
        channel = self.channels[direction]
        (channel.urgent if urgent else channel.background).append((nbytes, on_done, tag, label, on_start))
        if not channel.busy:
            self._start_next(direction)

    def _start_next(self, direction: str) -> None:
        channel = self.channels[direction]
        queue = channel.urgent or channel.background
        if not queue:
            channel.busy = False
            return
        nbytes, on_done, tag, label, on_start = queue.popleft()
        channel.busy = True
        now = self.env.now
        t = self.duration_s(nbytes, direction)
        self.busy_until[direction] = now + t
        if self.timeline is not None:
            self.timeline.append((direction, now, now + t, label))
        self.active[direction] += 1
        channel.current = (nbytes, t, on_done, tag)
        if on_start is not None:
            on_start(t)
        self.env.timeout(t).callbacks.append(self._on_end[direction])

    def _finish(self, direction: str) -> None:
        nbytes, t, on_done, tag = self.channels[direction].current  # type: ignore[misc]
        self.active[direction] -= 1
        self.bytes_moved[direction] += nbytes
        self.busy_s[direction] += t
        self.copies[direction] += 1
        self._start_next(direction)  # the channel passes on before the finished copy is acknowledged
        if on_done is not None:
            if tag is _NO_TAG:
                on_done()
            else:
                on_done(tag)

    def transfer(
        self,
        nbytes: int,
        direction: str,
        on_done: Callable[[], None] | None = None,
        label: str = "load",
        urgent: bool = True,
    ) -> Generator[simpy.Event, None, float]:
        """SimPy process body around ``copy``: wait for the channel and the copy, call ``on_done``;
        returns the copy time."""
        done = self.env.event()
        took: list[float] = []
        self.copy(nbytes, direction, on_done=lambda: done.succeed(), label=label, urgent=urgent, on_start=took.append)
        yield done
        if on_done is not None:
            on_done()
        return took[0]

    def utilisation(self, elapsed_s: float) -> dict[str, float]:
        """Fraction of ``elapsed_s`` each channel spent copying."""
        return {d: (self.busy_s[d] / elapsed_s if elapsed_s > 0 else 0.0) for d in DIRECTIONS}
