"""Clairvoyant eviction: evict the leaf whose next use is farthest in the future.

Not a bound. In the simulator it knows only when each (client, agent) fixed prompt is next used
(``kvflow.workflow.NextUseFeed``) and prefetches as KVFlow does, so other policies can beat it
(``kvflow_cost`` did: 46.33 s vs 47.60 s on A10G 8192/32/8). Given every node's exact next use
(``sim.replay``'s ``belady``) it is Belady on a tree, the hit-rate bound (``sim.bounds``).

The future comes from the trace, never from simulator internals: either the node carries a
``next_use`` annotation (cache-only replay: next request index of its first page), or the node's
users map to their next invocation index through ``set_next_use``. Unknown = never used again.
Tie-break: LRU.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from kvflow.policies.base import Policy
from kvflow.step_graph import INF

if TYPE_CHECKING:
    from kvflow.radix import RadixNode, User


class ClairvoyantPolicy(Policy):
    name = "clairvoyant"
    reads_future = True  # ignores step hints: the backend feeds next uses read from the trace

    def __init__(self) -> None:
        self.next_use: dict[User, float] = {}

    def set_next_use(self, next_use: dict[User, float]) -> list[User]:
        """Returns the users whose next use moved later (their keys drop; unknown counts as never)."""
        table = self.next_use
        later = [u for u, v in next_use.items() if v > table.get(u, INF)]
        table.update(next_use)
        return later

    def node_next_use(self, node: RadixNode) -> float:
        if node.next_use is not None:
            return node.next_use
        best, table = INF, self.next_use
        for user in node.users:  # min over the users (a loop: this is on the eviction hot path)
            value = table.get(user, INF)
            if value < best:
                best = value
        return best

    def key(self, node: RadixNode) -> tuple:
        return (-self.node_next_use(node), node.last_access)

    def prefetch_limit(self, node: RadixNode) -> tuple | None:
        """A prefetch may only evict what is used later than the node it loads."""
        return (-self.node_next_use(node), -INF)
