"""The docs/results.md "Coding-agent sessions" table from a ``kvflow-sim -m experiment=coding_agents``
sweep: per policy, session latency (mean / p50 / p99), GPU hit, CPU load, recompute, PCIe bytes.
Usage: python benchmarks/coding_agents_table.py multirun/coding_agents
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

ORDER = (
    "sglang",
    "hicache",
    "kvflow",
    "kvflow_evict_only",
    "kvflow_inferred",
    "kvflow_cost",
    "kvflow_gd",
    "clairvoyant",
)


def main(root: str) -> None:
    runs = {}
    for path in sorted(Path(root).rglob("summary.json")):
        s = json.loads(path.read_text())
        runs[s["policy"]] = s
    base = runs.get("sglang", {}).get("workflow_latency_mean_s")
    print(
        "| policy | mean s | p50 s | p99 s | vs sglang | GPU hit | CPU load | recompute | PCIe GB (H2D+D2H) | hints |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name in sorted(runs, key=lambda p: ORDER.index(p) if p in ORDER else len(ORDER)):
        s = runs[name]
        speed = f"{base / s['workflow_latency_mean_s']:.2f}x" if base else "-"
        pcie = (s["h2d_bytes"] + s["d2h_bytes"]) / 1e9
        print(
            f"| {name} | {s['workflow_latency_mean_s']:,.0f} | {s['workflow_latency_p50_s']:,.0f} | "
            f"{s['workflow_latency_p99_s']:,.0f} | {speed} | {s['hit_rate_gpu']:.1%} | {s['hit_rate_cpu']:.1%} | "
            f"{s['recompute_rate']:.1%} | {pcie:,.0f} | {s.get('why', {}).get('hints', '?')} |"
        )
    any_run = next(iter(runs.values()), None)
    if any_run and "why" in any_run:
        w = any_run["why"]
        print(
            f"\nwhy ({any_run['policy']}): GPU demand {w['gpu_demand_tokens']:,} tokens vs pool {w['gpu_pool_tokens']:,}; "
            f"{w['replay']} loop, starts {w['start']}; time shares {json.dumps({k: round(v, 3) for k, v in w['time_share'].items()})}"
        )


if __name__ == "__main__":
    main(sys.argv[1])
