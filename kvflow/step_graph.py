"""Agent Step Graph: how many workflow steps until each agent runs (KVFLOW.md 2.1).

An agent that is running or ready is 0 steps away; an AND node runs one step after its slowest
pending predecessor (``max + 1``), an OR node one step after its fastest (``min + 1``). Loops are
handled by bounded relaxation: a value is the agent's earliest future occurrence within ``horizon``
steps, anything farther (or unreachable) is ``INF``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

INF = math.inf
AND = "AND"
OR = "OR"
DEFAULT_HORIZON = 16


@dataclass
class StepGraph:
    """Agents, their aggregation (AND/OR) and dependency edges of one workflow."""

    aggregation: dict[str, str] = field(default_factory=dict)
    edges: list[tuple[str, str]] = field(default_factory=list)
    horizon: int = DEFAULT_HORIZON

    def __post_init__(self) -> None:
        self._preds: dict[str, list[str]] = {a: [] for a in self.aggregation}
        for src, dst in self.edges:
            for name in (src, dst):
                if name not in self.aggregation:
                    raise ValueError(f"edge [{src}, {dst}]: unknown agent '{name}'")
            self._preds[dst].append(src)
        for agent, agg in self.aggregation.items():
            if agg not in (AND, OR):
                raise ValueError(f"agent '{agent}': aggregation must be AND or OR, got '{agg}'")
        if self.horizon < 1:
            raise ValueError(f"horizon must be >= 1, got {self.horizon}")
        self._memo: dict[frozenset[str], dict[str, float]] = {}  # frontier -> steps (a graph is immutable)

    @property
    def agents(self) -> list[str]:
        return list(self.aggregation)

    def predecessors(self, agent: str) -> list[str]:
        return self._preds[agent]

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> StepGraph:
        """Build from the dict/YAML format documented in docs/architecture.md."""
        if not isinstance(data, Mapping) or "agents" not in data:
            raise ValueError("step graph: expected a mapping with 'agents' (and 'edges')")
        agents = data["agents"]
        if isinstance(agents, Mapping):
            aggregation = {
                str(name): str((spec or {}).get("aggregation", AND)).upper() for name, spec in agents.items()
            }
        else:
            aggregation = {str(name): AND for name in agents}
        edges = []
        for edge in data.get("edges", []) or []:
            if not isinstance(edge, (list, tuple)) or len(edge) != 2:
                raise ValueError(f"step graph: edge must be [from, to], got {edge!r}")
            edges.append((str(edge[0]), str(edge[1])))
        return cls(aggregation, edges, int(data.get("horizon", DEFAULT_HORIZON)))

    def to_dict(self) -> dict[str, Any]:
        return {
            "agents": {a: {"aggregation": agg} for a, agg in self.aggregation.items()},
            "edges": [[s, d] for s, d in self.edges],
            "horizon": self.horizon,
        }

    def steps_to_execution(self, frontier: Iterable[str]) -> dict[str, float]:
        """Steps until each agent's next execution, given the running/ready ``frontier``.

        Only predecessors reachable from the frontier count (finished branches no longer gate an
        AND node). Bounded relaxation keeps loops finite: at most ``horizon + 1`` rounds, and any
        value past the horizon is INF.
        """
        front = frozenset(frontier)
        if front in self._memo:
            return dict(self._memo[front])
        unknown = front - set(self.aggregation)
        if unknown:
            raise ValueError(f"frontier names unknown agents: {sorted(unknown)}")
        steps = {a: (0.0 if a in front else INF) for a in self.aggregation}
        for _ in range(self.horizon + 1):
            changed = False
            for agent, agg in self.aggregation.items():
                if agent in front:
                    continue
                pending = [steps[p] + 1 for p in self._preds[agent] if steps[p] < INF]
                value = (max(pending) if agg == AND else min(pending)) if pending else INF
                if value > self.horizon:
                    value = INF
                if value != steps[agent]:
                    steps[agent], changed = value, True
            if not changed:
                break
        self._memo[front] = steps
        return dict(steps)
