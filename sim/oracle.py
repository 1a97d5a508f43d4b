"""Future knowledge for the oracle policy, read from the trace only (STYLE.md section 6).

Belady needs, for every (client, agent) fixed prompt, when it is used next. Trace order is not
time order when workflows run concurrently, so each invocation gets an *estimated* start time:
its workflow's arrival plus, along its dependency chain, each predecessor's stand-alone latency
(prefill of its uncached part + its decode at batch 1, from the cost model) and tool delay.
The driver tells the oracle each time an invocation is submitted; the (client, agent)'s next use
becomes the estimate of its following invocation (or never).
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from kvflow.step_graph import INF
from sim.cost_model import CostModel


def estimated_starts_s(trace: Any, cost: CostModel) -> dict[str, float]:
    """Invocation id -> estimated start time if it ran alone (dependencies in topological order)."""
    start: dict[str, float] = {}
    end: dict[str, float] = {}
    for inv in trace.invocations:
        ready = max((end[d] for d in inv.deps), default=0.0)
        s = max(ready + inv.delay_s, inv.arrival_s or 0.0)
        prompt = trace.prompt_len(inv)
        new = max(prompt - trace.fixed_tokens(inv), 1)
        run = cost.prefill_time_s([(new, prompt - new)])
        run += float(cost.decode_run_times_s([prompt], max(inv.output_tokens - 1, 1))[-1])
        start[inv.id], end[inv.id] = s, s + run
    return start


class OracleFeed:
    """Keeps the oracle policy's next-use table current as the driver submits invocations."""

    def __init__(self, trace: Any, cost: CostModel, cache: Any) -> None:
        self.cache = cache
        self.policy = cache.policy
        est = estimated_starts_s(trace, cost)
        self.uses: dict[tuple[str, str], list[float]] = defaultdict(list)
        self.position: dict[str, tuple[tuple[str, str], int]] = {}
        order = sorted(trace.invocations, key=lambda inv: (est[inv.id], inv.id))
        for inv in order:
            user = (inv.client_id, inv.agent_id)
            self.position[inv.id] = (user, len(self.uses[user]))
            self.uses[user].append(est[inv.id])
        self.policy.set_next_use({u: times[0] for u, times in self.uses.items()})

    def on_submit(self, inv: Any) -> None:
        user, k = self.position[inv.id]
        times = self.uses[user]
        self.policy.set_next_use({user: times[k + 1] if k + 1 < len(times) else INF})
        boundary = self.cache.tree.user_nodes.get(user)
        if boundary is not None and boundary.parent is not None:
            for node in boundary.path_to_root():
                self.cache.tree.refresh(node)
