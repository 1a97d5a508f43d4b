"""Part ``path_04``: SGLang 0.4's load (per layer an advanced-index gather from an unpinned host
pool, one synchronous pageable copy, a GPU scatter) and its backup, for each model's KV shape."""

from __future__ import annotations

import gc
import statistics
from typing import Any

import torch

from kvflow.model_spec import load_model_spec
from real.engine_bench.context import Ctx, PartResult, gbps, kv_dims, one_line


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
    gather, copy = gbps(total, gather_s), gbps(total, copy_s)
    return {
        "tokens": n,
        "bytes": total,
        "host_gather_gbps": gather,
        "host_gather_contiguous_gbps": gbps(total, contiguous_s),
        "pageable_h2d_gbps": copy,
        "load_path_gbps": gbps(total, path_s),
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
        "pageable_d2h_gbps": gbps(total, d2h_s),
        "host_scatter_gbps": gbps(total, scatter_s),
        "backup_path_gbps": gbps(total, path_s),
    }


def _single_thread_gather(ctx: Ctx, pool: torch.Tensor, n: int) -> float:
    """The gather on one CPU thread (a load thread that gets one core)."""
    threads = torch.get_num_threads()
    idx = torch.randperm(pool.shape[2])[:n].sort().values
    total = 2 * n * pool.shape[3] * pool.shape[4] * pool.element_size() * pool.shape[1]
    torch.set_num_threads(1)
    try:
        return gbps(total, ctx.timed(lambda: [pool[:, layer, idx] for layer in range(pool.shape[1])]))
    finally:
        torch.set_num_threads(threads)


def _path_model(ctx: Ctx, name: str, single_thread: bool) -> dict[str, Any]:
    """Loads and backups of one model's KV shape at every token count."""
    layers, heads, dim = kv_dims(load_model_spec(name))
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
            errors.append(f"{name}: {one_line(exc)}")
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
