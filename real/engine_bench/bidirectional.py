"""Part ``bidirectional``: large pinned copies, each direction alone and with the other busy."""

from __future__ import annotations

import torch

from real.engine_bench.context import NO_CUDA, Ctx, PartResult, gbps, median_runs


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


def part_bidirectional(ctx: Ctx) -> PartResult:
    if not ctx.cuda:
        return PartResult(status=NO_CUDA)
    nbytes, reps = ctx.sizes.bulk_bytes, ctx.sizes.reps
    host_src = torch.empty(nbytes, dtype=torch.uint8, pin_memory=True)
    host_dst = torch.empty(nbytes, dtype=torch.uint8, pin_memory=True)
    dev_src = torch.empty(nbytes, dtype=torch.uint8, device=ctx.device)
    dev_dst = torch.empty(nbytes, dtype=torch.uint8, device=ctx.device)
    h2d, d2h = (dev_dst, host_src), (host_dst, dev_src)
    (h2d_s,) = median_runs(lambda: _stream_copies([(*h2d, 3)]), reps)
    (d2h_s,) = median_runs(lambda: _stream_copies([(*d2h, 3)]), reps)
    h2d_busy_s, _ = median_runs(lambda: _stream_copies([(*h2d, 3), (*d2h, 6)]), reps)  # D2H outlasts H2D
    d2h_busy_s, _ = median_runs(lambda: _stream_copies([(*d2h, 3), (*h2d, 6)]), reps)
    res = PartResult(raw={"bytes": nbytes, "copies": 3})
    res.hardware = {
        "pcie_h2d_gbps": gbps(3 * nbytes, h2d_s),
        "pcie_d2h_gbps": gbps(3 * nbytes, d2h_s),
        "bidirectional_h2d_factor": h2d_s / h2d_busy_s,
        "bidirectional_d2h_factor": d2h_s / d2h_busy_s,
    }
    res.raw.update({"h2d_s": h2d_s, "d2h_s": d2h_s, "h2d_while_d2h_s": h2d_busy_s, "d2h_while_h2d_s": d2h_busy_s})
    return res
