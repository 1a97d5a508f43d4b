"""The one-screen table kvflow-sim prints (the run directory itself is ``harness.run_dir``'s)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

GB = 1e9


def speedups(summaries: dict[str, dict[str, Any]], target: str = "kvflow") -> dict[str, float]:
    """Mean end-to-end workflow latency of each other policy divided by ``target``'s."""
    if target not in summaries:
        return {}
    base = summaries[target]["workflow_latency_mean_s"]
    return {name: s["workflow_latency_mean_s"] / base for name, s in summaries.items() if name != target and base > 0}


# (header, format of the value): every column is right-aligned to the wider of its header and its
# values and separated by two spaces, so large values (10,000 s latencies) never run together
_COLUMNS = (
    ("wf mean s", "{:,.3f}"),
    ("p50 s", "{:,.3f}"),
    ("p99 s", "{:,.3f}"),
    ("makespan", "{:,.2f}"),
    ("req/s", "{:,.2f}"),
    ("gpu hit", "{:.1%}"),
    ("cpu ld", "{:.1%}"),
    ("recomp", "{:.1%}"),
    ("H2D GB", "{:,.2f}"),
    ("D2H GB", "{:,.2f}"),
    ("H2D %", "{:.1%}"),
    ("pf i/u/w/l", "{}"),
    ("stall s", "{:,.3f}"),
)


def _cells(s: dict[str, Any]) -> list[str]:
    values = (
        s["workflow_latency_mean_s"],
        s["workflow_latency_p50_s"],
        s["workflow_latency_p99_s"],
        s["makespan_s"],
        s["throughput_req_s"],
        s["hit_rate_gpu"],
        s["hit_rate_cpu"],
        s["recompute_rate"],
        s["h2d_bytes"] / GB,
        s["d2h_bytes"] / GB,
        s["h2d_utilization"],
        f"{s['prefetch_issued']}/{s['prefetch_used']}/{s['prefetch_wasted']}/{s['prefetch_late']}",
        s["details"]["stalled_s_total"],
    )
    return [fmt.format(v) for (_, fmt), v in zip(_COLUMNS, values)]


def table(summaries: Sequence[dict[str, Any]]) -> str:
    """Comparison table, one line per policy; columns sized to their contents."""
    rows = [(str(s["policy"]), _cells(s)) for s in summaries]
    name_w = max([len("policy"), *(len(name) for name, _ in rows)])
    widths = [max([len(h), *(len(cells[i]) for _, cells in rows)]) for i, (h, _) in enumerate(_COLUMNS)]
    head = "policy".ljust(name_w) + "".join(f"  {h:>{w}}" for (h, _), w in zip(_COLUMNS, widths))
    lines = [head, "-" * len(head)]
    for name, cells in rows:
        lines.append(name.ljust(name_w) + "".join(f"  {c:>{w}}" for c, w in zip(cells, widths)))
    return "\n".join(lines)


def header(s: dict[str, Any]) -> str:
    """The run's context line, then the ``why`` facts (when the summary has them)."""
    d = s["details"]
    line = (
        f"workload {s['workload']} ({s['workflows']} workflows, {s['requests']} requests, "
        f"{d['measured_requests']} timed) | {s['model']} on {s['hardware']} | "
        f"KV pool {d['gpu_capacity_tokens']:,} GPU / {d['cpu_capacity_tokens']:,} CPU tokens"
    )
    return line if "why" not in s else line + "\n" + why_lines(s["why"])


def why_lines(w: dict[str, Any]) -> str:
    """What explains the comparison: eviction, hints, loop, where the simulated time went."""
    share = w["time_share"]
    lines = [
        f"why: {'evicted' if w['evicted'] else 'nothing evicted'} (GPU demand {w['gpu_demand_tokens']:,} vs pool "
        f"{w['gpu_pool_tokens']:,} tokens) | hints {w['hints']} | {w['replay']} loop, starts {w['start']} | "
        f"time: prefill {share.get('prefill', 0.0):.0%}, decode {share.get('decode', 0.0):.0%}, "
        f"copy stalls {share.get('copy_stall', 0.0):.0%}, idle {share.get('idle', 0.0):.0%}"
    ]
    lines += [f"why: {note}" for note in w.get("notes", [])]
    return "\n".join(lines)
