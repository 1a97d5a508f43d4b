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

if TYPE_CHECKING:
    from kvflow.engine import Engine, Request

EMA_WEIGHT = 0.5  # weight of the newest gap in a client's step interval


class DeadlinePrefetcher:
    def __init__(self, engine: "Engine") -> None:
        self.engine = engine
        self.dirty = False  # something changed since the last pass: hints, a finished copy, a request
        self.last_submit_s: dict[str, float] = {}
        self.interval_s: dict[str, float] = {}
        # (client, agent) prefetched since the client's hints last changed: a copy that was evicted
        # again before use is not retried until the workflow moves on (no prefetch ping-pong)
        self.issued: set[tuple[str, str]] = set()

    def hints_changed(self, client_id: str) -> None:
        self.issued = {u for u in self.issued if u[0] != client_id}
        self.dirty = True

    def observe_submit(self, client_id: str, now_s: float) -> None:
        last = self.last_submit_s.get(client_id)
        if last is not None:
            gap = now_s - last
            old = self.interval_s.get(client_id)
            self.interval_s[client_id] = gap if old is None else EMA_WEIGHT * gap + (1 - EMA_WEIGHT) * old
        self.last_submit_s[client_id] = now_s
        self.dirty = True

    def observe_finish(self, request: "Request", now_s: float) -> None:
        self.dirty = True

    def eta_s(self, client_id: str, steps: float, now_s: float) -> float | None:
        """Predicted seconds until an agent ``steps`` ahead of ``client_id`` starts; None if unknown."""
        interval = self.interval_s.get(client_id)
        if interval is None:
            return None
        return self.last_submit_s[client_id] + steps * interval - now_s

    def run(self, now_s: float) -> None:
        self.dirty = False
        engine, cache = self.engine, self.engine.cache
        bandwidth = engine.config.h2d_gbps * 1e9
        lookahead = engine.config.prefetch_lookahead_steps
        candidates = []
        for client_id, steps in engine.hints.items():
            for agent, s in steps.items():
                if not 1 <= s <= lookahead:
                    continue
                if (client_id, agent) in self.issued:
                    continue
                run = cache.cpu_run((client_id, agent))
                if not run:
                    continue
                eta = self.eta_s(client_id, s, now_s)
                copy_s = cache.bytes_of(sum(len(n) for n in run)) / bandwidth if bandwidth else 0.0
                if s > 1 and (eta is None or eta > 2 * copy_s):
                    continue  # not due yet: holding GPU memory early only risks evicting the needed
                candidates.append((eta if eta is not None else 0.0, s, client_id, agent, run))
        candidates.sort(key=lambda c: c[:4])
        for _, _, client_id, agent, _ in candidates:
            if not cache.prefetch_slot_free():
                self.dirty = True  # retry when a slot frees
                break
            run = cache.cpu_run((client_id, agent))  # again: an earlier copy's evictions may have
            if run and cache.start_prefetch((client_id, agent), run):  # changed the path since
                self.issued.add((client_id, agent))
