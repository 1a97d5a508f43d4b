"""When each invocation of a trace is released: the one rule every driver (sim, real, SGLang) applies.

*Closed loop* (the default for a trace whose invocations depend on each other): a workflow root
becomes ready at its session's start plus its recorded offset in the session; every later
invocation becomes ready when its dependencies finish and is released its think/tool gap later.
The gap is the recorded ``delay_s``; where the log recorded only request timestamps (a non-root
with ``arrival_s``), the gap is derived: its time - the previous timed request's time - the service
time of the calls in between (recorded ``service_s``, else the backend's estimate), floored at 0.
So a faster cache finishes a session sooner.

*Open loop*: arrivals are pinned as logged: an invocation is released at
``max(ready + delay_s, arrival_s)`` (it still waits for its dependencies: its prompt holds their
outputs). Session starts (``recorded``, ``together`` at t=0, or a seeded ``poisson`` process) shift
all of a session's recorded times by one offset in either mode. docs/trace_format.md has a worked
example.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

__all__ = ["REPLAY_MODES", "START_MODES", "ReleaseOptions", "ReleaseRule", "TimedInvocation"]

REPLAY_MODES = ("open", "closed")
START_MODES = ("recorded", "together", "poisson")


class TimedInvocation(Protocol):
    """What the release rule reads of an invocation (``traces.Invocation`` has it)."""

    id: str
    client_id: str
    deps: Sequence[str]
    arrival_s: float | None
    delay_s: float
    service_s: float | None


class TimedTrace(Protocol):
    @property
    def invocations(self) -> Sequence[TimedInvocation]: ...


@dataclass(frozen=True)
class ReleaseOptions:
    """``workload.replay`` / ``workload.start`` / ``workload.start_rate_per_s`` and the run's seed."""

    replay: str | None = None  # None: closed when any invocation has dependencies, else open
    start: str = "recorded"
    start_rate_per_s: float = 0.0
    seed: int = 0

    def check(self) -> None:
        """ValueError naming the option when a value is not allowed."""
        if self.replay is not None and self.replay not in REPLAY_MODES:
            raise ValueError(f"workload.replay: {self.replay!r} is not one of {', '.join(REPLAY_MODES)}")
        if self.start not in START_MODES:
            raise ValueError(f"workload.start: {self.start!r} is not one of {', '.join(START_MODES)}")
        if self.start == "poisson" and not self.start_rate_per_s > 0:
            raise ValueError(f"workload.start_rate_per_s: {self.start_rate_per_s!r} must be > 0 for start=poisson")


ServiceEstimate = Callable[[TimedInvocation], float]


class ReleaseRule:
    """Ready and release times of a trace's invocations under one replay mode and start mode."""

    def __init__(
        self,
        trace: TimedTrace,
        options: ReleaseOptions | None = None,
        service_s: ServiceEstimate | None = None,
    ) -> None:
        opts = options or ReleaseOptions()
        opts.check()
        invs = trace.invocations
        has_deps = any(inv.deps for inv in invs)
        self.mode = opts.replay or ("closed" if has_deps else "open")
        self.start = opts.start
        self.offset_s = _start_offsets(invs, opts)
        self.by_id = {inv.id: inv for inv in invs}
        self._estimate = service_s
        self.derived_gaps = 0  # invocations whose gap came from timestamps (closed loop)
        self.estimated_services = 0  # service times the backend estimated for those gaps
        self.gap_s: dict[str, float] = {}
        if self.mode == "closed" and any(inv.deps and inv.arrival_s is not None for inv in invs):
            self._derive_gaps(invs)  # only where a log recorded request times on later calls

    def root_ready_s(self, inv: TimedInvocation) -> float:
        """When a root (no dependencies) becomes ready: its recorded time shifted by its session's start."""
        return (inv.arrival_s or 0.0) + self.offset_s.get(inv.client_id, 0.0)

    def release_s(self, inv: TimedInvocation, ready_s: float) -> float:
        """When an invocation that became ready at ``ready_s`` is handed to the engine."""
        if self.mode == "closed" or inv.arrival_s is None:
            return ready_s + self.gap_s.get(inv.id, inv.delay_s)
        return max(ready_s + inv.delay_s, inv.arrival_s + self.offset_s.get(inv.client_id, 0.0))

    # -- closed loop: gaps from timestamps ------------------------------------------------------
    def _derive_gaps(self, invs: Sequence[TimedInvocation]) -> None:
        timed_end: dict[str, float | None] = {}  # recorded-clock end of each call, when derivable
        for inv in invs:  # topological order
            ends = [timed_end[d] for d in inv.deps]
            dep_end = None if None in ends else max((e for e in ends if e is not None), default=0.0)
            start: float | None
            if inv.arrival_s is not None:
                start = inv.arrival_s
                if inv.deps and dep_end is not None:
                    self.gap_s[inv.id] = max(0.0, inv.arrival_s - dep_end)
                    self.derived_gaps += 1
            else:
                start = None if dep_end is None else dep_end + inv.delay_s
            timed_end[inv.id] = None if start is None else start + self._service(inv)

    def _service(self, inv: TimedInvocation) -> float:
        if inv.service_s is not None:
            return inv.service_s
        if self._estimate is None:
            return 0.0
        self.estimated_services += 1
        return self._estimate(inv)


def _start_offsets(invs: Sequence[TimedInvocation], opts: ReleaseOptions) -> Mapping[str, float]:
    """Per session (client): chosen start - recorded start (its earliest root's arrival, else 0)."""
    recorded: dict[str, float] = {}
    for inv in invs:
        if not inv.deps:
            t = inv.arrival_s or 0.0
            recorded[inv.client_id] = min(t, recorded.get(inv.client_id, t))
    if opts.start == "recorded":
        return {}
    order = sorted(recorded, key=lambda c: recorded[c])  # stable: first appearance among equal starts
    if opts.start == "together":
        return {c: -recorded[c] for c in order}
    rng = random.Random(opts.seed)
    t, out = 0.0, {}
    for c in order:
        t += rng.expovariate(opts.start_rate_per_s)
        out[c] = t - recorded[c]
    return out
