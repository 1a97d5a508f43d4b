"""Per-request and per-workflow rows: ``requests.csv`` / ``workflows.csv`` of every backend.

End-to-end workflow latency is per client: from the arrival of its first measured invocation to
the finish of its last one; warm-up invocations (``is_warmup``) are excluded, as in the paper's
single-workflow experiment (warm up, then time the runs).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator, Mapping
from typing import Any

from kvflow.step_graph import INF
from kvflow.workflow import is_warmup
from traces.schema import Trace

__all__ = [
    "ROW_FIELDS",
    "WORKFLOW_FIELDS",
    "TIMELINE_FIELDS",
    "RequestRow",
    "is_warmup",
    "request_row",
    "request_rows",
    "workflow_rows",
]

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


# stored per row; the three durations are derived on access (one float object fewer each per row)
_STORED_FIELDS = tuple(f for f in ROW_FIELDS if f not in ("queue_s", "ttft_s", "latency_s"))
_FIELD_SET = frozenset(ROW_FIELDS)


class RequestRow(Mapping[str, Any]):
    """One row of ``requests.csv``: a read-only mapping of ``ROW_FIELDS`` in slots, not a dict. A
    20-key dict per request was ~540 B (with its three derived floats) of the simulator's peak
    memory at the end of a run; slots are ~170 B (benchmarks/scale.py). Reads as a dict does:
    ``row["latency_s"]``, ``dict(row)``, ``==`` with a dict, csv.DictWriter."""

    __slots__ = _STORED_FIELDS

    def __init__(
        self,
        request_id: str,
        client_id: str,
        agent_id: str,
        warmup: bool,
        prompt_tokens: int,
        fixed_tokens: int,
        output_tokens: int,
        ready_s: float,
        arrival_s: float,
        admit_s: float,
        first_token_s: float,
        finish_s: float,
        hit_gpu_tokens: int,
        loaded_cpu_tokens: int,
        recomputed_tokens: int,
        loaded_bytes: int,
        stalled_s: float,
    ) -> None:  # (one assignment per slot: the simulator makes a row per finished request)
        self.request_id = request_id
        self.client_id = client_id
        self.agent_id = agent_id
        self.warmup = warmup
        self.prompt_tokens = prompt_tokens
        self.fixed_tokens = fixed_tokens
        self.output_tokens = output_tokens
        self.ready_s = ready_s
        self.arrival_s = arrival_s
        self.admit_s = admit_s
        self.first_token_s = first_token_s
        self.finish_s = finish_s
        self.hit_gpu_tokens = hit_gpu_tokens
        self.loaded_cpu_tokens = loaded_cpu_tokens
        self.recomputed_tokens = recomputed_tokens
        self.loaded_bytes = loaded_bytes
        self.stalled_s = stalled_s

    @property
    def queue_s(self) -> float:
        return self.admit_s - self.arrival_s

    @property
    def ttft_s(self) -> float:
        return self.first_token_s - self.arrival_s

    @property
    def latency_s(self) -> float:
        return self.finish_s - self.arrival_s

    def __getitem__(self, key: str) -> Any:
        if key not in _FIELD_SET:
            raise KeyError(key)
        return getattr(self, key)

    def __iter__(self) -> Iterator[str]:
        return iter(ROW_FIELDS)

    def __len__(self) -> int:
        return len(ROW_FIELDS)

    def __repr__(self) -> str:
        return f"RequestRow({dict(self)!r})"


def request_row(inv: Any, request: Any, ready_s: float) -> RequestRow:
    """The row of finished invocation ``inv`` from its request's counters and its ready time (the
    simulator's driver makes it at finish and drops the request: its slots and prompt are freed)."""
    r = request
    return RequestRow(
        inv.id,
        inv.client_id,
        inv.agent_id,
        is_warmup(inv),
        r.prompt_tokens,
        r.fixed_tokens,
        r.output_tokens,
        ready_s,
        r.arrival_s,
        r.admit_s,
        r.first_token_s,
        r.finish_s,
        r.hit_gpu_tokens,
        r.loaded_cpu_tokens,
        r.recomputed_tokens,
        r.loaded_bytes,
        r.stalled_s,
    )


def request_rows(trace: Trace, driver: Any) -> list[RequestRow]:
    """One row per invocation in trace order (``ROW_FIELDS``), from a driver's ``requests`` and
    ``ready_s`` after a run (the real backend's driver keeps both); the same for every backend, so
    ``kvflow-report`` compares them."""
    requests, ready_s = driver.requests, driver.ready_s
    return [request_row(inv, requests[inv.id], ready_s[inv.id]) for inv in trace.invocations]


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
