"""Checks and loop analysis for StepGraph dicts (docs/architecture.md format).

Done here rather than through kvflow.step_graph so traces/ can validate files on its own.
"""

from __future__ import annotations

from typing import Any

AGGREGATIONS = ("AND", "OR")


def graph_problems(graph: Any, agents: list[str] | None = None) -> list[str]:
    """Problems of a StepGraph dict; empty when valid. `agents`: the workflow's declared agents."""
    if not isinstance(graph, dict):
        return ["graph must be an object or null"]
    problems: list[str] = []
    unknown = set(graph) - {"agents", "edges", "horizon"}
    if unknown:
        problems.append(f"graph has unknown field(s) {sorted(unknown)}")
    nodes = graph.get("agents")
    if not isinstance(nodes, dict):
        return problems + ["graph.agents must be an object of agent -> {aggregation}"]
    for name, spec in nodes.items():
        if not isinstance(spec, dict) or set(spec) - {"aggregation"}:
            problems.append(f"graph agent {name!r}: spec must be {{}} or {{aggregation: AND|OR}}")
        elif spec.get("aggregation", "AND") not in AGGREGATIONS:
            problems.append(f"graph agent {name!r}: aggregation must be AND or OR")
        if agents is not None and name not in agents:
            problems.append(f"graph agent {name!r} is not in the workflow's agents")
    edges = graph.get("edges", [])
    if not isinstance(edges, list):
        return problems + ["graph.edges must be a list of [from, to]"]
    for edge in edges:
        if not (isinstance(edge, list) and len(edge) == 2 and all(isinstance(a, str) for a in edge)):
            problems.append(f"graph edge {edge!r} must be [from, to]")
        elif edge[0] not in nodes or edge[1] not in nodes:
            problems.append(f"graph edge {edge!r} names an unknown agent")
    horizon = graph.get("horizon")
    if horizon is not None and (not isinstance(horizon, int) or isinstance(horizon, bool) or horizon < 1):
        problems.append("graph.horizon must be a positive integer")
    if not problems and horizon is None and loops(graph):
        problems.append("graph has a cycle but no horizon")
    return problems


def loops(graph: dict[str, Any]) -> list[list[str]]:
    """Strongly connected components that contain a cycle (each sorted), in a stable order."""
    succ: dict[str, list[str]] = {a: [] for a in graph.get("agents", {})}
    pred: dict[str, list[str]] = {a: [] for a in succ}
    for a, b in graph.get("edges", []):
        succ.setdefault(a, []).append(b)
        succ.setdefault(b, [])
        pred.setdefault(b, []).append(a)
        pred.setdefault(a, [])
    order: list[str] = []  # Kosaraju, iterative so long chains do not hit the recursion limit
    seen: set[str] = set()
    for root in succ:
        if root in seen:
            continue
        seen.add(root)
        stack = [(root, iter(succ[root]))]
        while stack:
            v, it = stack[-1]
            w = next(it, None)
            if w is None:
                stack.pop()
                order.append(v)
            elif w not in seen:
                seen.add(w)
                stack.append((w, iter(succ[w])))
    comps: list[list[str]] = []
    assigned: set[str] = set()
    for root in reversed(order):
        if root in assigned:
            continue
        comp, todo = [], [root]
        assigned.add(root)
        while todo:
            v = todo.pop()
            comp.append(v)
            for w in pred[v]:
                if w not in assigned:
                    assigned.add(w)
                    todo.append(w)
        if len(comp) > 1 or root in succ[root]:
            comps.append(sorted(comp))
    return sorted(comps)


def chain_graph(agents: list[str], loop_back: bool, horizon: int | None = None) -> dict[str, Any]:
    """a0 -> a1 -> ... -> an, optionally an -> a0 (then a0 is an OR join and a horizon is set)."""
    nodes: dict[str, dict[str, str]] = {a: {} for a in agents}
    edges = [[a, b] for a, b in zip(agents, agents[1:])]
    graph: dict[str, Any] = {"agents": nodes, "edges": edges}
    if loop_back and agents:
        edges.append([agents[-1], agents[0]])
        nodes[agents[0]] = {"aggregation": "OR"}
        graph["horizon"] = horizon or 2 * len(agents)
    return graph
