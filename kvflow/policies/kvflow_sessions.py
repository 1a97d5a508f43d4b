"""KVFlow with session-aware ties (issue 15): KVFlow's order first, pauses break its ties.

KVFlow ranks fixed-prompt nodes by steps-to-execution, which separates the agents of one workflow
but says nothing between coding-agent sessions (one main agent each: every session's prompt is
"next"), where it falls back to LRU. ``pause_aware`` ranks sessions by their predicted next call,
but on workflows of several agents it has no step order (paper_branches: +33% vs KVFlow). Here the
key is KVFlow's class and steps, then ``pause_aware``'s session tier and predicted call, then LRU:
where steps differ it is KVFlow; where they tie (between sessions) it is pause-aware.

Key-order rule: the key is lexicographic, so a component can only lower it if the ones before it
stay; both hook families report what may drop for their own component (``set_hints``: KVFlow's
users; the session hooks: the sessions), and the cache re-files the union.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from kvflow.policies.kvflow import KVFlowPolicy
from kvflow.policies.pause_aware import PauseAwarePolicy

if TYPE_CHECKING:
    from kvflow.radix import RadixNode, User


class KVFlowSessionsPolicy(PauseAwarePolicy):
    name = "kvflow_sessions"
    uses_hints = True

    def __init__(self, prior_gap_s: float = 10.0, shrink_n: float = 3.0, backup_on_pause: bool = True) -> None:
        super().__init__(prior_gap_s=prior_gap_s, shrink_n=shrink_n, backup_on_pause=backup_on_pause)
        self.steps = KVFlowPolicy()

    def set_hints(self, steps: dict[User, float | None]) -> list[User]:
        return self.steps.set_hints(steps)

    def key(self, node: RadixNode) -> tuple:
        return self.steps.key(node)[:2] + PauseAwarePolicy.key(self, node)

    def prefetch_limit(self, node: RadixNode) -> tuple | None:
        """KVFlow's bound (only what is needed later than ``node``'s agent), on the first two
        components of this key."""
        return self.steps.prefetch_limit(node)
