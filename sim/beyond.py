"""``python -m sim.beyond``: the "beyond KVFlow" comparison table for docs/results.md.

Runs every policy on four workloads and prints end-to-end workflow latency and hit rates as a
markdown table, plus the targets (best new policy vs ``kvflow``) and the gaps it closes against
bounds that are bounds (issue #14 item 3): reuse (GPU hits + CPU loads) against exact Belady over
the kvflow run's own admission order (``sim.bounds``), latency against the ``engine=ideal`` run
(``hicache`` with every copy free). The ``clairvoyant`` policy is a column, not a bound. Workloads (settings fixed here so the table is reproducible):
- ``chatdev``: the 55 imported ChatDev logs, all instances at once, H100 + Llama-3.1-8B, GPU KV
  pool of 1,024 tokens per instance (memory pressure), logged think/tool delays;
- ``chatdev_no_delay``: the same without think/tool delays (serving time only);
- ``paper_concurrent``: 64 sequential workflows, fixed 1024 / dynamic 256 / output 256, H100 +
  Llama-3.1-8B, 262,144-token pool (as the paper_concurrent preset);
- ``paper_branches``: branches=2, fixed 8192, A10G (paper PCIe) + Llama-3.1-8B, batch size 1;
- ``mooncake``: the Mooncake trace (no agents, no graph), H100 + Llama-3.1-8B, 262,144-token pool.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path
from typing import Any

from harness.errors import SetupError
from harness.setup import build_trace
from sim.bounds import run_reuse_bound
from sim.runner import load_conf as conf
from sim.runner import simulate

NEW_POLICIES = ("kvflow_inferred", "kvflow_cost", "kvflow_gd")
SESSION_POLICIES = (
    "pause_aware",
    "pause_aware_prefetch",
    "ttl_pin",
    "kvflow_sessions",
    "subagent_aware",
)  # issue 15: <= 2% slower than kvflow here
POLICIES = ("sglang", "hicache", "kvflow", *NEW_POLICIES, "clairvoyant", *SESSION_POLICIES)
SLOWER_LIMIT = 0.02
DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def workloads(data: Path) -> dict[str, tuple[dict[str, Any], Any]]:
    """name -> (config without policy, trace)."""
    from traces.importers import import_trace

    silent = {"warn": lambda *_: None}
    chatdev = import_trace("chatdev", sorted(str(p) for p in (data / "chatdev").glob("*.log.gz")), **silent)
    mooncake = import_trace("mooncake", [str(data / "mooncake" / "synthetic_trace.jsonl")], **silent)
    concurrent = conf("workload", "concurrent")
    concurrent["params"].update(workflows=64, fixed_tokens=1024)
    branches = conf("workload", "branches")
    branches["params"].update(fixed_tokens=8192)
    h100, a10g, llama = conf("hardware", "h100"), conf("hardware", "a10g_paper"), conf("model", "llama-3.1-8b")
    n_chatdev = len({inv.client_id for inv in chatdev.invocations})
    no_delay = copy.deepcopy(chatdev)  # serving time only: no think/tool time, all instances at t=0
    for inv in no_delay.invocations:
        inv.delay_s, inv.arrival_s = 0.0, 0.0
    chatdev_cfg = {"hardware": h100, "model": llama, "cache": {"gpu_capacity_tokens": 1024 * n_chatdev}}
    return {
        "chatdev": (chatdev_cfg, chatdev),
        "chatdev_no_delay": (chatdev_cfg, no_delay),
        "paper_concurrent": (
            {
                "hardware": h100,
                "model": llama,
                "workload": concurrent,
                "cache": {"gpu_capacity_tokens": 262144, "cpu_capacity_tokens": 2097152},
            },
            build_trace(concurrent, 0),
        ),
        "paper_branches": (
            {
                "hardware": a10g,
                "model": llama,
                "workload": branches,
                "cache": {"cpu_capacity_tokens": 1048576},
                "engine": {"max_running_requests": 1},
            },
            build_trace(branches, 0),
        ),
        "mooncake": ({"hardware": h100, "model": llama, "cache": {"gpu_capacity_tokens": 262144}}, mooncake),
    }


def _config(name: str, base: dict[str, Any], policy: str, engine: str | None = None) -> dict[str, Any]:
    """One run's config: the workload's settings, ``policy``, and ``engine`` (a conf/engine option)
    under the workload's own engine keys (``None``: the default engine)."""
    engine_keys = base.get("engine") or {}
    return {
        "seed": 0,
        "sim": {},
        "workload": {"name": name},
        **base,
        "engine": {**conf("engine", engine), **engine_keys} if engine else engine_keys,
        "policy": conf("policy", policy),
    }


def run_all(data: Path) -> dict[str, dict[str, dict[str, float]]]:
    results: dict[str, dict[str, dict[str, float]]] = {}
    for name, (base, trace) in workloads(data).items():
        results[name] = {}
        for policy in POLICIES:
            run = simulate(_config(name, base, policy), trace=trace)
            summary = run.summary
            results[name][policy] = {k: summary[k] for k in ("workflow_latency_mean_s", "hit_rate_gpu", "hit_rate_cpu")}
            if policy == "kvflow":  # the hit-rate bound, over the reference run's own admission order
                results[name]["belady"] = {"reuse": run_reuse_bound(trace, run.rows, summary).rate}
            print(
                f"{name:<17} {policy:<16} latency {summary['workflow_latency_mean_s']:10.3f} s  "
                f"gpu hit {100 * summary['hit_rate_gpu']:5.1f}%",
                file=sys.stderr,
            )
        ideal = simulate(_config(name, base, "hicache", engine="ideal"), trace=trace).summary
        results[name]["ideal"] = {"workflow_latency_mean_s": ideal["workflow_latency_mean_s"]}
    return results


REPLAY_POLICIES = ("lru", "kvflow", "kvflow_cost", "kvflow_gd", "belady")
REPLAY_BUDGETS_GIB = {"chatdev": (0.25, 1.0), "mooncake": (16.0, 64.0)}


def replay_hit_rates(data: Path) -> dict[str, dict[float, dict[str, float]]]:
    """Cache-only replay (sim.replay, Llama-3.1-8B KV, warm-up 0 for ChatDev, 0.5 for Mooncake):
    hit rates with exact Belady (``belady``), which knows every node's next use: the bound."""
    from kvflow.model_spec import load_model_spec
    from sim.replay import read_mooncake, replay, requests_from_trace
    from traces.importers import import_trace

    kv = load_model_spec("llama-3.1-8b").kv_bytes_per_token
    paths = sorted(str(p) for p in (data / "chatdev").glob("*.log.gz"))
    chatdev, _ = requests_from_trace(import_trace("chatdev", paths, warn=lambda *_: None))
    mooncake = read_mooncake(data / "mooncake" / "synthetic_trace.jsonl", 512)
    runs = {"chatdev": (chatdev, kv, 0.0), "mooncake": (mooncake, kv * 512, 0.5)}
    out: dict[str, dict[float, dict[str, float]]] = {}
    for name, (requests, unit_bytes, warmup) in runs.items():
        out[name] = {}
        for gib in REPLAY_BUDGETS_GIB[name]:
            capacity = int(gib * 2**30 // unit_bytes)
            out[name][gib] = {p: replay(requests, p, capacity, warmup)["hit_rate"] for p in REPLAY_POLICIES}
    return out


def replay_markdown(rates: dict[str, dict[float, dict[str, float]]]) -> str:
    lines = [
        "| trace | budget | " + " | ".join(REPLAY_POLICIES) + " | best new closes kvflow->Belady gap |",
        "|" + "---|" * (len(REPLAY_POLICIES) + 3),
    ]
    for name, by_budget in rates.items():
        for gib, r in by_budget.items():
            best = max(("kvflow_cost", "kvflow_gd"), key=lambda p: r[p])
            gap = r["belady"] - r["kvflow"]
            closed = f"{best}: {100 * (r[best] - r['kvflow']) / gap:.0f}%" if gap > 1e-9 else "n/a"
            lines.append(
                f"| {name} | {gib:g} GiB | "
                + " | ".join(f"{100 * r[p]:.1f}%" for p in REPLAY_POLICIES)
                + f" | {closed} |"
            )
    return "\n".join(lines)


def markdown(results: dict[str, dict[str, dict[str, float]]]) -> str:
    head = (
        "| workload | "
        + " | ".join(POLICIES)
        + " | ideal floor | Belady reuse | best new vs kvflow | reuse gap closed | latency gap closed "
        + "| slowest session-aware vs kvflow |"
    )
    lines = [head, "|" + "---|" * (len(POLICIES) + 7)]
    for name, by_policy in results.items():
        kv = by_policy["kvflow"]
        best = min(NEW_POLICIES, key=lambda p: by_policy[p]["workflow_latency_mean_s"])
        speedup = kv["workflow_latency_mean_s"] / by_policy[best]["workflow_latency_mean_s"]
        reuse = {p: by_policy[p]["hit_rate_gpu"] + by_policy[p]["hit_rate_cpu"] for p in POLICIES}
        bound, floor = by_policy["belady"]["reuse"], by_policy["ideal"]["workflow_latency_mean_s"]
        reuse_closed = _closed(reuse[best] - reuse["kvflow"], bound - reuse["kvflow"])
        lat_closed = _closed(
            kv["workflow_latency_mean_s"] - by_policy[best]["workflow_latency_mean_s"],
            kv["workflow_latency_mean_s"] - floor,
        )
        cells = [
            f"{r['workflow_latency_mean_s']:.2f} s / {100 * r['hit_rate_gpu']:.1f}%"
            for r in (by_policy[p] for p in POLICIES)
        ]
        lines.append(
            f"| {name} | "
            + " | ".join(cells)
            + f" | {floor:.2f} s | {100 * bound:.1f}% | {best}: {speedup:.3f}x | {reuse_closed} | {lat_closed} "
            + f"| {_slowest(by_policy)} |"
        )
    return "\n".join(lines)


def _slowest(by_policy: dict[str, dict[str, float]]) -> str:
    """The session-aware policy furthest behind kvflow on this workload, and whether it stays within
    issue 15's limit (never more than 2% slower than KVFlow on the earlier workloads)."""
    kv = by_policy["kvflow"]["workflow_latency_mean_s"]
    worst = max(SESSION_POLICIES, key=lambda p: by_policy[p]["workflow_latency_mean_s"])
    slower = by_policy[worst]["workflow_latency_mean_s"] / kv - 1
    return f"{worst}: {100 * slower:+.1f}% ({'within' if slower <= SLOWER_LIMIT else 'over'} 2%)"


def _closed(gained: float, gap: float) -> str:
    """Share of a gap closed, or n/a when there is no gap to close (kvflow already at the bound)."""
    if gap <= 1e-9:
        return "n/a (no gap)"
    share = round(100 * gained / gap)
    return f"{share + 0:d}%"  # + 0: no "-0%" for a tie


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DATA, help="folder with chatdev/ and mooncake/ (../shared/data)")
    parser.add_argument("--json", type=Path, help="also write the raw numbers here")
    args = parser.parse_args(argv)
    try:
        results = run_all(args.data)
    except (SetupError, ValueError, OSError) as exc:
        print(f"sim.beyond: error: {exc}", file=sys.stderr)
        return 2
    rates = replay_hit_rates(args.data)
    if args.json:
        args.json.write_text(json.dumps({"sim": results, "replay": rates}, indent=2, sort_keys=True))
    print(
        "Timing simulation. Cells: mean end-to-end workflow latency / GPU hit rate (share of prompt "
        "tokens found on the GPU). Ideal floor: hicache on engine=ideal (every copy free). Belady reuse: "
        "exact Belady over the kvflow run's admission order with both tiers' capacity (GPU hits + CPU "
        "loads can be no higher). Gaps closed by the best new policy: reuse toward Belady, latency toward "
        "the floor.\n"
    )
    print(markdown(results))
    print("\nCache-only replay (kvflow-replay semantics; belady = exact Belady, the bound). Cells: hit rate.\n")
    print(replay_markdown(rates))
    return 0


if __name__ == "__main__":
    sys.exit(main())
