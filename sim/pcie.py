"""The host link as two SimPy channels, H2D and D2H (full duplex, one copy at a time each).

Copies in opposite directions overlap; two copies in the same direction queue. Measured hosts show
H2D slowing while D2H runs (REFERENCE_NUMBERS.md section 2), so a copy that starts while the other
direction is busy runs at the profile's ``bidirectional_<dir>_factor`` until that copy ends, and at
full rate after it. Only the copy in progress counts (one started later does not slow a running
one): simple, and it keeps an 8 MiB backup from halving the whole of a 1 GiB load, which an
all-or-nothing rule did, depending on which of two same-instant events SimPy ran first.
"""

from __future__ import annotations

from collections.abc import Callable, Generator

import simpy

from sim.cost_model import DIRECTIONS, CostModel


URGENT, BACKGROUND = 0, 1


class PCIeLink:
    """H2D and D2H channels with byte and busy-time counters (for utilisation)."""

    def __init__(self, env: simpy.Environment, cost: CostModel, bidirectional_penalty: bool = True) -> None:
        self.env = env
        self.cost = cost
        self.bidirectional_penalty = bidirectional_penalty
        # priority 0 (default): reactive loads a scheduled request waits on; 1: background copies
        # (prefetch, backups), which yield the channel to a waiting load between copies
        self.channels = {d: simpy.PriorityResource(env, capacity=1) for d in DIRECTIONS}
        self.active = {d: 0 for d in DIRECTIONS}
        self.bytes_moved = {d: 0 for d in DIRECTIONS}
        self.busy_s = {d: 0.0 for d in DIRECTIONS}
        self.copies = {d: 0 for d in DIRECTIONS}
        self.busy_until = {d: 0.0 for d in DIRECTIONS}  # end of the copy running in each direction
        self.timeline: list[tuple[str, float, float, str]] | None = None  # set to [] to record copies

    @staticmethod
    def other(direction: str) -> str:
        return "d2h" if direction == "h2d" else "h2d"

    def duration_s(self, nbytes: int, direction: str) -> float:
        """Time a copy starting now would take, given what the other direction is doing."""
        fast = self.cost.transfer_time_s(nbytes, direction)
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

    def transfer(
        self, nbytes: int, direction: str, on_done: Callable[[], None] | None = None, label: str = "load"
    ) -> Generator[simpy.Event, None, float]:
        """SimPy process body: wait for the channel, copy, call ``on_done``; returns the copy time."""
        with self.channels[direction].request() as req:
            yield req
            t = yield from self.hold(nbytes, direction, label=label)
        if on_done is not None:
            on_done()
        return t

    def transfer_batch(
        self, items: list[tuple[int, Callable[[], None], str]], direction: str
    ) -> Generator[simpy.Event, None, None]:
        """Background copies queued at once, in FIFO order at background priority: a reactive load
        that a scheduled request waits on goes first at the next copy boundary, so a prefetch never
        delays it by more than the copy in progress."""
        for nbytes, on_done, label in items:
            with self.channels[direction].request(priority=BACKGROUND) as req:
                yield req
                yield from self.hold(nbytes, direction, label=label)
            on_done()

    def hold(self, nbytes: int, direction: str, extra_s: float = 0.0,
             label: str = "load") -> Generator[simpy.Event, None, float]:
        """Copy ``nbytes`` on a channel the caller already holds (plus ``extra_s`` of holding)."""
        t = self.duration_s(nbytes, direction)
        self.busy_until[direction] = self.env.now + t + extra_s
        if self.timeline is not None:
            self.timeline.append((direction, self.env.now, self.env.now + t + extra_s, label))
        self.active[direction] += 1
        try:
            yield self.env.timeout(t + extra_s)
        finally:
            self.active[direction] -= 1
        self.bytes_moved[direction] += nbytes
        self.busy_s[direction] += t + extra_s
        self.copies[direction] += 1
        return t

    def utilisation(self, elapsed_s: float) -> dict[str, float]:
        """Fraction of ``elapsed_s`` each channel spent copying."""
        return {d: (self.busy_s[d] / elapsed_s if elapsed_s > 0 else 0.0) for d in DIRECTIONS}
