"""What the simulator counted, as the run-directory contract's ``RunCounters``.

The summary itself (every key and what it means) is ``harness.summary.summarize``'s, shared with
the other backends.
"""

from __future__ import annotations

from typing import Any

from harness.setup import Setup
from harness.summary import RunCounters, WhyFacts
from kvflow.cache import KVCacheManager
from sim.engine_loop import EngineLoop
from sim.pcie import PCIeLink


def counters(
    setup: Setup, loop: EngineLoop, pcie: PCIeLink, cache: KVCacheManager, makespan_s: float, hints: str = "none"
) -> RunCounters:
    """The engine loop's, the PCIe channels' and the cache's counters after a run; ``hints``: where
    the policy's workflow hints came from (declared | inferred | none)."""
    run = RunCounters(
        makespan_s=makespan_s,
        gpu_capacity_tokens=setup.gpu_tokens,
        cpu_capacity_tokens=setup.cpu_tokens,
        h2d_bytes=pcie.bytes_moved["h2d"],
        d2h_bytes=pcie.bytes_moved["d2h"],
        h2d_busy_s=pcie.busy_s["h2d"],
        d2h_busy_s=pcie.busy_s["d2h"],
        h2d_copies=pcie.copies["h2d"],
        d2h_copies=pcie.copies["d2h"],
        gpu_busy_s=loop.busy_s,
        iterations=loop.iterations,
        decode_steps=loop.decode_steps,
        blocking_load_wait_s=loop.blocking_load_wait_s,
        blocking_load_exposed_s=loop.blocking_load_exposed_s,
    )
    run.take_cache_stats(cache.stats)
    release = setup.release
    run.why = WhyFacts(
        replay=release.mode if release else "open",
        start=release.start if release else "recorded",
        hints=hints,
        gpu_demand_tokens=cache.gpu_used_tokens + cache.stats.gpu_evicted_tokens,
        busy_kind_s=dict(loop.busy_kind_s),
        agents_per_client=_agents_per_client(setup.trace),
    )
    return run


def _agents_per_client(trace: Any) -> float:
    agents: dict[str, set[str]] = {}
    for inv in trace.invocations:
        agents.setdefault(inv.client_id, set()).add(inv.agent_id)
    return sum(len(a) for a in agents.values()) / len(agents) if agents else 0.0
