"""Fleet table: Weka coding-agent sessions on 1/2/4 replicas x each router x {hicache, kvflow}.

Prints, per (replicas, router, policy), mean session latency, mean TTFT, GPU and CPU hit and the most loaded
replica's share of requests. One replica is the single engine whatever the router (tests/test_fleet.py),
so it runs once per policy. The workload is ``experiment=coding_agents`` on a small slice of the
training sessions (the first ``--files`` session files of the folder, ``workload.sessions=train``
of those), started faster than the preset (``--rate``) so that the slice still loads the fleet.
Usage: python benchmarks/fleet_table.py [--files 40] [--rate 0.1] [--replicas 1,2,4] [--policies hicache,kvflow]
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path
from typing import Any

from hydra import compose, initialize_config_module
from omegaconf import OmegaConf

from harness.setup import build_trace
from sim.routers import ROUTERS
from sim.runner import simulate

REPO = Path(__file__).resolve().parents[1]


def base_config(policy: str, files: list[str], rate: float) -> dict[str, Any]:
    overrides = ["experiment=coding_agents", f"policy={policy}", "workload.sessions=train"]
    overrides += [f"workload.start_rate_per_s={rate}", "sim.timeline=false"]
    with initialize_config_module(config_module="conf", version_base=None):
        cfg = compose(config_name="config", overrides=overrides)
    plain: dict[str, Any] = OmegaConf.to_container(cfg, resolve=False)  # type: ignore[assignment]
    plain.pop("hydra", None)
    plain["workload"]["import_from"] = ",".join(files)  # a comma list is a sweep to Hydra: set it after
    return OmegaConf.to_container(OmegaConf.create(plain), resolve=True)  # type: ignore[return-value]


def session_files(count: int) -> list[str]:
    folder = Path(os.environ.get("KVFLOW_WEKA_SESSIONS", REPO.parent / "shared" / "data" / "weka"))
    return [str(p) for p in sorted(folder.glob("trace_*.json*"))[:count]]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--files", type=int, default=40)
    ap.add_argument("--rate", type=float, default=0.1, help="session starts per second (Poisson)")
    ap.add_argument("--replicas", default="1,2,4")
    ap.add_argument("--policies", default="hicache,kvflow")
    args = ap.parse_args()
    files = session_files(args.files)
    wall0 = time.perf_counter()
    print(
        "| replicas | router | policy | mean session s | p99 s | mean TTFT s | GPU hit | CPU hit | busiest replica share |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    trace = None
    for policy in args.policies.split(","):
        cfg = base_config(policy, files, args.rate)
        trace = trace or build_trace(cfg["workload"], int(cfg.get("seed", 0)))
        for n in (int(x) for x in args.replicas.split(",")):
            for router in ROUTERS if n > 1 else ("any",):
                cluster = {**cfg["cluster"], "replicas": n, "router": "round_robin" if router == "any" else router}
                result = simulate({**cfg, "cluster": cluster}, trace=trace)
                _print_row(n, router, policy, result.summary, result.replica_rows)
    clients = len({inv.client_id for inv in trace.invocations}) if trace else 0
    n_inv = len(trace.invocations) if trace else 0
    print(f"\n{clients} sessions, {n_inv} calls, from {len(files)} files; {time.perf_counter() - wall0:.0f} s wall")


def _print_row(n: int, router: str, policy: str, s: dict[str, Any], replicas: list[dict[str, Any]]) -> None:
    share = max(r["requests"] for r in replicas) / s["requests"] if replicas else 1.0
    print(
        f"| {n} | {router} | {policy} | {s['workflow_latency_mean_s']:,.0f} | {s['workflow_latency_p99_s']:,.0f} | "
        f"{s['details']['ttft_s']['mean']:.2f} | {s['hit_rate_gpu']:.1%} | {s['hit_rate_cpu']:.1%} | {share:.0%} |"
    )


if __name__ == "__main__":
    main()
