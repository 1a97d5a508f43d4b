"""Seeded synthetic workloads reproducing the KVFlow paper's settings (docs/trace_format.md).

Each generator returns a Trace whose prompts are [fixed shared segments] + [unique dynamic
segment]; an agent's fixed length is drawn once per agent so every call of that agent shares its
fixed tokens, while the dynamic suffix is fresh per call.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from traces.graph import chain_graph
from traces.limits import DEFAULT_MAX_PROMPT_TOKENS, MAX_INVOCATIONS, too_many_tokens
from traces.params import ARRIVAL, BOOL, COUNT, COUNT0, DIST, FRACTION, Dist, parse_params
from traces.schema import FORMAT_NAME, FORMAT_VERSION, Invocation, Segment, Trace, WorkflowDef
from traces.tokens import stable_hash

COMMON = {
    "seed": (COUNT0, 0),
    "fixed_tokens": (DIST, 1024),
    "dynamic_tokens": (DIST, 32),
    "output_tokens": (DIST, 32),
    "workflows": (COUNT, 1),
    "arrival": (ARRIVAL, "zero"),
    "delay_s": (DIST, 0),
}


class _Builder:
    """Collects invocations per client, wiring deps, steps, delays and the client's arrival."""

    def __init__(self, name: str, p: dict[str, Any]) -> None:
        self.name, self.p = name, p
        self.rng_len = np.random.default_rng(stable_hash(name, p["seed"], "lengths"))
        self.rng_time = np.random.default_rng(stable_hash(name, p["seed"], "time"))
        self.invocations: list[Invocation] = []
        self.fixed_len: dict[str, int] = {}
        self.starts = p["arrival"].starts(p["workflows"], self.rng_time)
        self.steps: dict[str, int] = {}

    def agent_fixed(self, key: str, dist: Dist | None = None) -> int:
        """Fixed length of a named prompt part, drawn once so every use has the same tokens."""
        if key not in self.fixed_len:
            self.fixed_len[key] = (dist or self.p["fixed_tokens"]).sample_int(self.rng_len)
        return self.fixed_len[key]

    def add(
        self, client: int, inv_id: str, workflow: str, agent: str, fixed: list[tuple[str, int]], deps: list[str]
    ) -> str:
        cid = f"wf{client}"
        step = self.steps.get(cid, 0)
        self.steps[cid] = step + 1
        segs = [Segment("shared", k, n) for k, n in fixed if n > 0]
        dyn = self.p["dynamic_tokens"].sample_int(self.rng_len)
        if dyn > 0 or not segs:
            segs.append(Segment("unique", "", max(dyn, 1)))
        output = self.p["output_tokens"].sample_int(self.rng_len)
        self._check_size(sum(seg.n_tokens for seg in segs), output)
        self.invocations.append(
            Invocation(
                id=f"{cid}/{inv_id}",
                client_id=cid,
                workflow=workflow,
                agent_id=agent,
                step=step,
                segments=segs,
                fixed_segments=len(segs) - (1 if segs[-1].kind == "unique" else 0),
                output_tokens=output,
                deps=deps,
                arrival_s=self.starts[client] if step == 0 else None,
                delay_s=self.p["delay_s"].sample(self.rng_time) if step else 0.0,
            )
        )
        return f"{cid}/{inv_id}"

    def _check_size(self, prompt_tokens: int, output_tokens: int) -> None:
        """ValueError naming the parameters when a call or the trace would be absurdly large (the
        count is checked up front by the generators whose size is known; this is the backstop)."""
        if len(self.invocations) >= MAX_INVOCATIONS:
            raise ValueError(f"{self.name}: more than {MAX_INVOCATIONS:,} invocations: lower workflows, runs or loops")
        for what, n, keys in (
            ("prompt", prompt_tokens, "fixed_tokens/dynamic_tokens"),
            ("output", output_tokens, "output_tokens"),
        ):
            problem = too_many_tokens(n, DEFAULT_MAX_PROMPT_TOKENS, what)
            if problem:
                raise ValueError(f"{self.name}: {keys}: {problem.split(' (')[0]}")

    def trace(self, workflows: list[WorkflowDef]) -> Trace:
        params = {k: str(v) if not isinstance(v, (bool, int, float)) else v for k, v in self.p.items()}
        meta = {
            "format": FORMAT_NAME,
            "version": FORMAT_VERSION,
            "seed": self.p["seed"],
            "provenance": {"generator": self.name, "params": params},
        }
        return Trace(meta, {w.id: w for w in workflows}, self.invocations)


def check_count(name: str, n_invocations: int, keys: str) -> None:
    """ValueError before anything is drawn when a trace would hold over ``MAX_INVOCATIONS`` calls
    (``runs=1000000000`` used to run out of memory)."""
    if n_invocations > MAX_INVOCATIONS:
        raise ValueError(
            f"{name}: {keys} = {n_invocations:,} invocations exceeds the limit of {MAX_INVOCATIONS:,}: lower them"
        )


def _prefix(b: _Builder, client: int, shared: bool) -> str:
    return b.name if shared else f"wf{client}"


def sequential(**given: Any) -> Trace:
    """N agents in a chain; warm-up run(s), then `runs` runs, each after the previous run's last agent."""
    return _sequential("sequential", {"agents": 10, "runs": 10, "warmup": 1}, given)


def concurrent(**given: Any) -> Trace:
    """Many independent sequential workflows at once; each instance is its own client."""
    return _sequential(
        "concurrent",
        {
            "agents": 10,
            "runs": 1,
            "warmup": 0,
            "workflows": 64,
            "fixed_tokens": 1024,
            "dynamic_tokens": 256,
            "output_tokens": 256,
        },
        given,
    )


def _sequential(name: str, defaults: dict[str, Any], given: dict[str, Any]) -> Trace:
    spec = {
        **COMMON,
        "agents": (COUNT, 10),
        "runs": (COUNT, 10),
        "warmup": (COUNT0, 1),
        "shared_prompts": (BOOL, False),
    }
    spec = {k: (parse, defaults.get(k, d)) for k, (parse, d) in spec.items()}
    p = parse_params(name, spec, given)
    total_runs = p["warmup"] + p["runs"]
    check_count(name, p["workflows"] * total_runs * p["agents"], "workflows x (warmup + runs) x agents")
    b = _Builder(name, p)
    agents = [f"agent{i}" for i in range(p["agents"])]
    for c in range(p["workflows"]):
        pre = _prefix(b, c, p["shared_prompts"])
        prev: list[str] = []
        for r in range(total_runs):
            label = f"warmup{r}" if r < p["warmup"] else f"r{r - p['warmup']}"
            for a in agents:
                key = f"{pre}/{a}"
                prev = [b.add(c, f"{label}/{a}", name, a, [(key, b.agent_fixed(key))], prev)]
    graph = chain_graph(agents, loop_back=total_runs > 1)
    return b.trace([WorkflowDef(name, agents, graph)])


def branches(**given: Any) -> Trace:
    """Each stage picks one of k agents at random; a stage's candidates share a prefix part."""
    spec = {
        **COMMON,
        "agents": (COUNT, 10),
        "branches": (COUNT, 2),
        "shared_fraction": (FRACTION, 0.5),
        "runs": (COUNT, 10),
        "warmup": (COUNT0, 1),
        "shared_prompts": (BOOL, False),
        "fixed_tokens": (DIST, 8192),
    }
    p = parse_params("branches", spec, given)
    n_calls = p["workflows"] * (p["warmup"] * p["branches"] + p["runs"]) * p["agents"]
    check_count("branches", n_calls, "workflows x (warmup x branches + runs) x agents")
    b = _Builder("branches", p)
    rng_pick = np.random.default_rng(stable_hash("branches", p["seed"], "pick"))
    k, n_stages = p["branches"], p["agents"]
    names = [[f"s{s}b{j}" for j in range(k)] for s in range(n_stages)]
    for c in range(p["workflows"]):
        pre = _prefix(b, c, p["shared_prompts"])
        prev: list[str] = []
        # warm-up: k passes, pass j takes candidate j of every stage, so every prompt is seen once
        passes = [(f"warmup{w}_{j}", [j] * n_stages) for w in range(p["warmup"]) for j in range(k)]
        passes += [(f"r{r}", rng_pick.integers(0, k, size=n_stages).tolist()) for r in range(p["runs"])]
        for label, picks in passes:
            for s, j in enumerate(picks):
                total = b.agent_fixed(f"{pre}/s{s}/total")
                common = int(round(total * p["shared_fraction"]))
                parts = [(f"{pre}/s{s}/common", common), (f"{pre}/{names[s][j]}", total - common)]
                prev = [b.add(c, f"{label}/{names[s][j]}", "branches", names[s][j], parts, prev)]
    agents = [a for stage in names for a in stage]
    nodes: dict[str, dict[str, str]] = {
        a: ({"aggregation": "OR"} if k > 1 or s == 0 else {}) for s, stage in enumerate(names) for a in stage
    }
    edges = [[x, y] for s in range(n_stages - 1) for x in names[s] for y in names[s + 1]]
    edges += [[x, y] for x in names[-1] for y in names[0]]
    graph = {"agents": nodes, "edges": edges, "horizon": n_stages * 2}
    return b.trace([WorkflowDef("branches", agents, graph)])


PEER_AGENTS = ["planner", "executor", "expresser", "reviewer"]


def peer_loop(**given: Any) -> Trace:
    """Planner -> Executor -> Expresser -> Reviewer, the reviewer looping back a random number of times."""
    spec = {
        **COMMON,
        "fixed_tokens": (DIST, "uniform:64:256"),
        "dynamic_tokens": (DIST, 64),
        "output_tokens": (DIST, 64),
        "common_tokens": (DIST, 32),
        "loops": (DIST, "uniform:1:3"),
        "shared_prompts": (BOOL, False),
    }
    p = parse_params("peer_loop", spec, given)
    b = _Builder("peer_loop", p)
    rng_loops = np.random.default_rng(stable_hash("peer_loop", p["seed"], "loops"))
    for c in range(p["workflows"]):
        pre = _prefix(b, c, p["shared_prompts"])
        common = b.agent_fixed(f"{pre}/common", p["common_tokens"])  # the agents' shared preamble
        prev: list[str] = []
        for it in range(1 + p["loops"].sample_int(rng_loops)):
            for a in PEER_AGENTS:
                parts = [(f"{pre}/common", common), (f"{pre}/{a}", b.agent_fixed(f"{pre}/{a}"))]
                prev = [b.add(c, f"it{it}/{a}", "peer_loop", a, parts, prev)]
    graph = chain_graph(PEER_AGENTS, loop_back=True, horizon=16)
    return b.trace([WorkflowDef("peer_loop", PEER_AGENTS, graph)])


def fanout(**given: Any) -> Trace:
    """A planner fans out to `width` parallel workers, joined by an AND aggregator."""
    spec = {**COMMON, "width": (COUNT, 4), "runs": (COUNT, 1), "shared_prompts": (BOOL, False)}
    p = parse_params("fanout", spec, given)
    check_count("fanout", p["workflows"] * p["runs"] * (p["width"] + 2), "workflows x runs x (width + 2)")
    b = _Builder("fanout", p)
    workers = [f"worker{i}" for i in range(p["width"])]
    agents = ["planner", *workers, "aggregator"]
    for c in range(p["workflows"]):
        pre = _prefix(b, c, p["shared_prompts"])
        prev: list[str] = []
        for r in range(p["runs"]):

            def call(a: str, deps: list[str]) -> str:
                return b.add(c, f"r{r}/{a}", "fanout", a, [(f"{pre}/{a}", b.agent_fixed(f"{pre}/{a}"))], deps)

            plan = call("planner", prev)
            done = [call(w, [plan]) for w in workers]
            prev = [call("aggregator", done)]
    nodes: dict[str, dict[str, str]] = {a: {} for a in agents}
    edges = [["planner", w] for w in workers] + [[w, "aggregator"] for w in workers]
    graph: dict[str, Any] = {"agents": nodes, "edges": edges}
    if p["runs"] > 1:
        nodes["planner"] = {"aggregation": "OR"}
        edges.append(["aggregator", "planner"])
        graph["horizon"] = 3 * p["runs"]
    nodes["aggregator"] = {"aggregation": "AND"}
    return b.trace([WorkflowDef("fanout", agents, graph)])


WORKLOADS: dict[str, Callable[..., Trace]] = {
    "sequential": sequential,
    "branches": branches,
    "concurrent": concurrent,
    "peer_loop": peer_loop,
    "fanout": fanout,
}


def generate(workload: str, **params: Any) -> Trace:
    """Build a synthetic trace; params may be Python values or CLI strings ("uniform:16:64")."""
    if workload not in WORKLOADS:
        raise ValueError(f"unknown workload {workload!r} (known: {', '.join(WORKLOADS)})")
    return WORKLOADS[workload](**params)
