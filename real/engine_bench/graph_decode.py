"""Part ``graph_decode``: a batch-1 decode step of the synthetic decoder, eager and replayed as a
CUDA graph."""

from __future__ import annotations

from typing import Any

import torch

from real.engine_bench.context import NO_CUDA, Ctx, PartResult
from real.engine_bench.decoder import SyntheticDecoder


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
