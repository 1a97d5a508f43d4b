"""Part ``kernel_05``: 0.5's kernel backend, one SM gather kernel per layer reading pinned memory
(zero-copy), and the staged index_select + async copy variant."""

from __future__ import annotations

from typing import Any

import torch

from kvflow.model_spec import load_model_spec
from real.engine_bench.context import NO_CUDA, Ctx, PartResult, gbps, kv_dims, one_line


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


def _uva_gathergbps(ctx: Ctx, host: torch.Tensor, layer_axis: int, n: int) -> tuple[float, bool]:
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
    return gbps(out.numel() * 8 * layers, seconds), checked


def _stagedgbps(ctx: Ctx, host: torch.Tensor, n: int) -> float:
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

    return gbps(dev.numel() * dev.element_size(), ctx.timed(load))


def part_kernel_05(ctx: Ctx) -> PartResult:
    spec = load_model_spec(ctx.sizes.compute_model)
    layers, heads, dim = kv_dims(spec)
    n = ctx.sizes.kernel_tokens
    layer_first = torch.zeros((2, layers, 2 * n, heads, dim), dtype=ctx.dtype, pin_memory=ctx.cuda)
    res = PartResult(raw={"model": spec.name, "tokens": n, "staged_gbps": _stagedgbps(ctx, layer_first, n)})
    if not ctx.cuda:
        res.raw["uva"] = NO_CUDA
        return res
    page_first = torch.zeros((2, 2 * n, layers, heads, dim), dtype=ctx.dtype, pin_memory=True)
    rates: dict[str, float] = {}
    for layout, host, axis in (("layer_first", layer_first, 1), ("page_first", page_first, 2)):
        try:
            rates[layout], res.raw[f"{layout}_checked"] = _uva_gathergbps(ctx, host, axis, n)
        except Exception as exc:  # noqa: BLE001 - recorded; the other layout and parts go on
            res.raw[f"{layout}_error"] = one_line(exc)
    res.raw["uva_gbps"] = rates
    if rates:
        res.engine = {"kernel_gbps": rates}
    if len(rates) < 2:
        res.status = "partial: " + "; ".join(v for k, v in res.raw.items() if k.endswith("_error"))
    return res
