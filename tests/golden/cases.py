"""Small simulations whose summary figures are pinned in ``sim_summaries.json``.

Each case is (name, config, trace-or-None). Regenerate the golden file with
``python -m tests.golden.regen`` and say in the commit message why the numbers moved.
"""

from __future__ import annotations

import itertools
import tempfile
from pathlib import Path
from typing import Any

from sim.runner import load_conf as conf

REPO = Path(__file__).resolve().parents[2]
SHARED_DATA = REPO.parent / "shared" / "data"
POLICIES = (
    "sglang",
    "hicache",
    "kvflow",
    "kvflow_evict_only",
    "kvflow_inferred",
    "kvflow_cost",
    "kvflow_gd",
    "clairvoyant",
)
PINNED = (
    "requests",
    "workflows",
    "workflow_latency_mean_s",
    "workflow_latency_p50_s",
    "workflow_latency_p99_s",
    "makespan_s",
    "hit_rate_gpu",
    "hit_rate_cpu",
    "recompute_rate",
    "h2d_bytes",
    "d2h_bytes",
    "prefetch_issued",
    "prefetch_used",
    "prefetch_wasted",
    "prefetch_late",
)
GENERATED = {
    "sequential": (
        {
            "generator": "sequential",
            "params": dict(agents=5, warmup=1, runs=2, fixed_tokens=600, dynamic_tokens=20, output_tokens=8),
        },
        2000,
    ),
    "concurrent": (
        {
            "generator": "concurrent",
            "params": dict(
                workflows=6, agents=4, runs=2, warmup=1, fixed_tokens=300, dynamic_tokens=40, output_tokens=30
            ),
        },
        3000,
    ),
}


def _cfg(
    policy: str, workload: dict[str, Any], name: str, gpu_tokens: int, cpu_tokens: int, hardware: str = "a10g_paper"
) -> dict[str, Any]:
    return {
        "seed": 0,
        "hardware": conf("hardware", hardware),
        "model": conf("model", "llama-3.1-8b"),
        "workload": {"name": name, **workload},
        "policy": conf("policy", policy),
        "cache": {"gpu_capacity_tokens": gpu_tokens, "cpu_capacity_tokens": cpu_tokens},
        "engine": {},
        "sim": {},
    }


def _chatdev_slice() -> Any:
    from traces.importers import import_trace

    # the logs these numbers were pinned on: of the first three, 20230726121145 (the oldest
    # "[OpenAI_Usage_Info]" layout) was skipped until the importer learned to read it
    logs = [str(SHARED_DATA / "chatdev" / f"{name}.log.gz") for name in ("20230821204606", "20230822144615")]
    return import_trace("chatdev", logs, warn=lambda *_: None)


def _mooncake_slice(lines: int = 300) -> Any:
    from traces.importers import import_trace

    source = SHARED_DATA / "mooncake" / "synthetic_trace.jsonl"
    with source.open() as handle, tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "mooncake_slice.jsonl"
        path.write_text("".join(itertools.islice(handle, lines)))
        return import_trace("mooncake", [str(path)], warn=lambda *_: None)


def cases() -> list[tuple[str, dict[str, Any], Any]]:
    """Every pinned case; the ChatDev and Mooncake slices only when the shared data is present."""
    out: list[tuple[str, dict[str, Any], Any]] = []
    for workload, (wl, gpu) in GENERATED.items():
        for policy in POLICIES:
            out.append((f"{workload}/{policy}", _cfg(policy, wl, workload, gpu, 2 * gpu), None))
    if (SHARED_DATA / "chatdev").is_dir():
        chatdev = _chatdev_slice()
        clients = len({inv.client_id for inv in chatdev.invocations})
        for policy in POLICIES:
            out.append(
                (f"chatdev3/{policy}", _cfg(policy, {}, "chatdev3", 8192 * clients, 16384 * clients, "h100"), chatdev)
            )
    if (SHARED_DATA / "mooncake").is_dir():
        mooncake = _mooncake_slice()
        for policy in ("sglang", "hicache", "kvflow"):
            out.append((f"mooncake300/{policy}", _cfg(policy, {}, "mooncake300", 262144, 524288, "h100"), mooncake))
    return out


def pinned(summary: dict[str, Any]) -> dict[str, Any]:
    return {key: summary[key] for key in PINNED}
