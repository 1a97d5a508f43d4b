"""Cost-aware KVFlow: rank by expected benefit per byte, learn how often dynamic prompts recur.

Rule: a node's value = P(reuse) x (recompute - reload time per token) / (1 + steps to that reuse);
the lowest value is evicted first (LRU tie-break). Fixed-prompt nodes have P = 1 at their agents'
steps-to-execution (KVFLOW.md 2.3). Unlike KVFlow, a *dynamic* prompt (e.g. a conversation that
the same agent extends on its next turn, as ChatDev does) is not evicted blindly first: its P is
learned online per agent, as the share of such tokens that a later request actually reused.
Outputs and finished workflows have value 0 and are never backed up to the CPU (dropped instead).
"""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING

from kvflow.policies.kvflow import AGENT, NO_INFO, SUFFIX, KVFlowPolicy
from kvflow.step_graph import INF

if TYPE_CHECKING:
    from kvflow.radix import RadixNode, User


class KVFlowCostPolicy(KVFlowPolicy):
    name = "kvflow_cost"

    def __init__(self, gain_s_per_token: float = 1.0, prior_reuse: float = 0.5, prior_tokens: float = 4096.0) -> None:
        super().__init__()
        self.gain_s_per_token = gain_s_per_token  # recompute minus reload time of one token (cost model)
        self.prior_reuse = prior_reuse
        self.prior_tokens = prior_tokens
        self.dynamic_created: Counter[str] = Counter()  # per agent: dynamic-prompt tokens cached
        self.dynamic_reused: Counter[str] = Counter()  # ... and the part a later request hit

    # ----- online learning hooks (called by the cache manager) -----------------------------------
    def observe_dynamic(self, node: "RadixNode", user: "User") -> None:
        self.dynamic_created[user[1]] += len(node)

    def observe_hit(self, node: "RadixNode") -> None:
        if node.hits == 1 and node.dynamic_users:  # first reuse of this span
            for _, agent in node.dynamic_users:
                self.dynamic_reused[agent] += len(node)

    def reuse_probability(self, agent: str) -> float:
        """Beta-style estimate: the prior weighs as ``prior_tokens`` tokens of evidence."""
        created = self.dynamic_created[agent]
        reused = min(self.dynamic_reused[agent], created)
        return (reused + self.prior_reuse * self.prior_tokens) / (created + self.prior_tokens)

    # ----- ranking -----------------------------------------------------------------------------
    def value(self, node: "RadixNode") -> float | None:
        """Expected benefit of keeping ``node`` (seconds saved per token, discounted by distance);
        None when no user of the node has a hint (no workflow info)."""
        best: float | None = None
        steps = self.node_steps(node)
        if steps is not None:
            best = 1.0 / (1.0 + steps) if steps < INF else 0.0
        for user in node.dynamic_users:
            if user in self.steps:
                s = self.steps[user]
                v = self.reuse_probability(user[1]) / (1.0 + s) if s < INF else 0.0
                best = v if best is None else max(best, v)
        return None if best is None else best * self.gain_s_per_token

    def key(self, node: "RadixNode") -> tuple:
        value = self.value(node)
        if value is None:
            return (SUFFIX if node.suffix and not node.dynamic_users else NO_INFO, 0.0, node.last_access)
        if value <= 0.0:
            return (SUFFIX, 0.0, node.last_access)
        return (AGENT, value, node.last_access)

    def prefetch_limit(self, node: "RadixNode") -> tuple | None:
        value = self.value(node)
        return None if value is None else (AGENT, value, -INF)

    def worth_keeping(self, node: "RadixNode") -> bool:
        """Demote to CPU (True) or drop (False) when the node leaves the GPU."""
        value = self.value(node)
        return self.gain_s_per_token > 0 and (value is None or value > 0.0) and not (
            node.suffix and not node.dynamic_users and not node.users)
