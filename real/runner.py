"""One real run: composed config in, run directory out.

``run_real(cfg)`` takes the same plain-dict config as the simulator's ``simulate`` (``hardware``,
``model``, ``workload``, ``policy``, ``cache``, ``engine``, ``seed``) and builds the same core
(``KVCacheManager`` + ``Engine`` with the same capacity and batching rules), then drives it with a
torch model, a KV store and a copy executor in wall-clock time.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from kvflow.build import build_engine
from kvflow.engine import Engine
from kvflow.model_spec import ModelSpec, load_model_spec
from real.driver import WallClockDriver
from real.engine_loop import RealEngineLoop, make_clock
from real.executor import CopyExecutor
from real.kv_store import KVStore
from kvflow.workflow import request_rows, workflow_rows
from real.metrics import summarize, write_run_dir
from real.model import Seq, Transformer, pick_device, pick_dtype

MIB = 1 << 20
GIB = 1 << 30


class RealInputError(ValueError):
    """Bad input; ``str()`` is the one line shown to the user."""


@dataclass
class RealOptions:
    device: str = "auto"
    dtype: str = "auto"
    weights: str | None = None  # local safetensors file or folder
    weight_seed: int = 0
    check_invariants: bool = False
    copy_delay_s: float = 0.0  # CPU tests: slow copies down
    cpu_pool_max_gib: float = 48.0  # pinned host memory reserved before the clock, at most
    warmup: bool = True
    cpu_threads: int = 1  # torch intra-op threads on CPU: >1 spin-waits against the copy threads


@dataclass
class RealResult:
    summary: dict[str, Any]
    rows: list[dict[str, Any]]
    workflows: list[dict[str, Any]]
    loop: RealEngineLoop
    driver: WallClockDriver
    out: Path | None


def build_trace(workload: Mapping[str, Any], seed: int) -> Any:
    from traces import generate, load_trace

    if workload.get("trace"):
        return load_trace(str(workload["trace"]))
    params = dict(workload.get("params") or {})
    params.setdefault("seed", seed)
    return generate(str(workload["generator"]), **params)


def capacities(cfg: Mapping[str, Any], model: ModelSpec, trace: Any) -> tuple[int, int]:
    """GPU and CPU KV capacities in tokens, by the simulator's rules."""
    cache_cfg = cfg.get("cache") or {}
    hw = cfg.get("hardware") or {}
    gpu = cache_cfg.get("gpu_capacity_tokens")
    per_client = cache_cfg.get("gpu_tokens_per_client")
    if gpu is None and per_client:
        gpu = int(per_client) * len({inv.client_id for inv in trace.invocations})
    if gpu is None and hw.get("kv_capacity_tokens") is not None:
        gpu = int(hw["kv_capacity_tokens"])
    if gpu is None:
        free = float(hw["gpu_memory_mib"]) * MIB * float(hw.get("mem_fraction_static", 0.9)) - model.weight_bytes
        if free <= 0:
            raise RealInputError(f"model '{model.name}' does not fit in hardware '{hw.get('name')}'")
        gpu = int(free // model.kv_bytes_per_token)
    ratio = float((cfg.get("policy") or {}).get("cpu_capacity_ratio", 0.0))
    cpu = cache_cfg.get("cpu_capacity_tokens")
    cpu = 0 if ratio <= 0 else (int(cpu) if cpu is not None else int(ratio * int(gpu)))
    return int(gpu), cpu


def build_core(cfg: Mapping[str, Any], model: ModelSpec, gpu_tokens: int, cpu_tokens: int) -> Engine:
    """The same policy, cache manager and engine as the simulator builds (``kvflow.build``)."""
    hw = cfg.get("hardware") or {}
    engine_cfg = cfg.get("engine") or {}
    chunk = engine_cfg.get("chunk_tokens") or hw.get("chunked_prefill_tokens") or 8192
    return build_engine(
        cfg["policy"], gpu_tokens=gpu_tokens, cpu_tokens=cpu_tokens, kv_bytes_per_token=model.kv_bytes_per_token,
        chunk_tokens=int(chunk), h2d_gbps=h2d_gbps(hw), page_size=int((cfg.get("cache") or {}).get("page_size", 1)),
        max_running=engine_cfg.get("max_running_requests"), gain_s_per_token=lambda: gain_s_per_token(hw, model),
    )


def h2d_gbps(hw: Mapping[str, Any]) -> float:
    """Effective H2D rate of a profile, as the simulator reads it (measured, else spec x efficiency)."""
    measured = (hw.get("measured") or {}).get("h2d")
    if measured:
        return float(measured["gbps"])
    return float(hw.get("pcie_h2d_gbps", 25.0)) * float(hw.get("pcie_efficiency", 1.0))


def gain_s_per_token(hw: Mapping[str, Any], model: ModelSpec, context_tokens: int = 2048) -> float:
    """Seconds saved per cached token (recompute minus reload), from a measured profile: the same
    quantity ``sim.runner.gain_s_per_token`` derives from its cost model."""
    pre = (hw.get("measured") or {}).get("prefill")
    if not pre:
        raise RealInputError(f"policy needs gain_from_cost_model but hardware '{hw.get('name')}' has no measured "
                             "prefill block: calibrate first (kvflow-real calibrate)")
    recompute = float(pre["b_s_per_token"]) + float(pre["c_s_per_token_ctx"]) * context_tokens
    link = (hw.get("measured") or {}).get("h2d") or {}
    chunk = 512
    reload = (float(link.get("latency_s", 0.0)) + model.kv_bytes_per_token * chunk / (h2d_gbps(hw) * 1e9)) / chunk
    return recompute - reload


def build_model(model: ModelSpec, opts: RealOptions) -> Transformer:
    device = pick_device(opts.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RealInputError("device 'cuda' asked for but torch sees no GPU (use --device cpu)")
    if device.type == "cpu" and opts.cpu_threads:
        torch.set_num_threads(opts.cpu_threads)
    net = Transformer(model, device, pick_dtype(device, opts.dtype), seed=opts.weight_seed)
    if opts.weights:
        net.load_safetensors(opts.weights)
    return net


def warm_up(net: Transformer, tokens: int = 64) -> None:
    """Run a prefill with a prefix and a decode step once, outside the clock (lazy inits, kernels)."""
    kv = net.new_kv(2 * tokens + 2)
    net.greedy(net.forward(list(range(tokens)), [Seq(kv, 0, tokens)]))
    net.greedy(net.forward(list(range(tokens)), [Seq(kv, tokens, tokens)]))
    net.greedy(net.forward([1, 2], [Seq(kv, 2 * tokens, 1), Seq(kv, 2 * tokens, 1)]))
    if net.device.type == "cuda":
        torch.cuda.synchronize(net.device)


def _check_fits(trace: Any, gpu_tokens: int) -> None:
    for inv in trace.invocations:
        need = trace.prompt_len(inv) + inv.output_tokens
        if need > gpu_tokens:
            raise RealInputError(f"invocation {inv.id!r} needs {need} KV tokens (prompt + output) but the GPU KV "
                                 f"pool holds {gpu_tokens}: raise cache.gpu_capacity_tokens")


def run_real(cfg: Mapping[str, Any], trace: Any | None = None, out: str | Path | None = None,
             opts: RealOptions | None = None, net: Transformer | None = None,
             overrides: list[str] | None = None) -> RealResult:
    """Run one policy on one workload on the real backend; writes a run directory when ``out``."""
    opts = opts or RealOptions()
    wall0 = time.perf_counter()
    seed = int(cfg.get("seed", 0))
    model = load_model_spec(cfg["model"])
    trace = trace if trace is not None else build_trace(cfg["workload"], seed)
    gpu_tokens, cpu_tokens = capacities(cfg, model, trace)
    _check_fits(trace, gpu_tokens)
    engine = build_core(cfg, model, gpu_tokens, cpu_tokens)
    net = net or build_model(model, opts)
    store = KVStore(model.layers, model.kv_heads, model.head_dim, net.device, net.dtype)
    arena = max(1, min(cpu_tokens, int(opts.cpu_pool_max_gib * GIB) // store.token_bytes)) if cpu_tokens else 1
    store.cpu_pool.arena_tokens = arena
    if cpu_tokens:
        store.cpu_pool.release(store.cpu_pool.alloc(arena))  # reserve the pinned arena before the clock
    if net.device.type == "cuda":  # grow the caching allocator to the KV pool once, outside the clock
        torch.empty(gpu_tokens * store.token_bytes, dtype=torch.uint8, device=net.device)  # freed at once
    engine.cache.tree.on_split = store.on_split
    if opts.warmup:
        warm_up(net)
    clock = make_clock()
    executor = CopyExecutor(store, clock, copy_delay_s=opts.copy_delay_s)
    oracle = engine.cache.policy if hasattr(engine.cache.policy, "set_next_use") else None
    driver = WallClockDriver(trace, engine, hints=bool(cfg["policy"].get("hints", True)), oracle_policy=oracle)
    loop = RealEngineLoop(engine, net, store, executor, driver, clock, check_invariants=opts.check_invariants)
    try:
        loop.run()
    finally:
        executor.close()
    makespan = clock()
    rows = request_rows(trace, driver)
    wf = workflow_rows(rows)
    extra = {
        "gpu_capacity_tokens": gpu_tokens, "cpu_capacity_tokens": cpu_tokens,
        "device": str(net.device), "dtype": str(net.dtype).replace("torch.", ""),
        "device_name": torch.cuda.get_device_name(net.device) if net.device.type == "cuda" else "cpu",
        "torch": torch.__version__, "peak_gpu_kv_tokens": store.peak_gpu_tokens, "splits": store.splits,
        "h2d_copies": executor.copies["h2d"], "d2h_copies": executor.copies["d2h"],
        "params": _flat_params(cfg),
    }
    summary = summarize(dict(cfg), rows, wf, loop, engine.cache, executor, makespan,
                        time.perf_counter() - wall0, extra)
    out_path = None
    if out is not None:
        out_path = write_run_dir(Path(out), dict(cfg), rows, wf, summary, loop.timeline + executor.timeline,
                                 overrides)
    return RealResult(summary, rows, wf, loop, driver, out_path)


def _flat_params(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """Workload parameters and cache sizes, flat, for analysis tables."""
    flat: dict[str, Any] = {}
    for key, value in dict((cfg.get("workload") or {}).get("params") or {}).items():
        flat[f"workload.params.{key}"] = value
    for key, value in dict(cfg.get("cache") or {}).items():
        flat[f"cache.{key}"] = value
    return flat
