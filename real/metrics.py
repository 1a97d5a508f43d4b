"""What the real backend counted, as the run-directory contract's ``RunCounters``.

The summary (every key and what it means) and the run directory are ``harness``'s, shared with
the simulator and the SGLang replay; only the counters and a few facts about the device are ours.
"""

from __future__ import annotations

import torch

from harness.setup import Setup
from harness.summary import RunCounters
from kvflow.cache import KVCacheManager
from real.engine_loop import RealEngineLoop
from real.executor import CopyExecutor
from real.kv_store import KVStore
from real.model import Transformer


def counters(
    setup: Setup,
    loop: RealEngineLoop,
    executor: CopyExecutor,
    store: KVStore,
    net: Transformer,
    cache: KVCacheManager,
    makespan_s: float,
) -> RunCounters:
    """The engine loop's, the copy executor's and the cache's counters after a run, plus the device."""
    run = RunCounters(
        makespan_s=makespan_s,
        gpu_capacity_tokens=setup.gpu_tokens,
        cpu_capacity_tokens=setup.cpu_tokens,
        h2d_bytes=executor.bytes["h2d"],
        d2h_bytes=executor.bytes["d2h"],
        h2d_busy_s=executor.busy_s["h2d"],
        d2h_busy_s=executor.busy_s["d2h"],
        h2d_copies=executor.copies["h2d"],
        d2h_copies=executor.copies["d2h"],
        gpu_busy_s=loop.busy_s,
        iterations=loop.iterations,
        decode_steps=loop.decode_steps,
        blocking_load_wait_s=loop.blocking_load_wait_s,
        extra={
            "device": str(net.device),
            "dtype": str(net.dtype).replace("torch.", ""),
            "device_name": torch.cuda.get_device_name(net.device) if net.device.type == "cuda" else "cpu",
            "torch": torch.__version__,
            "peak_gpu_kv_tokens": store.peak_gpu_tokens,
            "splits": store.splits,
        },
    )
    run.take_cache_stats(cache.stats)
    return run
