"""Oracle (Belady on a tree): evict the leaf whose next use is farthest in the future.

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


class OraclePolicy(Policy):
    name = "oracle"
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
