"""Prefetch before resume (issue 15 item 2): load a paused session's CPU KV back just before its
predicted next call.

When a session pauses (its last call in the engine finished), its next call is predicted as the
pause start plus its learned pause (``kvflow.session_gaps.GapLearner``, per session and agent, with
a population prior), and its load is due ``bytes / H2D bandwidth`` earlier, bytes counted over its
whole last prompt (an upper bound on what sits in CPU only, so never later than needed). Due loads
start earliest deadline first, up to ``CacheConfig.max_prefetch`` loads in flight, evicting only
what the policy ranks below the session (``Policy.prefetch_limit``). None starts while a request
waits in the engine: its own (reactive) load and its GPU memory come first, and the backend runs
prefetches behind reactive loads on the H2D channel. ``wake_at_s`` tells an idle backend when the
next load falls due.

Each session prefetch is counted once, when the session resumes or ends (``CacheStats``):
``resume_early`` (every load had finished and the KV was still on the GPU: it came in time),
``resume_late`` (a load was still running) and ``resume_wasted`` (evicted again before the call,
or the session never called again).
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence, Sized
from typing import TYPE_CHECKING

from kvflow.ops import Load
from kvflow.prefetch.base import CopyingPrefetcher, HintsView
from kvflow.radix import InFlight, Token
from kvflow.session_gaps import GapLearner, SessionActivity

if TYPE_CHECKING:
    from kvflow.cache import KVCacheManager
    from kvflow.engine import EngineConfig, Request


class ResumePrefetcher(CopyingPrefetcher):
    def __init__(self, cache: KVCacheManager, hints: HintsView, config: EngineConfig, waiting: Sized) -> None:
        super().__init__(cache, hints)
        self.bandwidth_bytes_s = config.h2d_gbps * 1e9
        self.waiting = waiting  # the engine's waiting queue (read-only: only its length)
        self.gaps = GapLearner()
        self.activity = SessionActivity()
        self.paused: dict[str, tuple[float, str, Sequence[Token]]] = {}  # client -> (start s, agent, prompt)
        self.due: list[tuple[float, str]] = []  # (load due s, client), earliest first
        self.due_s: dict[str, float] = {}  # the live entry per client (others in the heap are stale)
        self.issued: dict[str, list[Load]] = {}  # client -> its prefetch loads since it paused

    # ----- hooks ----------------------------------------------------------------------------------
    def on_finish(self, request: Request, now_s: float) -> None:
        client = request.client_id
        if not self.activity.finish(client):
            return
        self.paused[client] = (now_s, request.agent_id, request.tokens)
        call_s = now_s + self.gaps.predict_s(client, request.agent_id)
        copy_s = self.cache.bytes_of(request.prompt_tokens) / self.bandwidth_bytes_s if self.bandwidth_bytes_s else 0.0
        self.due_s[client] = call_s - copy_s
        heapq.heappush(self.due, (call_s - copy_s, client))

    def on_submit(self, request: Request, now_s: float) -> None:
        client = request.client_id
        if not self.activity.submit(client, request.user):
            return
        start = self.paused.pop(client, None)
        self.due_s.pop(client, None)
        if start is not None:
            self.gaps.observe(client, start[1], now_s - start[0])
        self._settle(client, resumed=True)

    def on_client_end(self, client_id: str, now_s: float) -> None:
        self.paused.pop(client_id, None)
        self.due_s.pop(client_id, None)
        self.activity.end(client_id)
        self.gaps.forget(client_id)
        self._settle(client_id, resumed=False)

    def _settle(self, client: str, resumed: bool) -> None:
        """Count the session's prefetch (if any) as early, late or wasted."""
        loads = self.issued.pop(client, None)
        if not loads:
            return
        stats = self.cache.stats
        if not resumed or any(not op.node.gpu and op.node.inflight is not InFlight.LOAD for op in loads):
            stats.resume_wasted += 1
        elif any(op.node.inflight is InFlight.LOAD for op in loads):
            stats.resume_late += 1
        else:
            stats.resume_early += 1

    def slot_freed(self) -> None:
        pass  # the next before_step starts what is due

    def wake_at_s(self) -> float | None:
        return self.due[0][0] if self.due and self.slot_free() else None

    # ----- planning -------------------------------------------------------------------------------
    def before_step(self, now_s: float) -> None:
        if self.waiting:  # a waiting request's load and memory come first
            return
        due = self.due
        while due and due[0][0] <= now_s and self.slot_free():
            due_s, client = heapq.heappop(due)
            if self.due_s.get(client) != due_s:
                continue  # resumed, ended or already handled
            del self.due_s[client]
            self.issued[client] = self.prefetch(client)

    def prefetch(self, client: str) -> list[Load]:
        """Queue the loads of the CPU-only part of ``client``'s last prompt; returns them."""
        cache = self.cache
        tokens = self.paused[client][2]
        match = cache.tree.match(tokens, touch=False, max_tokens=len(tokens) - 1)
        run = match.cpu_nodes
        if not run:
            return []  # all on the GPU (or gone): nothing to load
        ops = cache.load(run, prefetch=True, limit_key=cache.policy.prefetch_limit(run[-1]))
        cache.queue_ops(ops)
        self.loads_in_flight += len(ops)
        return ops
