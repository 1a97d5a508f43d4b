"""`kvflow-trace stats`: workload shape, prefix reuse and an ideal hit-rate ceiling.

The ceiling assumes an infinite cache: each invocation, in trace order, hits the longest prefix
seen in any earlier prompt. Prompts are compared segment by segment (equal shared names or block
ids carry equal tokens; a shorter use is a prefix), so it needs no token expansion and stays fast.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from traces.graph import loops
from traces.schema import Invocation, Trace


class _PrefixTrie:
    """Segment-level trie: node = {unit: (max_len, {len: child})}."""

    def __init__(self) -> None:
        self.root: dict[Any, tuple[int, dict[int, dict]]] = {}

    @staticmethod
    def _units(inv: Invocation) -> list[tuple[Any, int] | None]:
        out: list[tuple[Any, int] | None] = []
        for seg in inv.segments:
            if seg.kind == "unique":
                out.append(None)  # fresh tokens never match and end any reusable prefix
            elif seg.kind == "tokens":
                out.append((("tokens", seg.ids), seg.n_tokens))
            else:
                out.append(((seg.kind, seg.key), seg.n_tokens))
        return out

    def match_insert(self, inv: Invocation, namespace: str = "") -> int:
        """Tokens of `inv`'s prompt that prefix-match an earlier prompt; then remember the prompt.
        Prompts only match within one `namespace` (e.g. per model: no KV is shared across models)."""
        units, matched, matching = self._units(inv), 0, True
        node = self.root.setdefault(("namespace", namespace), (0, {0: {}}))[1][0] if namespace else self.root
        for unit in units:
            if unit is None:
                break
            key, n = unit
            entry = node.get(key)
            if matching and entry is not None:
                matched += min(n, entry[0])
                matching = n in entry[1]
            else:
                matching = False
            max_n, children = entry if entry is not None else (0, {})
            node[key] = (max(max_n, n), children)
            node = children.setdefault(n, {})
        return matched


def _common_prefix_tokens(a: Invocation, b: Invocation) -> int:
    """Tokens at the start of `a`'s prompt that are also the start of `b`'s (segment level)."""
    common = 0
    for x, y in zip(a.segments, b.segments):
        if x.kind == "unique" or (x.kind, x.key, x.ids) != (y.kind, y.key, y.ids):
            break
        common += min(x.n_tokens, y.n_tokens)
        if x.n_tokens != y.n_tokens:
            break
    return common


def _reuse(trace: Trace, prompt_total: int) -> dict[str, Any]:
    """Prefix reuse along dependencies, and the per-model ceiling when calls name their model."""
    by_id = trace.by_id()
    with_dep = [inv for inv in trace.invocations if inv.deps]
    out: dict[str, Any] = {
        "prompt_output_ratio": prompt_total / max(sum(i.output_tokens for i in trace.invocations), 1),
        "dep_prefix_share": sum(_common_prefix_tokens(i, by_id[i.deps[0]]) for i in with_dep) / max(prompt_total, 1),
    }
    if any(inv.model for inv in trace.invocations):
        trie = _PrefixTrie()
        hits = sum(trie.match_insert(inv, inv.model or "-") for inv in trace.invocations)
        out["ideal_hit_rate_per_model"] = hits / max(prompt_total, 1)
        models: dict[str, int] = {}
        for inv in trace.invocations:
            models[inv.model or "-"] = models.get(inv.model or "-", 0) + 1
        out["calls_per_model"] = dict(sorted(models.items()))
    return out


def _dist(values: list[int]) -> dict[str, float]:
    if not values:
        return {"n": 0, "min": 0, "mean": 0.0, "p50": 0.0, "p95": 0.0, "max": 0, "total": 0}
    a = np.asarray(values, dtype=np.int64)
    return {
        "n": len(values),
        "min": int(a.min()),
        "mean": float(a.mean()),
        "p50": float(np.percentile(a, 50)),
        "p95": float(np.percentile(a, 95)),
        "max": int(a.max()),
        "total": int(a.sum()),
    }


def compute_stats(trace: Trace) -> dict[str, Any]:
    invs = trace.invocations
    fixed = [trace.fixed_tokens(i) for i in invs]
    prompt = [trace.prompt_len(i) for i in invs]
    trie = _PrefixTrie()
    hits = [trie.match_insert(i) for i in invs]
    per_agent: dict[str, list[int]] = {}
    for inv, f in zip(invs, fixed):
        per_agent.setdefault(f"{inv.workflow}/{inv.agent_id}" if inv.workflow else inv.agent_id, []).append(f)
    total_prompt = max(sum(prompt), 1)
    return {
        "workflows": len(trace.workflows),
        "clients": len({i.client_id for i in invs}),
        "invocations": len(invs),
        "agents": len(per_agent),
        "fixed_tokens": _dist(fixed),
        "dynamic_tokens": _dist([p - f for p, f in zip(prompt, fixed)]),
        "output_tokens": _dist([i.output_tokens for i in invs]),
        "prompt_tokens": _dist(prompt),
        "fixed_share": sum(fixed) / total_prompt,
        "ideal_hit_rate": sum(hits) / total_prompt,
        **_reuse(trace, sum(prompt)),
        "per_agent_fixed": {a: _dist(v) for a, v in sorted(per_agent.items())},
        "per_role_fixed": _per_role(invs, fixed),
        "graphs": {wf.id: _graph_info(wf.graph) for wf in trace.workflows.values()},
        "provenance": trace.meta.get("provenance", {}),
    }


def _per_role(invs: list[Invocation], fixed: list[int]) -> dict[str, dict[str, float]]:
    """Fixed lengths grouped by role, for agent ids of the form "Phase:Role" (imported logs)."""
    roles: dict[str, list[int]] = {}
    for inv, f in zip(invs, fixed):
        if ":" in inv.agent_id:
            roles.setdefault(inv.agent_id.rsplit(":", 1)[1], []).append(f)
    return {r: _dist(v) for r, v in sorted(roles.items())}


def _graph_info(graph: dict[str, Any] | None) -> dict[str, Any] | None:
    if graph is None:
        return None
    return {
        "agents": len(graph.get("agents", {})),
        "edges": len(graph.get("edges", [])),
        "horizon": graph.get("horizon"),
        "loops": loops(graph),
        "or_joins": sorted(a for a, s in graph.get("agents", {}).items() if s.get("aggregation") == "OR"),
    }


def format_stats(path: str, s: dict[str, Any]) -> str:
    def d(x: dict[str, float]) -> str:
        return (
            f"min {x['min']}  mean {x['mean']:.1f}  p50 {x['p50']:.0f}  p95 {x['p95']:.0f}  "
            f"max {x['max']}  total {x['total']}"
        )

    lines = [
        f"{path}",
        f"  workflows {s['workflows']}  clients {s['clients']}  invocations {s['invocations']}  agents {s['agents']}",
        f"  fixed tokens    {d(s['fixed_tokens'])}",
        f"  dynamic tokens  {d(s['dynamic_tokens'])}",
        f"  output tokens   {d(s['output_tokens'])}",
        f"  prompt tokens   {d(s['prompt_tokens'])}",
        f"  fixed (declared reusable) share of prompt tokens: {s['fixed_share']:.1%}",
        f"  ideal hit-rate ceiling (infinite cache, longest earlier prefix): {s['ideal_hit_rate']:.1%}",
        f"  prompt / output tokens: {s['prompt_output_ratio']:.1f}x; prompt tokens that repeat the "
        f"first dependency's prompt prefix: {s['dep_prefix_share']:.1%}",
    ]
    if "ideal_hit_rate_per_model" in s:
        lines.append(
            f"  ideal hit-rate ceiling with no KV shared across models: {s['ideal_hit_rate_per_model']:.1%}"
            f" (calls per model: {', '.join(f'{m} {n}' for m, n in s['calls_per_model'].items())})"
        )
    lines += ["  fixed prompt length per agent (calls; fixed tokens min / mean / max):"]
    for agent, x in s["per_agent_fixed"].items():
        lines.append(f"    {agent or '-'}: {x['n']} calls, fixed {x['min']} / {x['mean']:.0f} / {x['max']}")
    if s["per_role_fixed"]:
        lines.append("  fixed prompt length per role (calls; fixed tokens min / mean / max):")
    for role, x in s["per_role_fixed"].items():
        lines.append(f"    {role}: {x['n']} calls, fixed {x['min']} / {x['mean']:.0f} / {x['max']}")
    for wf, g in s["graphs"].items():
        if g is None:
            lines.append(f"  graph {wf}: none declared")
            continue
        lines.append(
            f"  graph {wf}: {g['agents']} agents, {g['edges']} edges, horizon {g['horizon']}, "
            f"OR joins {len(g['or_joins'])}, loops {len(g['loops'])}"
        )
        for comp in g["loops"]:
            lines.append(f"    loop over {len(comp)} agent(s): {', '.join(comp)}")
    return "\n".join(lines)
