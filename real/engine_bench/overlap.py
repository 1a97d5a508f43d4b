"""Part ``overlap``: per-layer side-stream H2D against a prefill-sized compute load, next to the
model ``max(compute, load) + load / L``."""

from __future__ import annotations

import torch

from real.engine_bench.context import NO_CUDA, Ctx, PartResult, median_runs
from real.engine_bench.decoder import SyntheticDecoder


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
        "compute_s": median_runs(lambda: run(True, False, False), reps)[0],
        "load_s": median_runs(lambda: run(False, True, False), reps)[1],
        "independent_s": median_runs(lambda: run(True, True, False), reps),  # [compute, load]
        "dependent_s": median_runs(lambda: run(True, True, True), reps)[0],
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
