"""Infer an Agent Step Graph online from observed agent transitions (beyond KVFLOW.md 2.1).

Workflows rarely declare their graph (Mooncake, OpenAI logs, ChatDev with the graph hidden). This
learns, per application, how often agent ``a`` is followed by agent ``b`` within the same client,
and turns the transitions seen often enough into a graph: an agent's steps-to-execution is its
distance from the client's current agent over edges with probability >= ``min_edge_prob``. An
agent whose outgoing transitions were seen fewer than ``min_observations`` times is not trusted:
the client then gets no hints, and the eviction policy falls back to LRU for it.
"""

from __future__ import annotations

from collections import Counter, defaultdict, deque
from dataclasses import dataclass, field

from kvflow.step_graph import INF


def _agent_counts() -> defaultdict[str, Counter[str]]:
    """agent -> next agent -> count (a named factory: mypyc cannot compile a lambda in a lambda)."""
    return defaultdict(Counter)


@dataclass
class TransitionModel:
    min_observations: int = 3
    min_edge_prob: float = 0.1
    horizon: int = 16
    counts: dict[str, dict[str, Counter[str]]] = field(default_factory=lambda: defaultdict(_agent_counts))
    last_agent: dict[str, str] = field(default_factory=dict)  # client -> agent of its latest request
    _cache: dict[tuple[str, str], dict[str, float]] = field(default_factory=dict)

    def observe(self, app_id: str, client_id: str, agent_id: str) -> None:
        """Record that ``client_id`` now runs ``agent_id`` (after whatever it ran before)."""
        previous = self.last_agent.get(client_id)
        self.last_agent[client_id] = agent_id
        if previous is None:
            self.counts[app_id].setdefault(agent_id, Counter())  # make the agent known
            return
        row = self.counts[app_id][previous]
        is_new_edge = agent_id not in row
        row[agent_id] += 1
        total = sum(row.values())
        # a new edge, or a shift across the probability threshold, changes the graph
        if is_new_edge or total <= self.min_observations or total % 8 == 0:
            self._cache = {k: v for k, v in self._cache.items() if k[0] != app_id}

    def confident(self, app_id: str, agent_id: str) -> bool:
        return sum(self.counts[app_id].get(agent_id, Counter()).values()) >= self.min_observations

    def steps_from(self, app_id: str, agent_id: str) -> dict[str, float] | None:
        """Steps-to-execution of every known agent of ``app_id`` when ``agent_id`` runs now; None
        when the model has not seen enough of ``agent_id`` to predict what follows it."""
        if not self.confident(app_id, agent_id):
            return None
        key = (app_id, agent_id)
        if key not in self._cache:
            self._cache[key] = self._bfs(app_id, agent_id)
        return self._cache[key]

    def _bfs(self, app_id: str, start: str) -> dict[str, float]:
        rows = self.counts[app_id]
        steps: dict[str, float] = {agent: INF for agent in rows}
        steps.update({agent: INF for row in rows.values() for agent in row if agent not in steps})
        steps[start] = 0.0
        queue = deque([start])
        while queue:
            agent = queue.popleft()
            if steps[agent] >= self.horizon:
                continue
            row = rows.get(agent, Counter())
            total = sum(row.values())
            for nxt, count in row.items():
                if count / total >= self.min_edge_prob and steps.get(nxt, INF) == INF:
                    steps[nxt] = steps[agent] + 1
                    queue.append(nxt)
        return steps
