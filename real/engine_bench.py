"""``python -m real.engine_bench``: measure, with torch alone, the data paths that decide the
headline (ENGINES.md section 4) and write ``engine_profile.yaml``, which an engine model reads with
``engine.measured=PATH`` (harness/engines/measured.py; docs/real_backend.md).

    python -m real.engine_bench --device cuda --out DIR          # on the GPU machine (~1 min expected on an H200; not yet measured)
    python -m real.engine_bench --device cpu --out DIR --dry-run # tiny shapes on CPU (tests)

Parts, in this order (each a warm-up plus a few timed reps; a part that fails is recorded under
``parts`` and the rest go on; the profile is rewritten after every part, so a killed run leaves one):
- ``path_04``: SGLang 0.4's load, per layer an advanced-index gather from an unpinned host pool
  ``(2, L, size, H, D)`` + one synchronous pageable ``.to(device)`` + a GPU scatter, for each model's
  KV shape and token count; and its backup (GPU gather, pageable ``.cpu()``, CPU scatter).
- ``direct_05``: 0.5's direct backend, one ``cudaMemcpyAsync`` per page per layer (K and V) from a
  pinned layer-first pool at page sizes 1/16/64/256 and one whole-layer copy (a Python loop and
  ``torch._foreach_copy_``; the faster counts), fitted to ``latency x copies + bytes / gbps``.
- ``bidirectional``: large pinned copies alone and with the other direction busy.
- ``overlap``: per-layer side-stream H2D against a 32- and a 2k-token prefill-sized matmul load:
  compute alone, load alone, both independent (does compute slow?), and layer l's compute waiting
  for layer l's copy, next to the model ``max(compute, load) + load / L``.
- ``graph_decode``: a batch-1 decode step of a random-weight decoder with the model's shapes,
  eager and replayed as a CUDA graph.
- ``kernel_05``: 0.5's kernel backend, one SM gather kernel per layer reading pinned memory (a
  zero-copy CUDA view of the pinned pool, for layer_first and page_first layouts), and the
  index_select-into-a-pinned-staging-buffer + one async copy per layer variant. Last: a broken
  zero-copy view must not take the other parts' CUDA context with it.
On CPU (no CUDA) pinned memory, streams and graphs are skipped and marked ``skipped: no CUDA``;
``.to(device)`` becomes a host copy, so a CPU profile describes host memcpy, not PCIe.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import gc
import math
import platform
import statistics
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
import yaml

from kvflow.model_spec import ModelSpec, load_model_spec

PROFILE_NAME = "engine_profile.yaml"
FORMAT = "kvflow-engine-profile/1"  # harness.engines.measured checks it
NO_CUDA = "skipped: no CUDA"
PAGE_SIZES = (1, 16, 64, 256)
# engine-model parameter names (conf/engine/*.yaml) and hardware-profile names (conf/hardware) it writes
ENGINE_PARAMS = (
    "host_gather_gbps",
    "pageable_h2d_gbps",
    "pageable_d2h_gbps",
    "kernel_gbps",
    "direct_gbps",
    "direct_copy_latency_s",
)
HARDWARE_PARAMS = ("pcie_h2d_gbps", "pcie_d2h_gbps", "bidirectional_h2d_factor", "bidirectional_d2h_factor")
MIB = 1 << 20


@dataclass(frozen=True)
class Sizes:
    """What each part measures: shapes, token counts and repetitions."""

    models: tuple[str, ...]  # conf/model names whose KV shapes the 0.4 path moves
    tokens: tuple[int, ...]  # tokens per 0.4 load
    direct_tokens: int  # tokens per direct-copy measurement (fewer when it would exceed max_copies)
    max_copies: int  # cudaMemcpyAsync calls per direct measurement at most
    kernel_tokens: int  # tokens per kernel-backend load
    bulk_bytes: int  # one large pinned copy (bidirectional)
    compute_model: str  # shapes of the synthetic decoder (overlap, graph_decode) and of direct/kernel
    compute_tokens: tuple[int, ...]  # prefill sizes of the overlap's compute load
    overlap_load_tokens: int  # tokens loaded during the overlap (per layer: their K and V)
    decode_ctx: int  # KV context of the decode step
    decode_steps: int  # decode steps per timed rep
    reps: int
    single_thread_gather: bool = True  # also time the first model's largest gather on one CPU thread


GPU_SIZES = Sizes(
    models=("llama-3.1-8b", "qwen2.5-32b"),
    tokens=(1024, 8192),
    direct_tokens=4096,
    max_copies=16384,
    kernel_tokens=8192,
    bulk_bytes=256 * MIB,
    compute_model="llama-3.1-8b",
    compute_tokens=(32, 2048),
    overlap_load_tokens=8192,
    decode_ctx=1024,
    decode_steps=20,
    reps=3,
)
DRY_SIZES = Sizes(
    models=("tiny",),
    tokens=(64, 512),
    direct_tokens=512,
    max_copies=2048,
    kernel_tokens=512,
    bulk_bytes=4 * MIB,
    compute_model="tiny",
    compute_tokens=(8, 64),
    overlap_load_tokens=512,
    decode_ctx=64,
    decode_steps=4,
    reps=2,
)


@dataclass
class Ctx:
    """The device and sizes every part shares, plus the synthetic decoder two parts reuse."""

    device: torch.device
    sizes: Sizes
    dtype: torch.dtype = torch.bfloat16
    decoder: SyntheticDecoder | None = None

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize(self.device)

    def timed(self, fn: Callable[[], Any], reps: int | None = None) -> float:
        """Median wall seconds of ``fn`` after one warm-up, synchronized around each call."""
        fn()
        self.sync()
        samples = []
        for _ in range(reps or self.sizes.reps):
            t0 = time.perf_counter()
            fn()
            self.sync()
            samples.append(time.perf_counter() - t0)
        return statistics.median(samples)

    def to_device(self, t: torch.Tensor) -> torch.Tensor:
        """A synchronous copy to the device (pageable when ``t`` is); on CPU a host copy."""
        return t.to(self.device) if self.cuda else t.clone()

    def to_host(self, t: torch.Tensor) -> torch.Tensor:
        return t.cpu() if self.cuda else t.clone()

    def get_decoder(self) -> SyntheticDecoder:
        if self.decoder is None:
            spec = load_model_spec(self.sizes.compute_model)
            self.decoder = SyntheticDecoder(spec, self.device, self.dtype, self.sizes.decode_ctx)
        return self.decoder


@dataclass
class PartResult:
    """What a part measured: engine-model rates, hardware-profile rates, raw figures."""

    engine: dict[str, Any] = field(default_factory=dict)
    hardware: dict[str, Any] = field(default_factory=dict)
    raw: dict[str, Any] = field(default_factory=dict)
    status: str = "ok"


def _gbps(nbytes: float, seconds: float) -> float:
    return nbytes / seconds / 1e9 if seconds > 0 else math.inf


def _elem(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


# -- part 1: SGLang 0.4's per-layer gather + pageable copy, and its backup ------------------------------
def _kv_dims(spec: ModelSpec) -> tuple[int, int, int]:
    return spec.layers, spec.kv_heads, spec.head_dim


def _load_point(ctx: Ctx, pool: torch.Tensor, dev: torch.Tensor, n: int) -> dict[str, Any]:
    """One 0.4 load of ``n`` tokens from scattered host slots: gather, pageable copy, both + scatter."""
    layers = pool.shape[1]
    idx = torch.randperm(pool.shape[2])[:n].sort().values  # a host pool after churn: scattered slots
    contiguous = torch.arange(n)
    dev_idx = torch.arange(n, device=ctx.device)
    total = 2 * n * pool.shape[3] * pool.shape[4] * pool.element_size() * layers
    gather_s = ctx.timed(lambda: [pool[:, layer, idx] for layer in range(layers)])
    contiguous_s = ctx.timed(lambda: [pool[:, layer, contiguous] for layer in range(layers)])
    staged = [pool[:, layer, idx] for layer in range(layers)]
    copy_s = ctx.timed(lambda: [ctx.to_device(t) for t in staged])
    staged.clear()  # free the host copies before the combined pass

    def load() -> None:
        for layer in range(layers):
            dev[:, layer].index_copy_(1, dev_idx, ctx.to_device(pool[:, layer, idx]))

    path_s = ctx.timed(load)
    gather, copy = _gbps(total, gather_s), _gbps(total, copy_s)
    return {
        "tokens": n,
        "bytes": total,
        "host_gather_gbps": gather,
        "host_gather_contiguous_gbps": _gbps(total, contiguous_s),
        "pageable_h2d_gbps": copy,
        "load_path_gbps": _gbps(total, path_s),
        "serial_model_gbps": 1.0 / (1.0 / gather + 1.0 / copy),
        "load_s": path_s,
    }


def _backup_point(ctx: Ctx, pool: torch.Tensor, dev: torch.Tensor, n: int) -> dict[str, Any]:
    """One 0.4 backup of ``n`` tokens: GPU gather over all layers, pageable D2H, CPU scatter."""
    idx = torch.randperm(pool.shape[2])[:n].sort().values
    dev_idx = torch.randperm(n, device=ctx.device)
    flat = dev[:, :, dev_idx]
    total = flat.numel() * flat.element_size()
    d2h_s = ctx.timed(lambda: ctx.to_host(flat))
    host_flat = ctx.to_host(flat)
    scatter_s = ctx.timed(lambda: pool.index_copy_(2, idx, host_flat))

    def backup() -> None:
        pool.index_copy_(2, idx, ctx.to_host(dev[:, :, dev_idx]))

    path_s = ctx.timed(backup)
    return {
        "tokens": n,
        "bytes": total,
        "pageable_d2h_gbps": _gbps(total, d2h_s),
        "host_scatter_gbps": _gbps(total, scatter_s),
        "backup_path_gbps": _gbps(total, path_s),
    }


def _single_thread_gather(ctx: Ctx, pool: torch.Tensor, n: int) -> float:
    """The gather on one CPU thread (a load thread that gets one core)."""
    threads = torch.get_num_threads()
    idx = torch.randperm(pool.shape[2])[:n].sort().values
    total = 2 * n * pool.shape[3] * pool.shape[4] * pool.element_size() * pool.shape[1]
    torch.set_num_threads(1)
    try:
        return _gbps(total, ctx.timed(lambda: [pool[:, layer, idx] for layer in range(pool.shape[1])]))
    finally:
        torch.set_num_threads(threads)


def _path_model(ctx: Ctx, name: str, single_thread: bool) -> dict[str, Any]:
    """Loads and backups of one model's KV shape at every token count."""
    layers, heads, dim = _kv_dims(load_model_spec(name))
    n_max = max(ctx.sizes.tokens)
    pool = torch.zeros((2, layers, 2 * n_max, heads, dim), dtype=ctx.dtype)  # unpinned, as in 0.4
    dev = torch.zeros((2, layers, n_max, heads, dim), dtype=ctx.dtype, device=ctx.device)
    rows: dict[str, Any] = {"layers": layers, "load": [], "backup": []}
    for n in ctx.sizes.tokens:
        rows["load"].append(_load_point(ctx, pool, dev, n))
        rows["backup"].append(_backup_point(ctx, pool, dev, n))
    if single_thread:
        rows["host_gather_1thread_gbps"] = _single_thread_gather(ctx, pool, n_max)
    return rows


def part_path_04(ctx: Ctx) -> PartResult:
    res = PartResult(raw={"cpu_threads": torch.get_num_threads(), "models": {}})
    errors = []
    for i, name in enumerate(ctx.sizes.models):
        try:
            res.raw["models"][name] = _path_model(ctx, name, i == 0 and ctx.sizes.single_thread_gather)
        except Exception as exc:  # noqa: BLE001 - recorded; the other model still counts
            errors.append(f"{name}: {_one_line(exc)}")
            res.raw["models"][name] = {"error": errors[-1]}
        gc.collect()
    done = [m for m in res.raw["models"].values() if "error" not in m]  # medians over models, largest count
    if not done:
        raise RuntimeError("; ".join(errors))
    res.engine = {
        "host_gather_gbps": statistics.median(m["load"][-1]["host_gather_gbps"] for m in done),
        "pageable_h2d_gbps": statistics.median(m["load"][-1]["pageable_h2d_gbps"] for m in done),
        "pageable_d2h_gbps": statistics.median(m["backup"][-1]["pageable_d2h_gbps"] for m in done),
    }
    if errors:
        res.status = "partial: " + "; ".join(errors)
    return res


# -- part 2: 0.5's direct backend, one cudaMemcpyAsync per page per layer ------------------------------
def _page_pairs(
    host: torch.Tensor, dev: torch.Tensor, page: int, pages: int
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """(destination, source) views of ``pages`` pages per layer and K/V, host pages scattered."""
    slots = torch.randperm(host.shape[2] // page)[:pages].tolist()
    dsts, srcs = [], []
    for kv in range(2):
        for layer in range(host.shape[1]):
            for j, slot in enumerate(slots):
                dsts.append(dev[kv, layer, j * page : (j + 1) * page])
                srcs.append(host[kv, layer, slot * page : (slot + 1) * page])
    return dsts, srcs


def _direct_point(ctx: Ctx, host: torch.Tensor, dev: torch.Tensor, page: int) -> dict[str, Any]:
    layers = host.shape[1]
    pages = max(1, min(ctx.sizes.direct_tokens // page, ctx.sizes.max_copies // (2 * layers)))
    dsts, srcs = _page_pairs(host, dev, page, pages)
    total = sum(s.numel() * s.element_size() for s in srcs)
    nb = ctx.cuda

    def loop() -> None:
        for d, s in zip(dsts, srcs):
            d.copy_(s, non_blocking=nb)

    times = {"loop_s": ctx.timed(loop)}
    if hasattr(torch, "_foreach_copy_"):
        try:
            times["foreach_s"] = ctx.timed(lambda: torch._foreach_copy_(dsts, srcs, non_blocking=nb))
        except Exception as exc:  # noqa: BLE001 - the loop's figure stands
            times["foreach_error"] = _one_line(exc)  # type: ignore[assignment]
    best = min(v for v in times.values() if isinstance(v, float))
    return {
        "page_tokens": page,
        "copies": len(dsts),
        "page_layers": len(dsts) // 2,  # K and V are separate tensors: two copies per page per layer
        "bytes": total,
        **times,
        "time_s": best,
        "gbps": _gbps(total, best),
    }


def _fit_direct(points: list[dict[str, Any]]) -> dict[str, float]:
    """``page_layers x latency + bytes / gbps``, the engine model's form (its latency is the cost
    of one page of one layer, K and V), by non-negative least squares on relative error; the
    one-copy-per-layer point pins the byte rate."""
    from harness.fit import fit_linear

    x = np.array([[p["page_layers"], p["bytes"]] for p in points])
    y = np.array([p["time_s"] for p in points])
    fit = fit_linear(x, y, ("latency_s", "s_per_byte"), [dict(p) for p in points])
    spb, lat = fit.coef["s_per_byte"], fit.coef["latency_s"]
    gbps = 1.0 / (spb * 1e9) if spb > 0 else math.inf
    return {"latency_s": lat, "latency_per_copy_s": lat / 2, "gbps": gbps, "mape": fit.mape}


def part_direct_05(ctx: Ctx) -> PartResult:
    spec = load_model_spec(ctx.sizes.compute_model)
    layers, heads, dim = _kv_dims(spec)
    n = ctx.sizes.direct_tokens
    shape = (2, layers, 2 * n, heads, dim)
    host = torch.zeros(shape, dtype=ctx.dtype, pin_memory=ctx.cuda)  # 0.5's host pool is pinned
    dev = torch.zeros((2, layers, n, heads, dim), dtype=ctx.dtype, device=ctx.device)
    points = [_direct_point(ctx, host, dev, page) for page in (*PAGE_SIZES, n)]  # n: one copy per layer and K/V
    fit = _fit_direct(points)
    res = PartResult(raw={"model": spec.name, "pinned": ctx.cuda, "points": points, "fit": fit})
    res.engine = {"direct_gbps": fit["gbps"], "direct_copy_latency_s": fit["latency_s"]}
    if not ctx.cuda:
        res.raw["note"] = "host copies between CPU tensors (no cudaMemcpyAsync without CUDA)"
    return res


# -- part 3: large pinned copies, each direction alone and with the other busy -------------------------
def _stream_copies(jobs: list[tuple[torch.Tensor, torch.Tensor, int]]) -> list[float]:
    """Run each (dst, src, count) job on its own stream from a common start; seconds per job."""
    start = torch.cuda.Event(enable_timing=True)
    start.record()
    ends = []
    for dst, src, count in jobs:
        stream = torch.cuda.Stream()
        stream.wait_event(start)
        with torch.cuda.stream(stream):
            for _ in range(count):
                dst.copy_(src, non_blocking=True)
            end = torch.cuda.Event(enable_timing=True)
            end.record()
        ends.append(end)
    torch.cuda.synchronize()
    return [start.elapsed_time(e) / 1e3 for e in ends]


def _median_runs(fn: Callable[[], list[float]], reps: int) -> list[float]:
    fn()
    runs = [fn() for _ in range(reps)]
    return [statistics.median(r[i] for r in runs) for i in range(len(runs[0]))]


def part_bidirectional(ctx: Ctx) -> PartResult:
    if not ctx.cuda:
        return PartResult(status=NO_CUDA)
    nbytes, reps = ctx.sizes.bulk_bytes, ctx.sizes.reps
    host_src = torch.empty(nbytes, dtype=torch.uint8, pin_memory=True)
    host_dst = torch.empty(nbytes, dtype=torch.uint8, pin_memory=True)
    dev_src = torch.empty(nbytes, dtype=torch.uint8, device=ctx.device)
    dev_dst = torch.empty(nbytes, dtype=torch.uint8, device=ctx.device)
    h2d, d2h = (dev_dst, host_src), (host_dst, dev_src)
    (h2d_s,) = _median_runs(lambda: _stream_copies([(*h2d, 3)]), reps)
    (d2h_s,) = _median_runs(lambda: _stream_copies([(*d2h, 3)]), reps)
    h2d_busy_s, _ = _median_runs(lambda: _stream_copies([(*h2d, 3), (*d2h, 6)]), reps)  # D2H outlasts H2D
    d2h_busy_s, _ = _median_runs(lambda: _stream_copies([(*d2h, 3), (*h2d, 6)]), reps)
    res = PartResult(raw={"bytes": nbytes, "copies": 3})
    res.hardware = {
        "pcie_h2d_gbps": _gbps(3 * nbytes, h2d_s),
        "pcie_d2h_gbps": _gbps(3 * nbytes, d2h_s),
        "bidirectional_h2d_factor": h2d_s / h2d_busy_s,
        "bidirectional_d2h_factor": d2h_s / d2h_busy_s,
    }
    res.raw.update({"h2d_s": h2d_s, "d2h_s": d2h_s, "h2d_while_d2h_s": h2d_busy_s, "d2h_while_h2d_s": d2h_busy_s})
    return res


# -- the synthetic decoder (overlap's compute load, graph_decode) --------------------------------------
@dataclass
class _Layer:
    wqkv: torch.Tensor
    wo: torch.Tensor
    wgu: torch.Tensor
    wdown: torch.Tensor
    n1: torch.Tensor
    n2: torch.Tensor


def _rms(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    return x * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + 1e-6).to(x.dtype) * w


class SyntheticDecoder:
    """Random weights with a model's shapes: the matmuls of a prefill (the overlap's compute load)
    and one batch-1 decode step over a static KV cache. The decode step allocates nothing that
    depends on data and never syncs the host, so it can be captured as a CUDA graph."""

    def __init__(self, spec: ModelSpec, device: torch.device, dtype: torch.dtype, ctx_tokens: int) -> None:
        torch.manual_seed(0)
        self.spec = spec
        h, q, kv, inter = spec.hidden, spec.heads * spec.head_dim, spec.kv_heads * spec.head_dim, spec.intermediate

        def w(rows: int, cols: int) -> torch.Tensor:
            return torch.randn(rows, cols, device=device, dtype=dtype).mul_(rows**-0.5)

        ones = torch.ones(h, device=device, dtype=dtype)
        self.layers = [
            _Layer(w(h, q + 2 * kv), w(q, h), w(h, 2 * inter), w(inter, h), ones, ones) for _ in range(spec.layers)
        ]
        self.norm, self.lm_head = ones, w(h, spec.vocab)
        self.cache = torch.randn(spec.layers, 2, spec.kv_heads, ctx_tokens, spec.head_dim, device=device, dtype=dtype)
        angle = (ctx_tokens - 1) / (
            10000.0 ** (torch.arange(0, spec.head_dim, 2, device=device).float() / spec.head_dim)
        )
        self.cos = torch.cat([angle.cos(), angle.cos()]).to(dtype)
        self.sin = torch.cat([angle.sin(), angle.sin()]).to(dtype)
        self.pos = ctx_tokens - 1  # the step writes its K/V into the last slot (static: graph replays do too)

    def prefill_layer(self, layer: int, x: torch.Tensor) -> torch.Tensor:
        """A prefill layer's matmuls for ``x`` (tokens, hidden); attention itself is left out."""
        lw, q, inter = self.layers[layer], self.spec.heads * self.spec.head_dim, self.spec.intermediate
        x = x + (x @ lw.wqkv)[:, :q] @ lw.wo
        gu = x @ lw.wgu
        return x + (F.silu(gu[:, :inter]) * gu[:, inter:]) @ lw.wdown

    def _rope(self, t: torch.Tensor) -> torch.Tensor:
        half = t.shape[-1] // 2
        return t * self.cos + torch.cat([-t[..., half:], t[..., :half]], dim=-1) * self.sin

    def decode_step(self, x: torch.Tensor) -> torch.Tensor:
        """One batch-1 decode step from hidden state ``x`` (1, hidden): the next token id."""
        s = self.spec
        q, kv, group = s.heads * s.head_dim, s.kv_heads * s.head_dim, s.heads // s.kv_heads
        for layer, lw in enumerate(self.layers):
            qkv = _rms(x, lw.n1) @ lw.wqkv
            qv, k, v = qkv.split([q, kv, kv], dim=-1)
            self.cache[layer, 0, :, self.pos].copy_(self._rope(k.view(s.kv_heads, s.head_dim)))
            self.cache[layer, 1, :, self.pos].copy_(v.view(s.kv_heads, s.head_dim))
            qg = self._rope(qv.view(s.kv_heads, group, s.head_dim)).unsqueeze(0)  # the group folded onto its KV head
            att = F.scaled_dot_product_attention(
                qg, self.cache[layer, 0].unsqueeze(0), self.cache[layer, 1].unsqueeze(0)
            )
            x = x + att.reshape(1, q) @ lw.wo
            gu = _rms(x, lw.n2) @ lw.wgu
            x = x + (F.silu(gu[:, : s.intermediate]) * gu[:, s.intermediate :]) @ lw.wdown
        return (_rms(x, self.norm) @ self.lm_head).argmax(dim=-1)


# -- part 4: per-layer side-stream H2D against a prefill-sized compute load ----------------------------
def _overlap_runs(ctx: Ctx, dec: SyntheticDecoder, x: torch.Tensor, host: torch.Tensor, dev: torch.Tensor) -> dict:
    """Seconds of: compute alone, load alone, both independent (each one's time), and dependent
    (layer l's compute waits for layer l's copy)."""
    layers = len(dec.layers)

    def compute() -> None:
        y = x
        for layer in range(layers):
            y = dec.prefill_layer(layer, y)

    def run(with_compute: bool, with_load: bool, dependent: bool) -> list[float]:
        start, side = torch.cuda.Event(enable_timing=True), torch.cuda.Stream()
        start.record()
        side.wait_event(start)
        done = []
        with torch.cuda.stream(side):
            for layer in range(layers if with_load else 0):
                dev[layer].copy_(host[layer], non_blocking=True)
                done.append(torch.cuda.Event())
                done[-1].record()
            load_end = torch.cuda.Event(enable_timing=True)
            load_end.record()
        y = x
        for layer in range(layers if with_compute else 0):
            if dependent:
                torch.cuda.current_stream().wait_event(done[layer])
            y = dec.prefill_layer(layer, y)
        end = torch.cuda.Event(enable_timing=True)
        end.record()
        torch.cuda.synchronize()
        return [start.elapsed_time(end) / 1e3, start.elapsed_time(load_end) / 1e3]

    reps = ctx.sizes.reps
    return {
        "compute_s": _median_runs(lambda: run(True, False, False), reps)[0],
        "load_s": _median_runs(lambda: run(False, True, False), reps)[1],
        "independent_s": _median_runs(lambda: run(True, True, False), reps),  # [compute, load]
        "dependent_s": _median_runs(lambda: run(True, True, True), reps)[0],
        "compute_only_check_s": ctx.timed(compute),
    }


def _overlap_point(ctx: Ctx, dec: SyntheticDecoder, n: int, host: torch.Tensor, dev: torch.Tensor) -> dict:
    x = torch.randn(n, dec.spec.hidden, device=ctx.device, dtype=ctx.dtype)
    r = _overlap_runs(ctx, dec, x, host, dev)
    compute, load, layers = r["compute_s"], r["load_s"], len(dec.layers)
    model = max(compute, load) + load / layers
    return {
        "compute_tokens": n,
        **r,
        "compute_slowdown_while_copying": r["independent_s"][0] / compute,
        "h2d_factor_while_computing": load / r["independent_s"][1],
        "overlap_model_s": model,  # max(compute, load) + load / L
        "overlap_measured_s": r["dependent_s"],
        "overlap_measured_over_model": r["dependent_s"] / model,
    }


def part_overlap(ctx: Ctx) -> PartResult:
    if not ctx.cuda:
        return PartResult(status=NO_CUDA)
    dec = ctx.get_decoder()
    s, n = dec.spec, ctx.sizes.overlap_load_tokens
    shape = (s.layers, 2, n, s.kv_heads, s.head_dim)
    host = torch.zeros(shape, dtype=ctx.dtype, pin_memory=True)
    dev = torch.empty(shape, dtype=ctx.dtype, device=ctx.device)
    points = [_overlap_point(ctx, dec, tokens, host, dev) for tokens in ctx.sizes.compute_tokens]
    layer_bytes = host[0].numel() * host.element_size()
    return PartResult(raw={"model": s.name, "load_tokens": n, "layer_bytes": layer_bytes, "points": points})


# -- part 5: a CUDA-graph decode step next to the eager one -------------------------------------------
def _capture(dec: SyntheticDecoder, x: torch.Tensor) -> tuple[Any, torch.Tensor]:
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up off the default stream, as the CUDA-graph docs ask
        for _ in range(3):
            dec.decode_step(x)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = dec.decode_step(x)
    return graph, out


def part_graph_decode(ctx: Ctx) -> PartResult:
    dec, steps = ctx.get_decoder(), ctx.sizes.decode_steps
    x = torch.randn(1, dec.spec.hidden, device=ctx.device, dtype=ctx.dtype)
    eager_s = ctx.timed(lambda: [dec.decode_step(x) for _ in range(steps)]) / steps
    res = PartResult(raw={"model": dec.spec.name, "batch": 1, "context_tokens": ctx.sizes.decode_ctx})
    res.raw["eager_step_s"] = eager_s
    if not ctx.cuda:
        res.raw["graph"] = NO_CUDA
        return res
    eager_out = dec.decode_step(x).clone()
    graph, out = _capture(dec, x)
    graph_s = ctx.timed(lambda: [graph.replay() for _ in range(steps)]) / steps
    res.raw.update({"graph_step_s": graph_s, "eager_over_graph": eager_s / graph_s})
    res.raw["graph_matches_eager"] = bool(torch.equal(out, eager_out))
    return res


# -- part 6: 0.5's kernel backend: one gather kernel per layer over pinned memory ----------------------
class _CudaArray:
    """A CUDA view of pinned host memory (zero-copy: with unified addressing the host pointer is
    valid on the device), through ``__cuda_array_interface__``; as int64 so a warp reads 256 bytes."""

    def __init__(self, pinned: torch.Tensor) -> None:
        self.keep = pinned
        self.__cuda_array_interface__ = {
            "shape": tuple(pinned.shape),
            "typestr": "<i8",
            "data": (pinned.data_ptr(), False),
            "version": 2,
            "strides": None,
        }


def _as_words(t: torch.Tensor) -> torch.Tensor:
    """``t``'s bytes as int64 words on its last axis (head_dim x dtype must be a multiple of 8)."""
    return t.view(torch.int64)


def _uva_gather_gbps(ctx: Ctx, host: torch.Tensor, layer_axis: int, n: int) -> tuple[float, bool]:
    """One index_select kernel per layer reading pinned ``host`` in place; (GB/s, result checked)."""
    words = _as_words(host)
    view = torch.as_tensor(_CudaArray(words), device=ctx.device)
    tokens = host.shape[2 if layer_axis == 1 else 1]
    idx = torch.randperm(tokens)[:n].sort().values
    idx_dev = idx.to(ctx.device)
    layers = host.shape[layer_axis]
    words.select(layer_axis, layers - 1).random_()  # the checked layer: a wrong address cannot pass as zeros
    out = torch.empty((2, n, *words.shape[3:]), dtype=torch.int64, device=ctx.device)

    def gather() -> None:
        for layer in range(layers):
            torch.index_select(view.select(layer_axis, layer), 1, idx_dev, out=out)

    seconds = ctx.timed(gather)
    checked = bool(torch.equal(out.cpu(), torch.index_select(words.select(layer_axis, layers - 1), 1, idx)))
    return _gbps(out.numel() * 8 * layers, seconds), checked


def _staged_gbps(ctx: Ctx, host: torch.Tensor, n: int) -> float:
    """Per layer: CPU index_select into one of two pinned staging buffers, then one async copy."""
    layers = host.shape[1]
    idx = torch.randperm(host.shape[2])[:n].sort().values
    bufs = [torch.empty((2, n, *host.shape[3:]), dtype=host.dtype, pin_memory=ctx.cuda) for _ in range(2)]
    dev = torch.empty((layers, 2, n, *host.shape[3:]), dtype=host.dtype, device=ctx.device)
    events: list[Any] = [None, None]

    def load() -> None:
        for layer in range(layers):
            b = layer % 2
            if events[b] is not None:
                events[b].synchronize()  # the copy that read this buffer is done
            torch.index_select(host[:, layer], 1, idx, out=bufs[b])
            dev[layer].copy_(bufs[b], non_blocking=ctx.cuda)
            if ctx.cuda:
                events[b] = torch.cuda.Event()
                events[b].record()

    return _gbps(dev.numel() * dev.element_size(), ctx.timed(load))


def part_kernel_05(ctx: Ctx) -> PartResult:
    spec = load_model_spec(ctx.sizes.compute_model)
    layers, heads, dim = _kv_dims(spec)
    n = ctx.sizes.kernel_tokens
    layer_first = torch.zeros((2, layers, 2 * n, heads, dim), dtype=ctx.dtype, pin_memory=ctx.cuda)
    res = PartResult(raw={"model": spec.name, "tokens": n, "staged_gbps": _staged_gbps(ctx, layer_first, n)})
    if not ctx.cuda:
        res.raw["uva"] = NO_CUDA
        return res
    page_first = torch.zeros((2, 2 * n, layers, heads, dim), dtype=ctx.dtype, pin_memory=True)
    rates: dict[str, float] = {}
    for layout, host, axis in (("layer_first", layer_first, 1), ("page_first", page_first, 2)):
        try:
            rates[layout], res.raw[f"{layout}_checked"] = _uva_gather_gbps(ctx, host, axis, n)
        except Exception as exc:  # noqa: BLE001 - recorded; the other layout and parts go on
            res.raw[f"{layout}_error"] = _one_line(exc)
    res.raw["uva_gbps"] = rates
    if rates:
        res.engine = {"kernel_gbps": rates}
    if len(rates) < 2:
        res.status = "partial: " + "; ".join(v for k, v in res.raw.items() if k.endswith("_error"))
    return res


# -- driver -----------------------------------------------------------------------------------------
PARTS: tuple[tuple[str, Callable[[Ctx], PartResult]], ...] = (
    ("path_04", part_path_04),
    ("direct_05", part_direct_05),
    ("bidirectional", part_bidirectional),
    ("overlap", part_overlap),
    ("graph_decode", part_graph_decode),
    ("kernel_05", part_kernel_05),
)


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text[:300]}"


def _header(ctx: Ctx, dry_run: bool) -> dict[str, Any]:
    return {
        "format": FORMAT,
        "device": ctx.device.type,
        "device_name": torch.cuda.get_device_name(ctx.device) if ctx.cuda else platform.processor() or "cpu",
        "torch": torch.__version__,
        "python": platform.python_version(),
        "dry_run": dry_run,
        "measured_at": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "command": "python -m real.engine_bench " + " ".join(sys.argv[1:]),
        **dict.fromkeys(ENGINE_PARAMS),
        "hardware": dict.fromkeys(HARDWARE_PARAMS),
        "parts": {},
        "raw": {},
    }


def _plain(value: Any) -> Any:
    """YAML-safe: numpy and torch scalars as floats, inf as null."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, str):
        return str(value)  # torch.__version__ is a str subclass yaml cannot represent
    if isinstance(value, (bool, int)) or value is None:
        return value
    number = float(value)
    return number if math.isfinite(number) else None


def write_profile(profile: dict[str, Any], out: Path) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    path, tmp = out / PROFILE_NAME, out / f".{PROFILE_NAME}.tmp"
    head = "# engine profile from real.engine_bench (docs/real_backend.md); read by engine.measured=PATH\n"
    tmp.write_text(head + yaml.safe_dump(_plain(profile), sort_keys=False))
    tmp.replace(path)
    return path


def _free(ctx: Ctx, keep_decoder: bool) -> None:
    if not keep_decoder:
        ctx.decoder = None
    gc.collect()
    if ctx.cuda:
        torch.cuda.empty_cache()


def run(ctx: Ctx, out: Path, dry_run: bool, budget_s: float, only: set[str] | None = None) -> dict[str, Any]:
    """Every part in order, the profile rewritten after each; returns the profile."""
    profile, t0 = _header(ctx, dry_run), time.perf_counter()
    for i, (name, fn) in enumerate(PARTS):
        used = time.perf_counter() - t0
        if only is not None and name not in only:
            profile["parts"][name] = "skipped: not selected"
        elif used > budget_s:
            profile["parts"][name] = f"skipped: time budget ({used:.0f} s used of {budget_s:.0f} s)"
        else:
            print(f"engine_bench: {name} ...", flush=True)
            t_part = time.perf_counter()
            try:
                res = fn(ctx)
                profile.update({k: v for k, v in res.engine.items() if v is not None})
                profile["hardware"].update(res.hardware)
                profile["raw"][name] = {**res.raw, "wall_s": time.perf_counter() - t_part}
                profile["parts"][name] = res.status
            except Exception as exc:  # noqa: BLE001 - one part's failure is recorded, the rest go on
                traceback.print_exc()
                profile["parts"][name] = f"failed: {_one_line(exc)}"
            print(f"engine_bench: {name}: {profile['parts'][name]} ({time.perf_counter() - t_part:.1f} s)", flush=True)
        _free(ctx, keep_decoder=any(n in ("overlap", "graph_decode") for n, _ in PARTS[i + 1 : i + 2]))
        profile["wall_s"] = time.perf_counter() - t0
        write_profile(profile, out)
    return profile


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m real.engine_bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default=None, help="cuda or cpu (default: cuda if available)")
    p.add_argument("--out", type=Path, required=True, help=f"folder for {PROFILE_NAME}")
    p.add_argument("--dry-run", action="store_true", help="tiny shapes (CPU tests)")
    p.add_argument("--budget-s", type=float, default=240.0, help="parts not started by then are skipped")
    p.add_argument(
        "--parts", default=None, help=f"comma list of parts to run (default all: {', '.join(n for n, _ in PARTS)})"
    )
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    names = {n for n, _ in PARTS}
    only = set(args.parts.split(",")) if args.parts else None
    if device.split(":")[0] not in ("cuda", "cpu"):
        print(f"engine_bench: error: --device={device}: use cuda or cpu", file=sys.stderr)
        return 2
    if device.startswith("cuda") and not torch.cuda.is_available():
        print(
            f"engine_bench: error: --device={device}: no CUDA device here (torch {torch.__version__})", file=sys.stderr
        )
        return 2
    if only is not None and only - names:
        print(
            f"engine_bench: error: --parts: unknown {sorted(only - names)[0]!r}; valid: {', '.join(names)}",
            file=sys.stderr,
        )
        return 2
    ctx = Ctx(torch.device(device), DRY_SIZES if args.dry_run else GPU_SIZES)
    profile = run(ctx, args.out, args.dry_run, args.budget_s, only)
    print(f"engine_bench: wrote {args.out / PROFILE_NAME} in {profile['wall_s']:.1f} s")
    failed = [n for n, s in profile["parts"].items() if s.startswith("failed")]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
