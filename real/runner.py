"""One real run: composed config in, run directory out.

``run_real(cfg)`` takes the same plain-dict config as the simulator's ``simulate`` (``hardware``,
``model``, ``workload``, ``policy``, ``cache``, ``engine``, ``seed``) and goes through the same setup
(``harness.setup``: profile, cost model, trace, capacities, fit check, core), then drives the core
with a torch model, a KV store and a copy executor in wall-clock time.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from harness.errors import SetupError
from harness.rows import request_rows, workflow_rows
from harness.run_dir import write_run_dir
from harness.setup import Setup, build_core, build_trace, capacities, gain_s_per_token, prepare
from harness.summary import RunIdentity, summarize
from kvflow.model_spec import ModelSpec
from real.driver import WallClockDriver
from real.engine_loop import RealEngineLoop, make_clock
from real.executor import CopyExecutor
from real.kv_store import KVStore
from real.memory import MemoryItem, check_memory
from real.metrics import counters
from real.model import Seq, Transformer, pick_device, pick_dtype

__all__ = [
    "RealInputError",
    "RealOptions",
    "RealResult",
    "build_core",
    "build_model",
    "build_trace",
    "capacities",
    "memory_items",
    "gain_s_per_token",
    "run_real",
    "warm_up",
]

GIB = 1 << 30

RealInputError = SetupError  # the one setup error class; the old name stays for callers


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


def _device(opts: RealOptions) -> torch.device:
    device = pick_device(opts.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SetupError("device 'cuda' asked for but torch sees no GPU (use --device cpu)")
    return device


def build_model(model: ModelSpec, opts: RealOptions) -> Transformer:
    """The torch model, after checking its weights fit in the device's free memory."""
    device = _device(opts)
    if device.type == "cpu" and opts.cpu_threads:
        torch.set_num_threads(opts.cpu_threads)
    dtype = pick_dtype(device, opts.dtype)
    check_memory([_weights_item(model, dtype)], device)
    net = Transformer(model, device, dtype, seed=opts.weight_seed)
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


def run_real(
    cfg: Mapping[str, Any],
    trace: Any | None = None,
    out: str | Path | None = None,
    opts: RealOptions | None = None,
    net: Transformer | None = None,
    overrides: list[str] | None = None,
) -> RealResult:
    """Run one policy on one workload on the real backend; writes a run directory when ``out``."""
    opts = opts or RealOptions()
    wall0 = time.perf_counter()
    setup = prepare(cfg, trace)
    engine = build_core(cfg, setup, chunk_inserts=False)  # KV is filled per prompt (engine_loop._fill)
    if net is None:  # weights and pools checked together, before anything is allocated
        device = _device(opts)
        dtype = pick_dtype(device, opts.dtype)
        check_memory([_weights_item(setup.model, dtype), *memory_items(setup, dtype, opts)], device)
        net = build_model(setup.model, opts)
    else:
        check_memory(memory_items(setup, net.dtype, opts), net.device)
    store = _store(setup, net, opts)
    engine.cache.tree.on_split = store.on_split
    if opts.warmup:
        warm_up(net)
    clock = make_clock()
    executor = CopyExecutor(store, clock, copy_delay_s=opts.copy_delay_s)
    clairvoyant = engine.cache.policy if engine.cache.policy.reads_future else None
    hints = bool(cfg["policy"].get("hints", True))
    driver = WallClockDriver(setup.trace, engine, hints=hints, clairvoyant_policy=clairvoyant, rule=setup.release)
    loop = RealEngineLoop(engine, net, store, executor, driver, clock, check_invariants=opts.check_invariants)
    try:
        loop.run()
    finally:
        executor.close()
    run = counters(setup, loop, executor, store, net, engine.cache, clock())
    rows = request_rows(setup.trace, driver)
    wf = workflow_rows(rows)
    run.wall_s = time.perf_counter() - wall0
    summary = summarize(RunIdentity.from_config("real", cfg, _flat_params(cfg)), run, rows, wf)
    out_path = None
    if out is not None:
        timeline = sorted(loop.timeline + executor.timeline, key=lambda t: t[1])
        out_path = write_run_dir(
            Path(out), summary, rows, wf, dict(cfg), timeline=timeline, overrides=list(overrides or [])
        )
    return RealResult(summary, rows, wf, loop, driver, out_path)


def _token_bytes(model: ModelSpec, dtype: torch.dtype) -> int:
    """KV bytes per token as the KV store holds them (the run's dtype, not the spec's bf16)."""
    return 2 * model.layers * model.kv_heads * model.head_dim * torch.tensor([], dtype=dtype).element_size()


def _arena_tokens(setup: Setup, dtype: torch.dtype, opts: RealOptions) -> int:
    """Token slots of the CPU arena reserved before the clock: the CPU pool, at most ``cpu_pool_max_gib``."""
    if not setup.cpu_tokens:
        return 1
    return max(1, min(setup.cpu_tokens, int(opts.cpu_pool_max_gib * GIB) // _token_bytes(setup.model, dtype)))


def _weights_item(model: ModelSpec, dtype: torch.dtype) -> MemoryItem:
    nbytes = model.params * torch.tensor([], dtype=dtype).element_size()
    return MemoryItem(
        f"model weights ({model.name}, {str(dtype).replace('torch.', '')})", nbytes, "model= (e.g. model=tiny)"
    )


def memory_items(setup: Setup, dtype: torch.dtype, opts: RealOptions) -> list[MemoryItem]:
    """The KV pools a run allocates: the GPU pool (on the device) and the CPU arena (host)."""
    token_bytes = _token_bytes(setup.model, dtype)
    gpu = MemoryItem(
        f"GPU KV pool ({setup.gpu_tokens} tokens)", setup.gpu_tokens * token_bytes, "cache.gpu_capacity_tokens"
    )
    if not setup.cpu_tokens:
        return [gpu]
    arena = _arena_tokens(setup, dtype, opts)
    return [gpu, MemoryItem(f"CPU KV pool ({arena} tokens)", arena * token_bytes, "cache.cpu_capacity_tokens")]


def _store(setup: Setup, net: Transformer, opts: RealOptions) -> KVStore:
    """The KV store, its pinned CPU arena reserved and the GPU allocator grown before the clock."""
    model, cpu_tokens = setup.model, setup.cpu_tokens
    store = KVStore(model.layers, model.kv_heads, model.head_dim, net.device, net.dtype)
    arena = _arena_tokens(setup, net.dtype, opts)
    store.cpu_pool.arena_tokens = arena
    if cpu_tokens:
        store.cpu_pool.release(store.cpu_pool.alloc(arena))  # reserve the pinned arena before the clock
    if net.device.type == "cuda":  # grow the caching allocator to the KV pool once, outside the clock
        torch.empty(setup.gpu_tokens * store.token_bytes, dtype=torch.uint8, device=net.device)  # freed at once
    return store


def _flat_params(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """Workload parameters and cache sizes, flat, for analysis tables."""
    flat: dict[str, Any] = {}
    for key, value in dict((cfg.get("workload") or {}).get("params") or {}).items():
        flat[f"workload.params.{key}"] = value
    for key, value in dict(cfg.get("cache") or {}).items():
        flat[f"cache.{key}"] = value
    return flat
