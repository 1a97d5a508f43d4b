"""CPU-sized defaults for ``kvflow-real`` when the run's device is the CPU.

The composed defaults (``conf/config.yaml``) describe a GPU run: an 8B model and KV pools from the
GPU formula (memory x fraction / KV bytes), which on a CPU host means tens of GB of weights and a
51 GB pinned arena. On CPU, keys the user did not give get instead: the tiny random-weight model, a
small workload, ``policy=kvflow`` (validate needs one) and KV pools derived from the workload's own
working set (GPU: half the agents' fixed prompts, so eviction and CPU reloads happen; CPU: every
distinct token). ``apply`` returns the overrides and the one line saying what was chosen and why.
Explicit overrides always win: a default is only added for a key the user left alone.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from harness.config_schema import validate_config
from harness.setup import build_trace
from real.config import compose
from traces.schema import Trace

__all__ = [
    "CPU_MODEL",
    "CPU_POLICY",
    "CPU_WORKLOAD",
    "CpuChoice",
    "WorkingSet",
    "apply",
    "derived_pools",
    "describe_workload",
    "working_set",
]

CPU_MODEL = "tiny"
CPU_POLICY = "kvflow"
# A few concurrent sequential workflows: several workflow latencies to compare (not one), eviction
# across them, and a run of seconds on one core.
CPU_WORKLOAD = (
    "workload=concurrent",
    "workload.params.workflows=4",
    "workload.params.agents=4",
    "workload.params.warmup=1",
    "workload.params.runs=6",
    "workload.params.fixed_tokens=1024",
    "workload.params.dynamic_tokens=64",
    "workload.params.output_tokens=32",
)
# keys that, when the user gives any of them, mean "my workload": no workload default is added
WORKLOAD_KEYS = ("workload", "experiment")


@dataclass(frozen=True)
class WorkingSet:
    """Token counts of a trace that the KV pools are sized from."""

    fixed_tokens: int  # distinct agents' fixed prompts (the reusable part)
    distinct_tokens: int  # every distinct prompt token plus every output token (an infinite cache)
    largest_need_tokens: int  # one invocation's prompt + output (the GPU pool must hold it)


@dataclass
class CpuChoice:
    """The overrides to compose with and the line that tells the user what was chosen."""

    overrides: list[str]
    line: str
    chosen: dict[str, Any] = field(default_factory=dict)


def working_set(trace: Trace) -> WorkingSet:
    """Each distinct fixed prompt counted once; distinct tokens by segment-level prefix sharing."""
    fixed: dict[tuple[Any, ...], int] = {}
    seen: set[tuple[Any, ...]] = set()
    distinct = largest = 0
    for inv in trace.invocations:
        key = tuple((s.kind, s.key, s.n_tokens, s.ids) for s in inv.segments[: inv.fixed_segments])
        fixed[key] = trace.fixed_tokens(inv)
        prefix: tuple[Any, ...] = ()
        for seg in inv.segments:  # a segment-level prefix seen before carries the same tokens
            prefix = (*prefix, seg.kind, seg.key if seg.kind != "unique" else inv.id, seg.n_tokens, seg.ids)
            if prefix not in seen:
                seen.add(prefix)
                distinct += seg.n_tokens
        distinct += inv.output_tokens
        largest = max(largest, trace.prompt_len(inv) + inv.output_tokens)
    return WorkingSet(sum(fixed.values()), distinct, largest)


def derived_pools(ws: WorkingSet) -> tuple[int, int]:
    """(GPU, CPU) pool tokens: the GPU holds half the fixed prompts (at least two invocations), the
    CPU tier holds everything the run ever caches."""
    gpu = max(2 * ws.largest_need_tokens, ws.fixed_tokens // 2)
    return gpu, max(gpu, ws.distinct_tokens)


def _keys(overrides: list[str]) -> set[str]:
    return {o.split("=", 1)[0].lstrip("+~") for o in overrides}


def _given(keys: set[str], prefix: str) -> bool:
    return any(k == prefix or k.startswith(prefix + ".") for k in keys)


def apply(cmd: str, overrides: list[str], why: str = "no CUDA device") -> CpuChoice:
    """CPU defaults for ``cmd`` (run, validate) under the user's ``overrides``; theirs come last."""
    keys = _keys(overrides)
    added: list[str] = []
    chosen: dict[str, Any] = {}
    if "model" not in keys:
        added.append(f"model={CPU_MODEL}")
        chosen["model"] = CPU_MODEL
    if not any(_given(keys, k) for k in WORKLOAD_KEYS):
        added.extend(CPU_WORKLOAD)
        chosen["workload"] = describe_workload()
    if cmd == "validate" and "policy" not in keys:
        added.append(f"policy={CPU_POLICY}")
        chosen["policy"] = CPU_POLICY
    merged = added + list(overrides)
    pools = _pool_overrides(merged, keys, chosen)
    merged = added + pools + list(overrides)
    return CpuChoice(merged, _line(chosen, why), chosen)


def _pool_overrides(merged: list[str], keys: set[str], chosen: dict[str, Any]) -> list[str]:
    """Cache sizes from the workload for the pool keys the user left unset (never the GPU formula)."""
    gpu_given = "cache.gpu_capacity_tokens" in keys or "cache.gpu_tokens_per_client" in keys
    cpu_given = "cache.cpu_capacity_tokens" in keys
    if gpu_given and cpu_given:
        return []
    cfg = validate_config(compose(merged))
    ws = working_set(build_trace(cfg["workload"], int(cfg.get("seed", 0))))
    gpu, cpu = derived_pools(ws)
    chosen["working_set"] = ws
    out = []
    if not gpu_given:
        out.append(f"cache.gpu_capacity_tokens={gpu}")
        chosen["gpu_tokens"] = gpu
    if not cpu_given and not gpu_given:  # a user's GPU pool keeps the policy's CPU ratio over it
        out.append(f"cache.cpu_capacity_tokens={cpu}")
        chosen["cpu_tokens"] = cpu
    return out


def describe_workload() -> str:
    params = {o.split("=", 1)[0].rsplit(".", 1)[-1]: o.split("=", 1)[1] for o in CPU_WORKLOAD[1:]}
    return (
        f"{CPU_WORKLOAD[0].split('=')[1]} ({params['workflows']} workflows x {params['agents']} agents, "
        f"{params['warmup']} warm-up + {params['runs']} runs, {params['fixed_tokens']}/{params['dynamic_tokens']}/"
        f"{params['output_tokens']} tokens)"
    )


def _line(chosen: dict[str, Any], why: str) -> str:
    """``cpu: model=tiny, gpu pool N tokens, cpu pool M tokens (derived from the workload ...), ...``."""
    parts = []
    if "model" in chosen:
        parts.append(f"model={chosen['model']} (random weights)")
    ws = chosen.get("working_set")
    pools = []
    if "gpu_tokens" in chosen:
        pools.append(f"gpu pool {chosen['gpu_tokens']} tokens")
    if "cpu_tokens" in chosen:
        pools.append(f"cpu pool {chosen['cpu_tokens']} tokens")
    if pools and ws is not None:
        parts.append(
            ", ".join(pools) + f" (derived from the workload: fixed prompts {ws.fixed_tokens} tokens, "
            f"working set {ws.distinct_tokens} tokens)"
        )
    if "workload" in chosen:
        parts.append(f"workload={chosen['workload']}")
    if "policy" in chosen:
        parts.append(f"policy={chosen['policy']}")
    if not parts:
        return "cpu: every CPU default overridden"
    return "cpu: " + ", ".join(parts) + f"; {why}, so CPU-sized defaults (key=value overrides win)"
