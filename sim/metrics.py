"""Per-request rows and the run summary (plots and cross-run tables live in analysis/).

End-to-end workflow latency is per client: from the release of its first measured invocation to
the finish of its last one; warm-up invocations (``is_warmup``) are excluded, as in the paper's
single-workflow experiment (warm up, then time the runs).
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import numpy as np

from kvflow.workflow import is_warmup

ROW_FIELDS = (
    "request_id", "client_id", "agent_id", "warmup", "prompt_tokens", "fixed_tokens", "output_tokens",
    "ready_s", "arrival_s", "admit_s", "queue_s", "first_token_s", "finish_s", "ttft_s", "latency_s",
    "hit_gpu_tokens", "loaded_cpu_tokens", "recomputed_tokens", "loaded_bytes", "stalled_s",
)


def request_rows(trace: Any, driver: Any) -> list[dict[str, Any]]:
    """One row per invocation in trace order (CSV columns ``ROW_FIELDS``)."""
    rows = []
    for inv in trace.invocations:
        r = driver.requests[inv.id]
        rows.append({
            "request_id": inv.id, "client_id": inv.client_id, "agent_id": inv.agent_id,
            "warmup": is_warmup(inv), "prompt_tokens": r.prompt_tokens, "fixed_tokens": r.fixed_tokens,
            "output_tokens": r.output_tokens, "ready_s": driver.ready_s[inv.id], "arrival_s": r.arrival_s,
            "admit_s": r.admit_s, "queue_s": r.admit_s - r.arrival_s, "first_token_s": r.first_token_s,
            "finish_s": r.finish_s, "ttft_s": r.first_token_s - r.arrival_s, "latency_s": r.finish_s - r.arrival_s,
            "hit_gpu_tokens": r.hit_gpu_tokens, "loaded_cpu_tokens": r.loaded_cpu_tokens,
            "recomputed_tokens": r.recomputed_tokens, "loaded_bytes": r.loaded_bytes, "stalled_s": r.stalled_s,
        })
    return rows


def _stats(values: list[float]) -> dict[str, float]:
    if not values:
        return {"mean": 0.0, "p50": 0.0, "p99": 0.0}
    a = np.asarray(values, dtype=np.float64)
    return {"mean": float(a.mean()), "p50": float(np.percentile(a, 50)), "p99": float(np.percentile(a, 99))}


def workflow_spans_s(rows: list[dict[str, Any]]) -> dict[str, tuple[float, float]]:
    """Client -> (start, end) of its measured (non-warm-up) invocations."""
    spans: dict[str, list[float]] = defaultdict(lambda: [np.inf, -np.inf])
    for r in rows:
        if r["warmup"]:
            continue
        span = spans[r["client_id"]]
        span[0] = min(span[0], r["arrival_s"])
        span[1] = max(span[1], r["finish_s"])
    return {c: (lo, hi) for c, (lo, hi) in sorted(spans.items())}


def workflow_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``workflows.csv``: one row per client (docs/architecture.md, run directory format)."""
    return [{"client_id": c, "start_s": lo, "end_s": hi, "latency_s": hi - lo}
            for c, (lo, hi) in workflow_spans_s(rows).items()]


def _ratio(num: float, den: float) -> float:
    return float(num) / den if den else 0.0


def summarize(cfg: Any, trace: Any, driver: Any, loop: Any, pcie: Any, cache: Any,
              gpu_tokens: int, cpu_tokens: int, makespan_s: float) -> dict[str, Any]:
    """Run summary with the flat keys of docs/architecture.md, plus ``details``; the caller adds
    ``wall_s`` (the only non-deterministic value)."""
    rows = request_rows(trace, driver)
    measured = [r for r in rows if not r["warmup"]]
    wf = [w["latency_s"] for w in workflow_rows(rows)]
    wf_stats = _stats(wf)
    prompt = sum(r["prompt_tokens"] for r in measured)
    hit = sum(r["hit_gpu_tokens"] for r in measured)
    loaded = sum(r["loaded_cpu_tokens"] for r in measured)
    recomputed = sum(r["recomputed_tokens"] for r in measured)
    out_tokens = sum(r["output_tokens"] for r in rows)
    st = cache.stats
    util = pcie.utilisation(makespan_s)
    model = cfg["model"]
    return {
        "backend": "sim",
        "policy": cfg["policy"].get("name"),
        "experiment": cfg.get("experiment_name"),
        "workload": cfg["workload"].get("name"),
        "hardware": cfg["hardware"].get("name"),
        "model": model.get("name") if hasattr(model, "get") else str(model),
        "seed": int(cfg.get("seed", 0)),
        "requests": len(rows),
        "workflows": len(wf),
        "workflow_latency_mean_s": wf_stats["mean"],
        "workflow_latency_p50_s": wf_stats["p50"],
        "workflow_latency_p99_s": wf_stats["p99"],
        "makespan_s": makespan_s,
        "throughput_req_s": _ratio(len(rows), makespan_s),
        "hit_rate_gpu": _ratio(hit, prompt),
        "hit_rate_cpu": _ratio(loaded, prompt),
        "recompute_rate": _ratio(recomputed, prompt),
        "h2d_bytes": pcie.bytes_moved["h2d"],
        "d2h_bytes": pcie.bytes_moved["d2h"],
        "h2d_utilization": util["h2d"],
        "d2h_utilization": util["d2h"],
        "prefetch_issued": st.prefetch_issued,
        "prefetch_used": st.prefetch_used,
        "prefetch_wasted": st.prefetch_wasted,
        "prefetch_late": st.prefetch_late,
        "params": dict(cfg.get("params") or {}),
        "details": {
            "measured_requests": len(measured),
            "gpu_capacity_tokens": gpu_tokens,
            "cpu_capacity_tokens": cpu_tokens,
            "request_latency_s": _stats([r["latency_s"] for r in measured]),
            "ttft_s": _stats([r["ttft_s"] for r in measured]),
            "queue_s_mean": _stats([r["queue_s"] for r in measured])["mean"],
            "throughput_output_tokens_per_s": _ratio(out_tokens, makespan_s),
            "tokens": {"prompt": prompt, "hit_gpu": hit, "loaded_cpu": loaded, "recomputed": recomputed},
            "stalled_s_total": sum(r["stalled_s"] for r in measured),
            "h2d_copies": pcie.copies["h2d"], "d2h_copies": pcie.copies["d2h"],
            "blocking_load_wait_s": loop.blocking_load_wait_s,
            "blocking_load_exposed_s": loop.blocking_load_exposed_s,
            "evicted_tokens": {"gpu": st.gpu_evicted_tokens, "cpu": st.cpu_evicted_tokens},
            "gpu_busy_fraction": _ratio(loop.busy_s, makespan_s),
            "iterations": loop.iterations,
            "decode_steps": loop.decode_steps,
        },
    }
