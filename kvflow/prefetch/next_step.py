"""KVFlow's prefetch (KVFLOW.md 2.5): when a client's hints change, load the fixed prompts of its
agents one step ahead that sit in CPU only (in a fixed order), up to the concurrency limit, never
evicting a node needed as soon as (or sooner than) the target. A client left with candidates when
the limit is hit waits in ``starved``, oldest first, and is retried when a slot frees.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from kvflow.ops import Load
from kvflow.prefetch.base import CopyingPrefetcher, HintsView, cpu_run

if TYPE_CHECKING:
    from kvflow.cache import KVCacheManager


class NextStepPrefetcher(CopyingPrefetcher):
    def __init__(self, cache: KVCacheManager, hints: HintsView) -> None:
        super().__init__(cache, hints)
        self.starved: dict[str, None] = {}  # a dict keeps insertion order: oldest waiter first
        self.next: dict[str, list[str]] = {}  # per client: its agents one step ahead, sorted

    def next_agents(self, client_id: str) -> list[str]:
        """The client's agents one step ahead, sorted (as of its last hints; none once the engine
        dropped the client's hints, e.g. its workflow finished)."""
        return self.next.get(client_id, []) if client_id in self.hints else []

    def on_hints(self, client_id: str) -> None:
        # computed once per hint change: retries after a freed slot reuse the list
        self.next[client_id] = sorted(a for a, v in self.hints.get(client_id, {}).items() if v == 1)
        self.prefetch(client_id)

    def slot_freed(self) -> None:
        """Retry the oldest waiters while a slot is free. No copy of ``starved`` per freed slot
        (it holds up to one entry per client: at 1,024 workflows that copy was an eighth of the run):
        ``prefetch`` takes its client out first and puts it back, last, only when the slots ran
        out, which ends the loop, so the order is the same as walking a snapshot."""
        starved = self.starved
        while starved and self.slot_free():
            self.prefetch(next(iter(starved)))

    def prefetch(self, client_id: str) -> list[Load]:
        """Start the client's next-step loads that fit in the free slots; returns them."""
        ops: list[Load] = []
        self.starved.pop(client_id, None)
        tree = self.cache.tree
        for agent in self.next_agents(client_id):
            run = cpu_run(tree, (client_id, agent))
            if not run:
                continue
            if not self.slot_free():
                self.starved[client_id] = None
                break
            ops.extend(self.start((client_id, agent), run))
        return ops
