"""Cost-aware KVFlow: rank by expected benefit per byte, learn how often dynamic prompts recur.

Rule: a node's value = P(reuse) x (recompute - reload time per token) / (1 + steps to that reuse);
the lowest value is evicted first (LRU tie-break). Fixed-prompt nodes have P = 1 at their agents'
steps-to-execution (KVFLOW.md 2.3). Unlike KVFlow, a *dynamic* prompt (e.g. a conversation that
the same agent extends on its next turn, as ChatDev does) is not evicted blindly first: its P is
learned online per agent as the share of its latest dynamic prompt that its next prompt repeats
(measured on the prompts, so the estimate does not depend on what the cache kept). Only the
*latest* dynamic prompt of each (client, agent) counts (older ones survive as its prefix).
Outputs and finished workflows have value 0 and are never backed up to the CPU (dropped instead).
"""

from __future__ import annotations

import bisect
from collections import Counter
from typing import TYPE_CHECKING, ClassVar

from kvflow.policies.kvflow import AGENT, NO_INFO, SUFFIX, KVFlowPolicy
from kvflow.step_graph import INF

if TYPE_CHECKING:
    from kvflow.radix import RadixNode


REKEY_TOLERANCE = 0.1  # relative change of an agent's estimates that triggers re-keying its nodes


class KVFlowCostPolicy(KVFlowPolicy):
    name = "kvflow_cost"
    tracks_dynamic = True  # the cache tags each agent's latest dynamic prompt for it
    observes_prompts = True  # it learns how much of a dynamic prompt the next one repeats
    aging_by_default: ClassVar[bool] = False  # ``aging`` when not given (kvflow_gd: True)

    def __init__(
        self,
        gain_s_per_token: float = 1.0,
        prior_reuse: float = 0.5,
        prior_weight: float = 4.0,
        decay: float = 0.0,
        aging: bool | None = None,
    ) -> None:
        super().__init__()
        self.gain_s_per_token = gain_s_per_token  # recompute minus reload time of one token (cost model)
        self.prior_reuse = prior_reuse  # reuse probability before any evidence ...
        self.prior_weight = prior_weight  # ... worth this many invocations of evidence
        self.decay = decay  # 0: value / (1 + steps); else value x decay**steps
        # GreedyDual aging (Cao & Irani): a node's priority is L + value, where L is the inflation
        # level when it was last accessed and L rises to each victim's priority. A node that stops
        # being accessed falls behind fresher ones however valuable it looked (recency, as LRU),
        # while a low-value node goes first even if it was just used (what LRU gets wrong).
        self.aging = self.aging_by_default if aging is None else aging
        self.inflation = 0.0
        self._checkpoints_tick: list[int] = [0]
        self._checkpoints_level: list[float] = [0.0]
        self.repeats: Counter[str] = Counter()  # per agent: prompts that followed one of the same client
        self.dynamic_created: Counter[str] = Counter()  # per agent: dynamic-prompt tokens
        self.dynamic_reused: Counter[str] = Counter()  # ... that the agent's next prompt repeated
        self._filed: dict[str, tuple[float, ...]] = {}  # estimates the heap keys were filed with

    # ----- online learning (called by the cache manager) ----------------------------------------
    def observe_evict(self, node: RadixNode, tick: int) -> None:
        """A victim left the GPU at access-clock ``tick``: inflation rises to its priority."""
        if not self.aging:
            return
        key = self.key(node)
        if key[0] == AGENT and key[1] > self.inflation:
            self.inflation = key[1]
            self._checkpoints_tick.append(tick)
            self._checkpoints_level.append(self.inflation)

    def _level_at(self, tick: int) -> float:
        return self._checkpoints_level[bisect.bisect_right(self._checkpoints_tick, tick) - 1]

    def observe_prompt(self, agent: str, had_previous: bool, created_tokens: int, reused_tokens: int) -> bool:
        """A new prompt of ``agent``; if the same client ran it before, that previous prompt had
        ``created_tokens`` dynamic tokens of which the new one starts with ``reused_tokens``.
        Measured on the prompts themselves, not on cache hits, so the estimates do not depend on
        what this policy chose to keep."""
        if had_previous:
            self.repeats[agent] += 1
            self.dynamic_created[agent] += created_tokens
            self.dynamic_reused[agent] += reused_tokens
        # True when the agent's estimates moved enough that its nodes' keys must be re-filed
        now = (self.reuse_probability(agent),)
        before = self._filed.get(agent)
        if before is None or any(abs(a - b) > REKEY_TOLERANCE * max(b, 1e-3) for a, b in zip(now, before)):
            self._filed[agent] = now
            return True
        return False

    def reuse_probability(self, agent: str) -> float:
        """Share of an agent's latest dynamic prompt that its next prompt repeats."""
        created = self.dynamic_created[agent]
        mean = created / max(self.repeats[agent], 1)  # tokens per observed continuation
        reused = min(self.dynamic_reused[agent], created)
        return (
            (reused + self.prior_reuse * self.prior_weight * mean) / (created + self.prior_weight * mean)
            if created
            else self.prior_reuse
        )

    def _discount(self, steps: float) -> float:
        if steps >= INF:
            return 0.0
        return self.decay**steps if self.decay else 1.0 / (1.0 + steps)

    # ----- ranking -----------------------------------------------------------------------------
    def value(self, node: RadixNode) -> float | None:
        """Expected benefit of keeping ``node`` (seconds saved per token, discounted by distance);
        None when no user of the node has a hint (no workflow info)."""
        best: float | None = None
        for user in node.users:
            if user in self.steps:
                v = self._discount(self.steps[user])  # the graph says it runs again: P = 1
                best = v if best is None else max(best, v)
        for user in node.dynamic_users:
            if user in self.steps:
                v = self.reuse_probability(user[1]) * self._discount(self.steps[user])
                best = v if best is None else max(best, v)
        return None if best is None else best * self.gain_s_per_token

    def key(self, node: RadixNode) -> tuple:
        value = self.value(node)
        if value is None:
            return (SUFFIX if node.suffix and not node.dynamic_users else NO_INFO, 0.0, node.last_access)
        if value <= 0.0:
            return (SUFFIX, 0.0, node.last_access)
        if self.aging:
            return (AGENT, self._level_at(node.last_access) + value, node.last_access)
        return (AGENT, value, node.last_access)

    def prefetch_limit(self, node: RadixNode) -> tuple | None:
        value = self.value(node)
        if value is None:
            return None
        if self.aging:  # rank the target as if used now: it is about to be
            return (AGENT, self.inflation + value, -INF)
        return (AGENT, value, -INF)

    def worth_keeping(self, node: RadixNode) -> bool:
        """Demote to CPU (True) or drop (False) when the node leaves the GPU."""
        value = self.value(node)
        return (
            self.gain_s_per_token > 0
            and (value is None or value > 0.0)
            and not (node.suffix and not node.dynamic_users and not node.users)
        )
