"""Per-request and per-workflow rows: ``requests.csv`` / ``workflows.csv`` of every backend.

End-to-end workflow latency is per client: from the arrival of its first measured invocation to
the finish of its last one; warm-up invocations (``is_warmup``) are excluded, as in the paper's
single-workflow experiment (warm up, then time the runs).
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from kvflow.step_graph import INF
from kvflow.workflow import is_warmup
from traces.schema import Trace

__all__ = ["ROW_FIELDS", "WORKFLOW_FIELDS", "TIMELINE_FIELDS", "is_warmup", "request_rows", "workflow_rows"]

ROW_FIELDS = (
    "request_id",
    "client_id",
    "agent_id",
    "warmup",
    "prompt_tokens",
    "fixed_tokens",
    "output_tokens",
    "ready_s",
    "arrival_s",
    "admit_s",
    "queue_s",
    "first_token_s",
    "finish_s",
    "ttft_s",
    "latency_s",
    "hit_gpu_tokens",
    "loaded_cpu_tokens",
    "recomputed_tokens",
    "loaded_bytes",
    "stalled_s",
)
WORKFLOW_FIELDS = ("client_id", "start_s", "end_s", "latency_s")
TIMELINE_FIELDS = ("resource", "start_s", "end_s", "label")


def request_rows(trace: Trace, driver: Any) -> list[dict[str, Any]]:
    """One row per invocation in trace order (``ROW_FIELDS``), from a driver's ``requests`` and
    ``ready_s`` after a run (any backend's driver: they share only these two mappings); the same for every backend, so ``kvflow-report`` compares them."""
    rows = []
    for inv in trace.invocations:
        r = driver.requests[inv.id]
        rows.append(
            {
                "request_id": inv.id,
                "client_id": inv.client_id,
                "agent_id": inv.agent_id,
                "warmup": is_warmup(inv),
                "prompt_tokens": r.prompt_tokens,
                "fixed_tokens": r.fixed_tokens,
                "output_tokens": r.output_tokens,
                "ready_s": driver.ready_s[inv.id],
                "arrival_s": r.arrival_s,
                "admit_s": r.admit_s,
                "queue_s": r.admit_s - r.arrival_s,
                "first_token_s": r.first_token_s,
                "finish_s": r.finish_s,
                "ttft_s": r.first_token_s - r.arrival_s,
                "latency_s": r.finish_s - r.arrival_s,
                "hit_gpu_tokens": r.hit_gpu_tokens,
                "loaded_cpu_tokens": r.loaded_cpu_tokens,
                "recomputed_tokens": r.recomputed_tokens,
                "loaded_bytes": r.loaded_bytes,
                "stalled_s": r.stalled_s,
            }
        )
    return rows


def workflow_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per client (``WORKFLOW_FIELDS``): first arrival to last finish of its measured
    (non-warm-up) invocations, the end-to-end latency the paper reports."""
    spans: dict[str, list[float]] = defaultdict(lambda: [INF, -INF])
    for r in rows:
        if r["warmup"]:
            continue
        span = spans[r["client_id"]]
        span[0] = min(span[0], r["arrival_s"])
        span[1] = max(span[1], r["finish_s"])
    return [{"client_id": c, "start_s": lo, "end_s": hi, "latency_s": hi - lo} for c, (lo, hi) in sorted(spans.items())]
