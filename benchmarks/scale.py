"""Simulator cost at scale (issue 17 item 3): simulated requests per wall second and memory per
simulated request as concurrency grows, under memory pressure.

    python benchmarks/scale.py [--workflows 64,256,1024] [--policy kvflow] [--replicas 1]
    python benchmarks/scale.py --mooncake 10000,100000,300000,1000000 --replicas 8 [--router round_robin]

Each point runs in a fresh process (so its peak RSS is its own): the paper_concurrent workload
(H100, Llama-3.1-8B, 10 sequential agents, fixed 1024 / dynamic 256 / output 256) with W
workflows and a GPU pool of 4,096 tokens per workflow (the sim_speed setting's 262,144 tokens at
64 workflows, scaled so that memory pressure stays the same), CPU tier 8x the GPU pool. Prints,
per point: requests, trace build time, simulation wall time, requests per wall second, peak RSS
after building the trace and after the run, and the difference per request (what the simulation
keeps per request beyond the trace). Targets (issue 17): >= 30,000 requests/s for kvflow at 1,024
workflows; <= 2 KB per request beyond the trace; flat cost per request from 64 to 1,024.
``--breakdown`` runs each point once more under tracemalloc and splits what the run keeps at its end
into the simulated cache's content (tree, tags, heaps), the result rows and the rest (pure Python
only: compiled code has no frames to file its allocations under).

``--mooncake N,...``: instead, a Mooncake-style trace of N requests (``traces.tiling``: the
synthetic Mooncake file tiled with namespaced hash ids and shifted timestamps) through
``--replicas`` engines behind ``--router`` (H100, Llama-3.1-8B, default pools), one fresh process
per N. Target (issue 17): 1M requests through 8 replicas in <= 5 minutes wall within 8 GB RSS.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from collections.abc import Callable

from harness.compiled_core import describe
from harness.host_speed import describe_host

TARGET_REQ_PER_S = 30_000
TARGET_BYTES_PER_REQ = 2048
TARGET_MOONCAKE_S = 300
TARGET_MOONCAKE_RSS_BYTES = 8 * 2**30
MOONCAKE_FILE = "/work/shared/data/mooncake/synthetic_trace.jsonl"
_KVFLOW_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "kvflow") + "/"


def run_and_measure(cfg: dict, trace: object, build_s: float, rss_trace: int) -> dict[str, float]:
    """Simulate ``cfg`` on ``trace`` in this process; wall and CPU time, peak RSS after the run and
    the difference per request over ``rss_trace`` (what the simulation keeps beyond the trace)."""
    from sim.runner import simulate

    t0, cpu0 = time.perf_counter(), time.process_time()
    result = simulate(cfg, trace=trace)
    wall_s, cpu_s = time.perf_counter() - t0, time.process_time() - cpu0
    rss_run = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    requests = int(result.summary["requests"])
    return {
        "requests": requests,
        "build_s": build_s,
        "wall_s": wall_s,
        "cpu_s": cpu_s,
        "req_per_cpu_s": requests / cpu_s,
        "req_per_s": requests / wall_s,
        "rss_trace_bytes": rss_trace,
        "rss_run_bytes": rss_run,
        "bytes_per_request": (rss_run - rss_trace) / max(1, requests),
        "hit_rate_gpu": float(result.summary["hit_rate_gpu"]),
        "sim_s": float(result.summary.get("makespan_s", 0.0) or 0.0),
    }


# where ``--breakdown`` files what a run keeps: the simulated cache's content (tokens of the cached
# prefixes, nodes, tags, eviction heaps: bounded by the configured pools, not by the request count),
# the result rows, and the rest (requests in flight, workflow bookkeeping, token-stream starts)
CACHE_FILES = ("radix.py", "insert.py", "tagging.py", "tier_heap.py", "tiers.py", "cache.py")


def breakdown(run: Callable[[], object], requests_of: Callable[[object], int]) -> dict[str, float]:
    """Bytes per request that ``run()`` leaves allocated when the driver builds its rows (the end of
    the run, before the summary), by owner: tracemalloc, pure Python only (compiled code has no
    frames to file its allocations under)."""
    import tracemalloc

    from sim.driver import WorkflowDriver

    taken: list[tracemalloc.Snapshot] = []
    rows = WorkflowDriver.rows

    def rows_then_snapshot(self: WorkflowDriver) -> list:
        out = rows(self)
        taken.append(tracemalloc.take_snapshot())
        return out

    tracemalloc.start(1)
    before = tracemalloc.take_snapshot()
    WorkflowDriver.rows = rows_then_snapshot  # type: ignore[method-assign]
    try:
        result = run()
    finally:
        WorkflowDriver.rows = rows  # type: ignore[method-assign]
        tracemalloc.stop()
    n = max(1, requests_of(result))
    parts = {"cache": 0.0, "rows": 0.0, "rest": 0.0}
    for stat in taken[-1].compare_to(before, "filename"):
        name = stat.traceback[0].filename.replace("\\", "/")
        owner = "cache" if name.startswith(_KVFLOW_DIR) and name.rsplit("/", 1)[-1] in CACHE_FILES else "rest"
        owner = "rows" if name.endswith("harness/rows.py") else owner
        parts[owner] += stat.size_diff / n
    return parts


def point(workflows: int, policy: str, replicas: int, split: bool = False) -> dict[str, float]:
    """One measurement in this process (called in a child by ``main``); ``split``: instead, the
    ``breakdown`` of what the run keeps per request."""
    from harness.setup import build_trace
    from sim.runner import load_conf as conf

    workload = conf("workload", "concurrent")
    workload["params"].update(workflows=workflows, fixed_tokens=1024)
    t0 = time.perf_counter()
    trace = build_trace(workload, seed=0)
    build_s = time.perf_counter() - t0
    rss_trace = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    gpu = 4096 * workflows
    cfg = {
        "seed": 0,
        "hardware": conf("hardware", "h100"),
        "model": conf("model", "llama-3.1-8b"),
        "workload": workload,
        "policy": conf("policy", policy),
        "cache": {"gpu_capacity_tokens": gpu, "cpu_capacity_tokens": 8 * gpu},
        "engine": {},
        "sim": {"timeline": False},
    }
    if replicas > 1:
        cfg["cluster"] = {**conf_cluster(), "replicas": replicas, "router": "session_affinity"}
    if split:
        from sim.runner import simulate

        parts = breakdown(lambda: simulate(cfg, trace=trace), lambda r: int(r.summary["requests"]))  # type: ignore[attr-defined]
        return {"workflows": workflows, **parts}
    return {"workflows": workflows, **run_and_measure(cfg, trace, build_s, rss_trace)}


def mooncake_point(n_requests: int, policy: str, replicas: int, router: str, path: str) -> dict[str, float]:
    """One Mooncake point in this process: build the tiled trace, run the fleet, measure."""
    from sim.runner import load_conf as conf
    from traces.tiling import tile_mooncake

    t0 = time.perf_counter()
    trace = tile_mooncake(path, n_requests)
    build_s = time.perf_counter() - t0
    rss_trace = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    cfg = {
        "seed": 0,
        "hardware": conf("hardware", "h100"),
        "model": conf("model", "llama-3.1-8b"),
        "workload": {"name": "mooncake_tiled"},
        "policy": conf("policy", policy),
        "cache": {},
        "engine": {},
        "sim": {"timeline": False},
        "cluster": {**conf_cluster(), "replicas": replicas, "router": router},
    }
    return run_and_measure(cfg, trace, build_s, rss_trace)


def child_point(cmd: list[str], label: int) -> dict[str, float] | None:
    """Run one point in a fresh process (its peak RSS is its own); its JSON line, or None after
    printing the child's last error line."""
    out = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        print(f"{label:>9}  failed: {(out.stderr.strip().splitlines() or ['?'])[-1]}")
        return None
    return json.loads(out.stdout.strip().splitlines()[-1])


def mooncake_main(args: argparse.Namespace) -> int:
    """The Mooncake curve: one fresh process per request count, increasing."""
    counts = sorted(int(x) for x in args.mooncake.split(",") if x.strip())
    print(f"Mooncake tiled ({args.mooncake_file}), policy {args.policy}, {args.replicas} replica(s), {args.router}")
    print(f"kvflow core: {describe()}")
    print(describe_host())
    print(
        f"{'requests':>9}{'trace s':>9}{'wall s':>9}{'CPU s':>8}{'req/s':>9}{'RSS trace MB':>13}{'RSS run MB':>11}"
        f"{'B/request':>10}{'GPU hit':>9}{'simulated s':>13}"
    )
    for n in counts:
        cmd = [sys.executable, __file__, "--mooncake-child", str(n), "--policy", args.policy]
        cmd += ["--replicas", str(args.replicas), "--router", args.router, "--mooncake-file", args.mooncake_file]
        r = child_point(cmd, n)
        if r is None:
            continue
        print(
            f"{r['requests']:>9}{r['build_s']:>9.1f}{r['wall_s']:>9.1f}{r['cpu_s']:>8.1f}{r['req_per_s']:>9,.0f}"
            f"{r['rss_trace_bytes'] / 2**20:>13,.0f}{r['rss_run_bytes'] / 2**20:>11,.0f}"
            f"{r['bytes_per_request']:>10,.0f}{r['hit_rate_gpu']:>9.1%}{r['sim_s']:>13,.0f}"
        )
    print(
        f"target: 1,000,000 requests through 8 replicas in <= {TARGET_MOONCAKE_S} s wall (trace + sim) within "
        f"{TARGET_MOONCAKE_RSS_BYTES / 2**30:.0f} GB RSS"
    )
    return 0


def conf_cluster() -> dict:
    """The config's default ``cluster`` block (conf/config.yaml)."""
    from importlib.resources import files

    import yaml

    return dict(yaml.safe_load((files("conf") / "config.yaml").read_text()).get("cluster") or {})


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workflows", default="64,256,1024", help="comma-separated workflow counts")
    ap.add_argument("--policy", default="kvflow")
    ap.add_argument("--replicas", type=int, default=1, help="engines behind a session-affinity router")
    ap.add_argument("--mooncake", default="", help="comma-separated request counts: the Mooncake fleet curve")
    ap.add_argument("--router", default="round_robin", help="--mooncake: the fleet's router")
    ap.add_argument("--mooncake-file", default=MOONCAKE_FILE, help="--mooncake: the Mooncake JSONL to tile")
    ap.add_argument(
        "--breakdown",
        action="store_true",
        help="also split each point's bytes per request into the cache's content, the rows and the rest "
        "(tracemalloc, one more run per point; pure Python only)",
    )
    ap.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--child-breakdown", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--mooncake-child", type=int, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.mooncake_child is not None:
        r = mooncake_point(args.mooncake_child, args.policy, args.replicas, args.router, args.mooncake_file)
        print(json.dumps(r))
        return 0
    if args.mooncake:
        return mooncake_main(args)
    if args.child is not None:
        print(json.dumps(point(args.child, args.policy, args.replicas, split=args.child_breakdown)))
        return 0
    if args.breakdown and describe().startswith("compiled"):
        print("--breakdown needs the pure-Python core (tracemalloc files no allocation of compiled code):")
        print("run it from a checkout without the build (python -m harness.compiled_core clean)")
        return 2
    counts = [int(x) for x in args.workflows.split(",") if x.strip()]
    print(f"policy {args.policy}, {args.replicas} replica(s); one fresh process per point; kvflow core: {describe()}")
    print(describe_host())
    print(
        f"{'workflows':>9}{'requests':>10}{'trace s':>9}{'sim s':>8}{'CPU s':>8}{'req/s':>9}{'req/CPU s':>10}"
        f"{'RSS trace MB':>13}"
        f"{'RSS run MB':>11}{'B/request':>10}{'GPU hit':>9}"
    )
    for w in counts:
        cmd = [sys.executable, __file__, "--child", str(w), "--policy", args.policy, "--replicas", str(args.replicas)]
        r = child_point(cmd, w)
        if r is None:
            continue
        print(
            f"{r['workflows']:>9}{r['requests']:>10}{r['build_s']:>9.2f}{r['wall_s']:>8.2f}{r['cpu_s']:>8.2f}"
            f"{r['req_per_s']:>9,.0f}{r['req_per_cpu_s']:>10,.0f}"
            f"{r['rss_trace_bytes'] / 2**20:>13,.0f}{r['rss_run_bytes'] / 2**20:>11,.0f}"
            f"{r['bytes_per_request']:>10,.0f}{r['hit_rate_gpu']:>9.1%}"
        )
        if args.breakdown:
            b = child_point(cmd + ["--child-breakdown"], w)
            if b is not None:
                print(
                    f"{'':>9}  kept at the end, B/request (tracemalloc): cache content {b['cache']:,.0f}, "
                    f"rows {b['rows']:,.0f}, rest {b['rest']:,.0f}; all {b['cache'] + b['rows'] + b['rest']:,.0f}"
                )
    print(
        f"targets: >= {TARGET_REQ_PER_S:,} req/s at 1,024 workflows; <= {TARGET_BYTES_PER_REQ:,} B/request beyond the trace"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
