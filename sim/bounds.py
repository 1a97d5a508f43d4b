"""Bounds that are bounds (issue #14 item 3): what no policy can beat on a given run.

**Reuse** (GPU hits + CPU loads: every prompt token not recomputed): exact Belady over the run's
own sequence of prompts, in admission order, with the capacity of both tiers. A token served from
the cache had to be resident in a tier, and at most GPU + CPU pool tokens are resident at once;
outputs never recur (each request's output ids are fresh), so a prompt-only replay loses nothing.
Belady (farthest next use, with bypass: ``sim.replay``'s ``belady``) maximises hits for that sequence,
so it bounds every policy's reuse on that run; concurrency, locks and the engine only lower the
policy's. The bound is per run because a closed loop admits requests in a policy-dependent order.
Same measured requests as the summary (warm-up rows excluded).

The **latency floor** is the ``engine=ideal`` run (every copy free); it is a run, not computed here.
"""

from __future__ import annotations

import math
from array import array
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sim.replay import BELADY, ReplayRequest, replay
from traces.schema import Trace


@dataclass(frozen=True)
class ReuseBound:
    hit_tokens: int
    total_tokens: int
    capacity_tokens: int

    @property
    def rate(self) -> float:
        return self.hit_tokens / self.total_tokens if self.total_tokens else 0.0


def admission_order(rows: Sequence[Mapping[str, Any]]) -> list[int]:
    """Indices of ``rows`` (one per invocation, trace order) sorted by admission time; a request
    never admitted (admit_s NaN) goes last, in trace order."""

    def when(i: int) -> tuple[float, int]:
        admit = float(rows[i]["admit_s"])
        return (math.inf if math.isnan(admit) else admit, i)

    return sorted(range(len(rows)), key=when)


def reuse_bound(
    trace: Trace, rows: Sequence[Mapping[str, Any]], capacity_tokens: int, page_tokens: int = 1
) -> ReuseBound:
    """Exact Belady reuse over ``rows`` (a run's ``requests.csv`` rows, trace order) with
    ``capacity_tokens`` (GPU + CPU pool) of cache, in units of ``page_tokens`` (the run's page size:
    a paged cache holds and matches whole pages only, so this is the bound for that cache, and one
    key per page keeps 100K-token prompts cheap); a prompt's partial last page is one unit that
    never hits."""
    invocations = trace.by_id()
    order = admission_order(rows)
    prompts = [invocations[str(rows[i]["request_id"])] for i in order]
    if page_tokens <= 1:
        requests = [ReplayRequest(trace.prompt_tokens(inv), None) for inv in prompts]
        capacity_units = capacity_tokens
    else:
        requests = [_paged(trace.prompt_array(inv), page_tokens, i) for i, inv in enumerate(prompts)]
        capacity_units = capacity_tokens // page_tokens
    measured = [not _is_true(rows[i]["warmup"]) for i in order]
    result = replay(requests, BELADY, max(1, capacity_units), measured=measured)
    return ReuseBound(int(result["hit_tokens"]), int(result["total_tokens"]), capacity_tokens)


def _paged(tokens: array, page_tokens: int, index: int) -> ReplayRequest:
    """One key per whole page (its token bytes: equal pages at equal depth share a node) and a
    request-unique key for the partial tail."""
    prompt, step = tokens.tobytes(), tokens.itemsize * page_tokens
    whole = len(tokens) // page_tokens
    keys: list[Any] = [prompt[k * step : (k + 1) * step] for k in range(whole)]
    sizes = [page_tokens] * whole
    tail = len(tokens) - whole * page_tokens
    if tail:
        keys.append(("tail", index))
        sizes.append(tail)
    return ReplayRequest(keys, sizes)


def run_reuse_bound(trace: Trace, rows: Sequence[Mapping[str, Any]], summary: Mapping[str, Any]) -> ReuseBound:
    """``reuse_bound`` with the run's own pools (``summary.json`` details)."""
    details = summary["details"]
    return reuse_bound(trace, rows, int(details["gpu_capacity_tokens"]) + int(details.get("cpu_capacity_tokens") or 0))


def _is_true(value: Any) -> bool:
    return value is True or str(value).strip().lower() in ("true", "1")
