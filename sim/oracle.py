"""Future knowledge for the oracle policy, read from the trace only (STYLE.md section 6).

The oracle knows, for every (client, agent) fixed prompt, exactly how many of that client's
invocations come before its next use: the branch that will be taken, how often a loop repeats,
whether the agent runs again at all. KVFlow only has the step graph's earliest possible
occurrence. Counting in the client's own invocations (not in estimated seconds) keeps the ranking
right however fast each workflow actually progresses among concurrent ones; distances of different
clients compare like KVFlow's steps-to-execution.
"""

from __future__ import annotations

import bisect
from collections import defaultdict
from typing import Any

from kvflow.step_graph import INF


class OracleFeed:
    """Keeps the oracle policy's next-use table current as the driver submits invocations."""

    def __init__(self, trace: Any, cache: Any) -> None:
        self.cache = cache
        self.policy = cache.policy
        self.position: dict[str, tuple[str, int]] = {}
        counts: dict[str, int] = defaultdict(int)
        self.uses: dict[str, dict[str, list[int]]] = defaultdict(lambda: defaultdict(list))
        for inv in trace.invocations:  # topological order: a client's own invocation sequence
            idx = counts[inv.client_id]
            counts[inv.client_id] += 1
            self.position[inv.id] = (inv.client_id, idx)
            self.uses[inv.client_id][inv.agent_id].append(idx)
        self.policy.set_next_use({(c, a): float(idx[0]) for c, agents in self.uses.items()
                                  for a, idx in agents.items()})

    def on_submit(self, inv: Any) -> None:
        client, now = self.position[inv.id]
        table = {}
        for agent, idx in self.uses[client].items():
            k = bisect.bisect_right(idx, now)  # first use strictly after the one starting now
            table[(client, agent)] = float(idx[k] - now) if k < len(idx) else INF
        table[(client, inv.agent_id)] = 0.0  # running now
        self.policy.set_next_use(table)
        for user in table:
            boundary = self.cache.tree.user_nodes.get(user)
            if boundary is not None and boundary.parent is not None:
                for node in boundary.path_to_root():
                    self.cache.tree.refresh(node)
