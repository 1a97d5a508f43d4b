"""KVFlow eviction (KVFLOW.md 2.3, arXiv 2507.07400 section 4.2).

Rule: dynamic suffixes and outputs first; then nodes with no workflow info; then fixed-prompt
nodes in *descending* steps-to-execution (farthest future first). A node shared by several agents
(or workflows) takes the minimum of its users' values. Ties: LRU (oldest last access first).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from kvflow.policies.base import Policy
from kvflow.step_graph import INF

if TYPE_CHECKING:
    from kvflow.radix import RadixNode, User

SUFFIX, NO_INFO, AGENT = 0, 1, 2


class KVFlowPolicy(Policy):
    name = "kvflow"
    uses_hints = True

    def __init__(self) -> None:
        self.steps: dict[User, float] = {}

    def set_hints(self, steps: dict[User, float | None]) -> list[User]:
        """New steps-to-execution per (client, agent); None forgets a value (no workflow info).
        Returns the users whose keys may drop (needed later than before, or no longer known);
        a user needed sooner only rises, which needs no re-filing."""
        known, dropped = self.steps, []
        for user, value in steps.items():
            if value is None:
                known.pop(user, None)
                dropped.append(user)
            else:
                before = known.get(user)
                if before is None or value > before:
                    dropped.append(user)
                known[user] = value
        return dropped

    def node_steps(self, node: RadixNode) -> float | None:
        """Minimum steps-to-execution over the node's users; None when no user has a hint."""
        steps = self.steps
        best = None
        for user in node.users:
            value = steps.get(user)
            if value is not None and (best is None or value < best):
                best = value
        return best

    def key(self, node: RadixNode) -> tuple:
        if not node.users:
            return (SUFFIX if node.suffix else NO_INFO, 0.0, node.last_access)
        steps = self.node_steps(node)
        if steps is None:
            return (NO_INFO, 0.0, node.last_access)
        return (AGENT, -steps if steps < INF else -INF, node.last_access)

    def prefetch_limit(self, node: RadixNode) -> tuple | None:
        """A prefetch for ``node`` may only evict what is needed later than ``node`` (KVFLOW.md 2.5):
        keys below (AGENT, -steps) — suffixes, no-info nodes and farther agents."""
        steps = self.node_steps(node)
        return None if steps is None else (AGENT, -steps, -INF)
