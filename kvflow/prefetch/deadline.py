"""Deadline prefetch (beyond KVFLOW.md 2.5): start each copy early enough, earliest deadline first.

KVFlow prefetches exactly the agents one step ahead, in no particular order. Here every agent up
to ``prefetch_lookahead_steps`` ahead is a candidate; its start is predicted as the client's last
request time + steps x the client's observed step interval (an EMA of the gaps between its
requests, which covers compute and tool/think delays alike). A candidate one step ahead is always
eligible (KVFlow's rule); a farther one once its predicted start is within twice its copy time
(bytes / H2D bandwidth). Eligible copies start in order of predicted start, up to the slot limit.
The backend runs prefetches behind reactive loads on the H2D channel, so a waiting request's
load is never queued behind them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from kvflow.prefetch.base import CopyingPrefetcher, HintsView, cpu_run

if TYPE_CHECKING:
    from kvflow.cache import KVCacheManager
    from kvflow.engine import EngineConfig, Request

EMA_WEIGHT = 0.5  # weight of the newest gap in a client's step interval


class DeadlinePrefetcher(CopyingPrefetcher):
    def __init__(self, cache: KVCacheManager, hints: HintsView, config: EngineConfig) -> None:
        super().__init__(cache, hints)
        self.bandwidth_bytes_s = config.h2d_gbps * 1e9
        self.lookahead_steps = config.prefetch_lookahead_steps
        self.dirty = False  # something changed since the last pass: hints, a finished copy, a request
        self.last_submit_s: dict[str, float] = {}
        self.interval_s: dict[str, float] = {}
        # (client, agent) prefetched since the client's hints last changed: a copy that was evicted
        # again before use is not retried until the workflow moves on (no prefetch ping-pong)
        self.issued: set[tuple[str, str]] = set()

    # ----- hooks ----------------------------------------------------------------------------------
    def on_hints(self, client_id: str) -> None:
        self.issued = {u for u in self.issued if u[0] != client_id}
        self.dirty = True

    def on_submit(self, request: Request, now_s: float) -> None:
        client_id = request.client_id
        last = self.last_submit_s.get(client_id)
        if last is not None:
            gap = now_s - last
            old = self.interval_s.get(client_id)
            self.interval_s[client_id] = gap if old is None else EMA_WEIGHT * gap + (1 - EMA_WEIGHT) * old
        self.last_submit_s[client_id] = now_s
        self.dirty = True

    def on_finish(self, request: Request, now_s: float) -> None:
        self.dirty = True

    def slot_freed(self) -> None:
        self.dirty = True

    def before_step(self, now_s: float) -> None:
        if self.dirty:
            self.run(now_s)

    # ----- planning -----------------------------------------------------------------------------
    def eta_s(self, client_id: str, steps: float, now_s: float) -> float | None:
        """Predicted seconds until an agent ``steps`` ahead of ``client_id`` starts; None if unknown."""
        interval = self.interval_s.get(client_id)
        if interval is None:
            return None
        return self.last_submit_s[client_id] + steps * interval - now_s

    def candidates(self, now_s: float) -> list[tuple]:
        """Eligible ``(eta, steps, client, agent)``, earliest predicted start first."""
        cache, tree, bandwidth = self.cache, self.cache.tree, self.bandwidth_bytes_s
        found = []
        for client_id, steps in self.hints.items():
            for agent, s in steps.items():
                if not 1 <= s <= self.lookahead_steps or (client_id, agent) in self.issued:
                    continue
                run = cpu_run(tree, (client_id, agent))
                if not run:
                    continue
                eta = self.eta_s(client_id, s, now_s)
                copy_s = cache.bytes_of(sum(len(n) for n in run)) / bandwidth if bandwidth else 0.0
                if s > 1 and (eta is None or eta > 2 * copy_s):
                    continue  # not due yet: holding GPU memory early only risks evicting the needed
                found.append((eta if eta is not None else 0.0, s, client_id, agent))
        found.sort()
        return found

    def run(self, now_s: float) -> None:
        self.dirty = False
        tree = self.cache.tree
        for _, _, client_id, agent in self.candidates(now_s):
            if not self.slot_free():
                self.dirty = True  # retry when a slot frees
                break
            run = cpu_run(tree, (client_id, agent))  # again: an earlier copy's evictions may have
            if run and self.start((client_id, agent), run):  # changed the path since
                self.issued.add((client_id, agent))
