"""Cache-only replay (``sim.replay``) of the Weka coding-agent sessions: GPU hit rates per pool size.

Block level (one unit per 64-token hash block, namespaced per session), sessions interleaved in
time: each session starts as in ``experiment=coding_agents`` (a seeded Poisson process,
``--rate`` sessions per second) and its calls keep their recorded times (start + think time +
api_time), so the replay order is the recorded clock's, not file order. No warm-up is excluded.
Usage: python benchmarks/weka_replay.py [--sessions test|train|all] [--pools 100000,400000,850000,2000000]
"""

from __future__ import annotations

import argparse
import glob
import os
import time

from harness.setup import select_sessions
from kvflow.release import ReleaseOptions, ReleaseRule
from sim.replay import replay, requests_from_trace
from traces.importers import import_trace

DATA = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "weka")


def recorded_order(trace, rate_per_s: float, seed: int) -> list[int]:
    """Invocation indices sorted by their recorded start, sessions shifted to Poisson starts."""
    rule = ReleaseRule(trace, ReleaseOptions(replay="closed", start="poisson", start_rate_per_s=rate_per_s, seed=seed))
    end: dict[str, float] = {}
    start: list[float] = []
    for inv in trace.invocations:  # topological order
        t = rule.root_ready_s(inv) if not inv.deps else max(end[d] for d in inv.deps)
        t = rule.release_s(inv, t)
        start.append(t)
        end[inv.id] = t + (inv.service_s or 0.0)
    return sorted(range(len(start)), key=lambda i: start[i])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=DATA)
    ap.add_argument("--sessions", default="test", choices=["test", "train", "all"])
    ap.add_argument("--pools", default="100000,400000,850000,2000000", help="pool sizes in tokens")
    ap.add_argument("--rate", type=float, default=0.002, help="session starts per second (Poisson)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    t0 = time.perf_counter()
    paths = sorted(glob.glob(os.path.join(args.data, "*.json.gz")))
    trace = select_sessions(import_trace("weka", paths, blocks=True, warn=lambda _: None), args.sessions)
    requests, by_block = requests_from_trace(trace)
    assert by_block, "the blocks=True import gives block segments only"
    requests = [requests[i] for i in recorded_order(trace, args.rate, args.seed)]
    block = trace.block_tokens
    print(
        f"{len({i.client_id for i in trace.invocations})} sessions, {len(requests)} calls, "
        f"block {block} tokens, read in {time.perf_counter() - t0:.1f} s"
    )
    print("| pool (tokens) | LRU GPU hit | Belady GPU hit |")
    print("|---|---|---|")
    for pool in (int(p) for p in args.pools.split(",")):
        rates = [replay(requests, name, pool // block, warmup_fraction=0.0)["hit_rate"] for name in ("lru", "belady")]
        print(f"| {pool:,} | {rates[0]:.1%} | {rates[1]:.1%} |", flush=True)
    ceiling = replay(requests, "lru", 10**9, warmup_fraction=0.0)["hit_rate"]
    print(f"| infinite | {ceiling:.1%} | {ceiling:.1%} |")
    print(f"total {time.perf_counter() - t0:.1f} s")


if __name__ == "__main__":
    main()
