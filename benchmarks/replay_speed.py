"""Benchmark: kvflow-replay (LRU) vs kvcache-simulator's Python backend on the Mooncake trace.

Both runs parse the trace and replay it at the same budget (ours reads it through the traces
importer, as ``kvflow-replay`` does); the best of ``--repeat`` interleaved runs counts.
Usage: python benchmarks/replay_speed.py [--trace PATH] [--budget-gib 64] [--repeat 3]
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

from sim.replay import read_mooncake, replay

DEFAULT_TRACE = Path(__file__).resolve().parents[2] / "shared" / "data" / "mooncake" / "synthetic_trace.jsonl"
BLOCK_BYTES = 131072 * 512  # Llama-3.1-8B bf16, 512-token blocks


def time_ours(trace: Path, gib: float) -> tuple[float, float]:
    start = time.perf_counter()
    result = replay(read_mooncake(trace, 512), "lru", math.floor(gib * 2**30 / BLOCK_BYTES))
    return time.perf_counter() - start, result["hit_rate"]


def time_theirs(trace: Path, gib: float) -> tuple[float, float]:
    from kvcache_sim.simulator import run_sweep
    from kvcache_sim.trace import parse_trace_file

    start = time.perf_counter()
    out = run_sweep(
        parse_trace_file(trace, block_size=512),
        model_id="llama-3.1-8b",
        budgets_gib=[gib],
        policies=["lru"],
        backend="python",
    )
    return time.perf_counter() - start, out["points"][0]["results"]["lru"]["hitRate"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trace", type=Path, default=DEFAULT_TRACE)
    parser.add_argument("--budget-gib", type=float, default=64.0)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    runs = [
        (time_ours(args.trace, args.budget_gib), time_theirs(args.trace, args.budget_gib)) for _ in range(args.repeat)
    ]  # interleaved: on a shared machine both see the same load
    ours, theirs = min(r[0] for r in runs), min(r[1] for r in runs)
    print(f"trace {args.trace.name}, budget {args.budget_gib} GiB, LRU, best of {args.repeat}")
    print(f"kvflow-replay            {ours[0]:.3f} s  hit rate {100 * ours[1]:.3f}%")
    print(f"kvcache-simulator python {theirs[0]:.3f} s  hit rate {100 * theirs[1]:.3f}%")
    print(f"speed-up (theirs / ours) {theirs[0] / ours[0]:.2f}x")


if __name__ == "__main__":
    main()
