"""Per-request rows and the run summary (plots and cross-run tables live in analysis/).

End-to-end workflow latency is per client: from the release of its first measured invocation to
the finish of its last one; warm-up invocations (``is_warmup``) are excluded, as in the paper's
single-workflow experiment (warm up, then time the runs).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from kvflow.workflow import request_rows, workflow_rows

def _stats(values: list[float]) -> dict[str, float]:
    if not values:
        return {"mean": 0.0, "p50": 0.0, "p99": 0.0}
    a = np.asarray(values, dtype=np.float64)
    return {"mean": float(a.mean()), "p50": float(np.percentile(a, 50)), "p99": float(np.percentile(a, 99))}


def _ratio(num: float, den: float) -> float:
    return float(num) / den if den else 0.0


def summarize(cfg: Any, trace: Any, driver: Any, loop: Any, pcie: Any, cache: Any,
              gpu_tokens: int, cpu_tokens: int, makespan_s: float,
              rows: list[dict[str, Any]] | None = None, wf_rows: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """Run summary with the flat keys of docs/architecture.md, plus ``details``; the caller adds
    ``wall_s`` (the only non-deterministic value). ``rows``/``wf_rows``: the run's request and
    workflow rows if the caller already made them."""
    rows = request_rows(trace, driver) if rows is None else rows
    measured = [r for r in rows if not r["warmup"]]
    wf = [w["latency_s"] for w in (workflow_rows(rows) if wf_rows is None else wf_rows)]
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
