"""The one summarizer: ``summary.json`` of every backend from a few counters and the run's rows.

A backend fills ``RunIdentity`` (what ran) and ``RunCounters`` (what its clock and copy channels
counted); ``summarize`` computes every key from them plus the request and workflow rows, so the
simulator, the real backend and the SGLang replay can never drift apart in what a key means.
Latency and hit-rate figures cover measured (non-warm-up) requests only.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

BACKENDS = ("sim", "real", "sglang")


@dataclass
class RunIdentity:
    """What ran: the summary's context keys (columns every report groups by)."""

    backend: str
    policy: str | None
    experiment: str | None
    workload: str | None
    hardware: str | None
    model: str | None
    seed: int = 0
    params: dict[str, Any] = field(default_factory=dict)  # flat swept parameters

    @classmethod
    def from_config(cls, backend: str, cfg: Mapping[str, Any], params: Mapping[str, Any] | None = None) -> RunIdentity:
        """From a composed config: each group's ``name`` (or the plain value); the experiment
        preset is ``experiment_name`` (kvflow-sim sets it from Hydra) else ``experiment``."""
        experiment = cfg.get("experiment_name")
        if experiment is None:
            experiment = _name(cfg.get("experiment"))
        return cls(
            backend,
            _name(cfg.get("policy")),
            experiment,
            _name(cfg.get("workload")),
            _name(cfg.get("hardware")),
            _name(cfg.get("model")),
            int(cfg.get("seed", 0)),
            dict(cfg.get("params") or {}) if params is None else dict(params),
        )


def _name(node: Any) -> Any:
    return node.get("name") if isinstance(node, Mapping) else node


@dataclass
class RunCounters:
    """What a backend counted during one run (units in the names); what it cannot observe stays 0."""

    makespan_s: float
    wall_s: float = 0.0
    gpu_capacity_tokens: int = 0
    cpu_capacity_tokens: int = 0
    h2d_bytes: int = 0
    d2h_bytes: int = 0
    h2d_busy_s: float = 0.0
    d2h_busy_s: float = 0.0
    h2d_copies: int = 0
    d2h_copies: int = 0
    prefetch_issued: int = 0
    prefetch_used: int = 0
    prefetch_wasted: int = 0
    prefetch_late: int = 0
    resume_prefetch: dict[str, int] = field(default_factory=dict)  # early/late/wasted (prefetch_mode=resume)
    gpu_evicted_tokens: int = 0
    cpu_evicted_tokens: int = 0
    gpu_busy_s: float = 0.0
    iterations: int = 0
    decode_steps: int = 0
    blocking_load_wait_s: float = 0.0
    blocking_load_exposed_s: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)  # backend-only facts, under ``details``
    why: WhyFacts | None = None  # what explains the result (summary key ``why``); None: not known

    def take_cache_stats(self, stats: Any) -> None:
        """Copy the prefetch and eviction counters of a ``KVCacheManager.stats``."""
        self.prefetch_issued, self.prefetch_used = stats.prefetch_issued, stats.prefetch_used
        self.prefetch_wasted, self.prefetch_late = stats.prefetch_wasted, stats.prefetch_late
        self.gpu_evicted_tokens, self.cpu_evicted_tokens = stats.gpu_evicted_tokens, stats.cpu_evicted_tokens
        resume = {k: getattr(stats, f"resume_{k}", 0) for k in ("early", "late", "wasted")}
        self.resume_prefetch = resume if any(resume.values()) else {}


@dataclass
class WhyFacts:
    """The facts that explain a near-1.00x comparison (summary key ``why``), as a backend saw them."""

    replay: str  # closed | open (kvflow.release)
    start: str  # recorded | together | poisson
    hints: str  # declared | inferred | none (the policy got no workflow hints: KVFlow acts as LRU)
    gpu_demand_tokens: int  # tokens that entered the GPU pool: resident at the end + evicted from it
    busy_kind_s: dict[str, float] = field(default_factory=dict)  # prefill | decode | copy_stall seconds
    agents_per_client: float = 0.0  # mean distinct agents per workflow instance (1: hints cannot rank)


def why(c: RunCounters) -> dict[str, Any] | None:
    """The ``why`` block: eviction (demand vs pool), hints, loop, time shares, one-line notes."""
    w = c.why
    if w is None:
        return None
    shares = {k: _ratio(v, c.makespan_s) for k, v in w.busy_kind_s.items()}
    shares["idle"] = max(0.0, 1.0 - sum(shares.values())) if c.makespan_s else 0.0
    facts: dict[str, Any] = {
        "evicted": c.gpu_evicted_tokens > 0,
        "gpu_pool_tokens": c.gpu_capacity_tokens,
        "gpu_demand_tokens": w.gpu_demand_tokens,
        "hints": w.hints,
        "replay": w.replay,
        "start": w.start,
        "agents_per_client": w.agents_per_client,
        "time_share": shares,
    }
    facts["notes"] = _notes(facts)
    return facts


def _notes(f: dict[str, Any]) -> list[str]:
    notes = []
    if not f["evicted"]:
        notes.append("nothing was evicted (demand fits the pool): every policy keeps the same KV")
    if f["hints"] == "none":
        notes.append("no workflow hints (declared or inferred): KVFlow ranks like LRU")
    if f["hints"] != "none" and 0 < f["agents_per_client"] < 1.5:
        notes.append(
            f"{f['agents_per_client']:.2f} agents per workflow instance: step hints barely rank one "
            "instance's prefix against another's (KVFlow ~ LRU)"
        )
    if f["replay"] == "open":
        notes.append("open loop: arrivals are pinned, a faster cache cannot finish a session sooner")
    share = f["time_share"]
    if share.get("decode", 0.0) > 0.8:
        notes.append(f"decode-bound: prefill, what a cache hit saves, is {share.get('prefill', 0.0):.0%} of the time")
    return notes


def _stats(values: list[float]) -> dict[str, float]:
    if not values:
        return {"mean": 0.0, "p50": 0.0, "p99": 0.0}
    a = np.asarray(values, dtype=np.float64)
    return {"mean": float(a.mean()), "p50": float(np.percentile(a, 50)), "p99": float(np.percentile(a, 99))}


def _ratio(num: float, den: float) -> float:
    return float(num) / den if den else 0.0


def summarize(
    who: RunIdentity, c: RunCounters, rows: list[dict[str, Any]], workflows: list[dict[str, Any]]
) -> dict[str, Any]:
    """Every key of the contract (docs/architecture.md "Run directory"): flat headline figures,
    ``params``, and ``details``."""
    if who.backend not in BACKENDS:
        raise ValueError(f"summary: unknown backend {who.backend!r}; valid: {', '.join(BACKENDS)}")
    measured = [r for r in rows if not r["warmup"]]
    wf = _stats([w["latency_s"] for w in workflows])
    prompt = sum(r["prompt_tokens"] for r in measured)
    hit = sum(r["hit_gpu_tokens"] for r in measured)
    loaded = sum(r["loaded_cpu_tokens"] for r in measured)
    recomputed = sum(r["recomputed_tokens"] for r in measured)
    makespan = c.makespan_s
    out = {
        "backend": who.backend,
        "policy": who.policy,
        "experiment": who.experiment,
        "workload": who.workload,
        "hardware": who.hardware,
        "model": who.model,
        "seed": who.seed,
        "requests": len(rows),
        "workflows": len(workflows),
        "workflow_latency_mean_s": wf["mean"],
        "workflow_latency_p50_s": wf["p50"],
        "workflow_latency_p99_s": wf["p99"],
        "makespan_s": makespan,
        "throughput_req_s": _ratio(len(rows), makespan),
        "hit_rate_gpu": _ratio(hit, prompt),
        "hit_rate_cpu": _ratio(loaded, prompt),
        "recompute_rate": _ratio(recomputed, prompt),
        "h2d_bytes": c.h2d_bytes,
        "d2h_bytes": c.d2h_bytes,
        "h2d_utilization": _ratio(c.h2d_busy_s, makespan),
        "d2h_utilization": _ratio(c.d2h_busy_s, makespan),
        "prefetch_issued": c.prefetch_issued,
        "prefetch_used": c.prefetch_used,
        "prefetch_wasted": c.prefetch_wasted,
        "prefetch_late": c.prefetch_late,
        "wall_s": c.wall_s,
        "params": dict(who.params),
        "details": {**_details(c, rows, measured), **_resume_details(c), **c.extra},
    }
    facts = why(c)
    if facts is not None:
        out["why"] = facts  # an addition: every contract key above is unchanged
    return out


def _resume_details(c: RunCounters) -> dict[str, Any]:
    """Session prefetches before resume (``kvflow.prefetch.resume``): only in runs that made one,
    so every earlier summary keeps its exact keys."""
    return {"resume_prefetch": dict(c.resume_prefetch)} if c.resume_prefetch else {}


def _details(c: RunCounters, rows: list[dict[str, Any]], measured: list[dict[str, Any]]) -> dict[str, Any]:
    prompt = sum(r["prompt_tokens"] for r in measured)
    return {
        "measured_requests": len(measured),
        "gpu_capacity_tokens": c.gpu_capacity_tokens,
        "cpu_capacity_tokens": c.cpu_capacity_tokens,
        "request_latency_s": _stats([r["latency_s"] for r in measured]),
        "ttft_s": _stats([r["ttft_s"] for r in measured]),
        "queue_s_mean": _stats([r["queue_s"] for r in measured])["mean"],
        "throughput_output_tokens_per_s": _ratio(sum(r["output_tokens"] for r in rows), c.makespan_s),
        "tokens": {
            "prompt": prompt,
            "hit_gpu": sum(r["hit_gpu_tokens"] for r in measured),
            "loaded_cpu": sum(r["loaded_cpu_tokens"] for r in measured),
            "recomputed": sum(r["recomputed_tokens"] for r in measured),
        },
        "stalled_s_total": sum(r["stalled_s"] for r in measured),
        "h2d_copies": c.h2d_copies,
        "d2h_copies": c.d2h_copies,
        "blocking_load_wait_s": c.blocking_load_wait_s,
        "blocking_load_exposed_s": c.blocking_load_exposed_s,
        "evicted_tokens": {"gpu": c.gpu_evicted_tokens, "cpu": c.cpu_evicted_tokens},
        "gpu_busy_fraction": _ratio(c.gpu_busy_s, c.makespan_s),
        "iterations": c.iterations,
        "decode_steps": c.decode_steps,
    }


SUMMARY_KEYS = (
    "backend",
    "policy",
    "experiment",
    "workload",
    "hardware",
    "model",
    "seed",
    "requests",
    "workflows",
    "workflow_latency_mean_s",
    "workflow_latency_p50_s",
    "workflow_latency_p99_s",
    "makespan_s",
    "throughput_req_s",
    "hit_rate_gpu",
    "hit_rate_cpu",
    "recompute_rate",
    "h2d_bytes",
    "d2h_bytes",
    "h2d_utilization",
    "d2h_utilization",
    "prefetch_issued",
    "prefetch_used",
    "prefetch_wasted",
    "prefetch_late",
    "wall_s",
    "params",
    "details",
)
DETAIL_KEYS = tuple(_details(RunCounters(0.0), [], []))
