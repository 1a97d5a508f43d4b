"""TTL pinning (issue 15 item 3; Continuum / CacheTTL): after each call a session's prefix is
pinned for T seconds, LRU otherwise.

T is per session: the ``quantile`` of its learned pause length (``kvflow.session_gaps``: per session
and per agent whose call ended, population prior), capped at ``max_ttl_s``. Pins share a budget of
``budget_tokens`` (the pausing call's prompt tokens count against it); a session that does not fit
is not pinned. A pin ends when the session calls again (its running call locks its path), when it
ends, or when T passes; expiry is checked at every session event (the core has no clock). Pinned
nodes rank above all others, LRU among themselves; unpinned nodes rank LRU.

Key-order rule: unpinning lowers keys, so each hook returns the sessions it unpinned.
"""

from __future__ import annotations

import heapq
from typing import TYPE_CHECKING

from kvflow.policies.base import Policy
from kvflow.session_gaps import GapLearner

if TYPE_CHECKING:
    from kvflow.radix import RadixNode


class TTLPinPolicy(Policy):
    name = "ttl_pin"
    tracks_dynamic = True  # a session's latest prompt path carries its (client, agent) users
    observes_sessions = True

    def __init__(
        self, quantile: float = 0.9, max_ttl_s: float = 600.0, budget_tokens: int = 400_000, prior_gap_s: float = 10.0
    ) -> None:
        if not 0 < quantile < 1 or max_ttl_s < 0 or budget_tokens < 0:
            raise ValueError("ttl_pin: quantile must be in (0, 1), max_ttl_s and budget_tokens >= 0")
        self.quantile, self.max_ttl_s, self.budget_tokens = quantile, max_ttl_s, budget_tokens
        self.gaps = GapLearner(prior_gap_s=prior_gap_s)
        self.pinned: dict[str, tuple[float, int]] = {}  # client -> (expiry s, pinned tokens)
        self.pinned_tokens = 0
        self.paused: dict[str, tuple[float, str]] = {}  # client -> (pause start s, context)
        self._expiry: list[tuple[float, str]] = []

    def ttl_s(self, client: str, context: str | None) -> float:
        return min(self.gaps.quantile_s(client, context, self.quantile), self.max_ttl_s)

    def on_session_pause(self, client: str, context: str, tokens: int, now_s: float) -> list[str]:
        dropped = self._expire(now_s)
        self.paused[client] = (now_s, context)
        if client not in self.pinned and self.pinned_tokens + tokens <= self.budget_tokens:
            expiry = now_s + self.ttl_s(client, context)
            self.pinned[client] = (expiry, tokens)  # keys rise: no re-filing
            self.pinned_tokens += tokens
            heapq.heappush(self._expiry, (expiry, client))
        return dropped

    def on_session_resume(self, client: str, now_s: float) -> list[str]:
        start = self.paused.pop(client, None)
        if start is not None:
            self.gaps.observe(client, start[1], now_s - start[0])
        return self._unpin(client) + self._expire(now_s)

    def on_session_end(self, client: str, now_s: float) -> list[str]:
        self.paused.pop(client, None)
        self.gaps.forget(client)
        return self._unpin(client) + self._expire(now_s)

    def _unpin(self, client: str) -> list[str]:
        pin = self.pinned.pop(client, None)
        if pin is None:
            return []
        self.pinned_tokens -= pin[1]
        return [client]

    def _expire(self, now_s: float) -> list[str]:
        heap, expired = self._expiry, []
        while heap and heap[0][0] <= now_s:
            expiry, client = heapq.heappop(heap)
            pin = self.pinned.get(client)
            if pin is not None and pin[0] == expiry:
                expired += self._unpin(client)
        return expired

    def key(self, node: RadixNode) -> tuple:
        pinned = self.pinned
        for users in (node.users, node.dynamic_users):
            for client, _ in users:
                if client in pinned:
                    return (1, node.last_access)
        return (0, node.last_access)
