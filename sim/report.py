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


def table(summaries: Sequence[dict[str, Any]]) -> str:
    """Fixed-width comparison table, one line per policy."""
    head = (
        f"{'policy':<18}{'wf mean s':>10}{'p50 s':>9}{'p99 s':>9}{'makespan':>10}{'req/s':>8}"
        f"{'gpu hit':>8}{'cpu ld':>8}{'recomp':>8}{'H2D GB':>8}{'D2H GB':>8}{'H2D %':>7}"
        f"{'pf i/u/w/l':>14}{'stall s':>9}"
    )
    lines = [head, "-" * len(head)]
    for s in summaries:
        pf_text = f"{s['prefetch_issued']}/{s['prefetch_used']}/{s['prefetch_wasted']}/{s['prefetch_late']}"
        lines.append(
            f"{s['policy']:<18}{s['workflow_latency_mean_s']:>10.3f}{s['workflow_latency_p50_s']:>9.3f}"
            f"{s['workflow_latency_p99_s']:>9.3f}{s['makespan_s']:>10.2f}{s['throughput_req_s']:>8.2f}"
            f"{s['hit_rate_gpu']:>8.1%}{s['hit_rate_cpu']:>8.1%}{s['recompute_rate']:>8.1%}"
            f"{s['h2d_bytes'] / GB:>8.2f}{s['d2h_bytes'] / GB:>8.2f}{s['h2d_utilization']:>7.1%}"
            f"{pf_text:>14}{s['details']['stalled_s_total']:>9.3f}"
        )
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
