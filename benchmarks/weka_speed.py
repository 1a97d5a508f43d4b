"""Benchmark: the whole Weka training set (``workload.sessions=train``: every session file but each
5th), one policy, closed loop, as ``experiment=coding_agents`` runs it (h200_sglang, engine sglang_0.5, Llama-3.1-8B, the
profile's pool, Poisson session starts). Target on the 2-core development VM: <= 60 s wall and
<= 4 GB peak RSS for the simulation. Prints import time, simulation wall time, requests per wall
second and the process's peak RSS (import included).
Usage: python benchmarks/weka_speed.py [--policy sglang] [--sessions train] [--data DIR]
"""

from __future__ import annotations

import argparse
import os
import resource
import time

from harness.setup import build_trace
from sim.runner import load_conf, simulate

DATA = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "weka")


def config(policy: str, sessions: str, data: str) -> dict:
    """The coding_agents preset's settings as plain dicts (conf/experiment/coding_agents.yaml)."""
    workload = {
        **load_conf("workload", "trace"),
        "name": "coding_agents",
        "trace": None,
        "import_format": "weka",
        "import_from": data,
        "sessions": sessions,
        "replay": "closed",
        "start": "poisson",
        "start_rate_per_s": 0.002,
    }
    return {
        "seed": 0,
        "hardware": load_conf("hardware", "h200_sglang"),
        "model": load_conf("model", "llama-3.1-8b"),
        "workload": workload,
        "policy": load_conf("policy", policy),
        "cache": {},
        "engine": load_conf("engine", "sglang_0.5"),
        "sim": {"timeline": False},
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--policy", default="sglang")
    ap.add_argument("--sessions", default="train", choices=["train", "test", "all"])
    ap.add_argument("--data", default=DATA)
    args = ap.parse_args()
    cfg = config(args.policy, args.sessions, args.data)
    t0 = time.perf_counter()
    trace = build_trace(cfg["workload"], 0)
    import_s = time.perf_counter() - t0
    t1 = time.perf_counter()
    result = simulate(cfg, trace=trace)
    sim_s = time.perf_counter() - t1
    s = result.summary
    rss_gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 2**30  # Linux: KiB
    print(f"sessions {s['workflows']}, requests {s['requests']}, policy {args.policy}, {s['why']['replay']} loop")
    print(f"import {import_s:.1f} s | simulate {sim_s:.1f} s wall, {s['requests'] / sim_s:,.0f} requests per wall s")
    print(f"simulated {s['makespan_s']:,.0f} s | GPU hit {s['hit_rate_gpu']:.1%} | peak RSS {rss_gib:.2f} GiB")
    print(
        f"targets: simulate <= 60 s: {'met' if sim_s <= 60 else 'missed'}; RSS <= 4 GB: "
        f"{'met' if rss_gib * 2**30 <= 4e9 else 'missed'}"
    )


if __name__ == "__main__":
    main()
