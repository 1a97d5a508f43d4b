"""Part ``direct_05``: 0.5's direct backend, one ``cudaMemcpyAsync`` per page per layer (K and V)
from a pinned layer-first pool, fitted to ``latency x copies + bytes / gbps``."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from kvflow.model_spec import load_model_spec
from real.engine_bench.context import PAGE_SIZES, Ctx, PartResult, gbps, kv_dims, one_line


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
            times["foreach_error"] = one_line(exc)  # type: ignore[assignment]
    best = min(v for v in times.values() if isinstance(v, float))
    return {
        "page_tokens": page,
        "copies": len(dsts),
        "page_layers": len(dsts) // 2,  # K and V are separate tensors: two copies per page per layer
        "bytes": total,
        **times,
        "time_s": best,
        "gbps": gbps(total, best),
    }


def fit_direct(points: list[dict[str, Any]]) -> dict[str, float]:
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
    layers, heads, dim = kv_dims(spec)
    n = ctx.sizes.direct_tokens
    shape = (2, layers, 2 * n, heads, dim)
    host = torch.zeros(shape, dtype=ctx.dtype, pin_memory=ctx.cuda)  # 0.5's host pool is pinned
    dev = torch.zeros((2, layers, n, heads, dim), dtype=ctx.dtype, device=ctx.device)
    points = [_direct_point(ctx, host, dev, page) for page in (*PAGE_SIZES, n)]  # n: one copy per layer and K/V
    fit = fit_direct(points)
    res = PartResult(raw={"model": spec.name, "pinned": ctx.cuda, "points": points, "fit": fit})
    res.engine = {"direct_gbps": fit["gbps"], "direct_copy_latency_s": fit["latency_s"]}
    if not ctx.cuda:
        res.raw["note"] = "host copies between CPU tensors (no cudaMemcpyAsync without CUDA)"
    return res
