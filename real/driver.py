"""Wall-clock workflow driver: releases a trace's invocations as their dependencies finish.

The release rule (``kvflow.release.ReleaseRule``: closed or open loop, session starts), frontiers,
hints and the clairvoyant policy's next-use table are the core's (``kvflow.workflow``), shared with the
simulator's driver; this driver supplies wall-clock time: a root becomes ready at
``rule.root_ready_s``, a later invocation when its dependencies finish, each is released at
``rule.release_s(inv, ready)``, and the client's hints go to the engine whenever its frontier
changes (KVFLOW.md 2.2).
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable
from typing import Any

from kvflow.engine import Request
from kvflow.release import ReleaseRule
from kvflow.workflow import NextUseFeed, WorkflowTracker

__all__ = ["RealRequest", "WallClockDriver"]


class RealRequest(Request):
    """An engine request that remembers the synthetic output ids the engine inserted into the tree
    (the KV store walks them to find the output node) and the tokens the model generated."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.inserted_output_ids: list[int] = []
        self.generated: list[int] = []
        self.kv: Any = None  # working KV buffer while running

    def output_ids(self) -> list[int]:
        self.inserted_output_ids = list(super().output_ids())  # the KV store compares lists
        return self.inserted_output_ids


class WallClockDriver:
    """Submits invocations into ``engine`` when their time comes; ``on_finished`` advances workflows."""

    def __init__(
        self,
        trace: Any,
        engine: Any,
        hints: bool = True,
        clairvoyant_policy: Any = None,
        on_submit: Callable[[Any], None] | None = None,
        rule: ReleaseRule | None = None,
    ) -> None:
        self.trace = trace
        self.engine = engine
        self.on_submit = on_submit
        self.tracker = WorkflowTracker(trace, hints)
        self.rule = rule or ReleaseRule(trace)
        self.by_id = self.tracker.by_id
        self.requests: dict[str, RealRequest] = {}
        self.ready_s: dict[str, float] = {}
        self._queue: list[tuple[float, int, str, str]] = []  # (time, seq, kind ready|release, inv id)
        self._seq = itertools.count()
        self._inv_of: dict[int, str] = {}
        self.next_use_feed = NextUseFeed(trace, engine.cache) if clairvoyant_policy is not None else None
        for inv in self.tracker.roots:
            self._push(self.rule.root_ready_s(inv), "ready", inv.id)

    # ----- time ---------------------------------------------------------------------------------
    def _push(self, at_s: float, kind: str, inv_id: str) -> None:
        heapq.heappush(self._queue, (at_s, next(self._seq), kind, inv_id))

    def next_event_s(self) -> float | None:
        return self._queue[0][0] if self._queue else None

    def due(self, now_s: float) -> bool:
        return bool(self._queue) and self._queue[0][0] <= now_s

    def advance(self, now_s: float) -> int:
        """Process every ready/release event due at ``now_s``; returns requests submitted."""
        submitted = 0
        while self._queue and self._queue[0][0] <= now_s:
            _, _, kind, inv_id = heapq.heappop(self._queue)
            inv = self.by_id[inv_id]
            if kind == "ready":
                self._ready(inv, now_s)
            else:
                self._release(inv, now_s)
                submitted += 1
        return submitted

    def _ready(self, inv: Any, now_s: float) -> None:
        self.ready_s[inv.id] = now_s
        self.tracker.ready(inv)
        if not inv.deps:
            self._send_hints(inv.client_id, now_s)
        self._push(self.rule.release_s(inv, now_s), "release", inv.id)

    def _release(self, inv: Any, now_s: float) -> None:
        req = RealRequest(
            request_id=inv.id,
            client_id=inv.client_id,
            agent_id=inv.agent_id,
            app_id=inv.workflow,
            tokens=self.trace.prompt_tokens(inv),
            fixed_tokens=self.trace.fixed_tokens(inv),
            output_tokens=max(1, inv.output_tokens),  # a call returns at least one token (logs may say 0)
        )
        self.requests[inv.id] = req
        self._inv_of[id(req)] = inv.id
        if self.next_use_feed is not None:
            self.next_use_feed.on_submit(inv)
        if self.on_submit is not None:
            self.on_submit(inv)
        self._send_hints(inv.client_id, now_s)
        self.engine.submit(req, now_s)

    def on_finished(self, requests: list[Request], now_s: float) -> None:
        clients = set()
        for req in requests:
            inv = self.by_id[self._inv_of[id(req)]]
            ready, client_done = self.tracker.finished(inv)
            for succ in ready:
                self._ready(succ, now_s)
            if client_done:
                self.engine.finish_client(inv.client_id, now_s)
            clients.add(inv.client_id)
        for client in sorted(clients):
            self._send_hints(client, now_s)

    def _send_hints(self, client_id: str, now_s: float) -> None:
        steps = self.tracker.hints(client_id)
        if steps is not None:
            self.engine.set_hints(client_id, steps, now_s)

    @property
    def pending(self) -> int:
        return self.tracker.pending
