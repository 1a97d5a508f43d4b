"""SGLang v0.4.4.post1-post3, the KVFlow paper's engine (ENGINES.md section 1).

Loads: per layer, an advanced-index gather on the CPU from the unpinned host pool into a fresh
tensor (``host_gather_gbps``), then one synchronous pageable ``.to(device)`` (``pageable_h2d_gbps``),
one after the other on the load thread: ``L x latency + bytes / gather + bytes / pageable``.
Backups: a GPU gather into a temporary, a pageable synchronous D2H and a CPU scatter on a Python
thread: ``L x latency`` is not paid (one copy per node, merged or split at 1000 tokens), so
``latency + bytes / pageable_d2h + bytes / gather``. The pageable rates are capped by the link.
Every forward launched while a load runs waits for it layer by layer (one global LayerDoneCounter),
and ``HiCacheController.load`` synchronizes the scheduler thread's stream. The counter is consulted in
``get_key_buffer`` (memory_pool.py:288-290), Python that a CUDA-graph replay does not run: a decode
batch of at most ``cuda_graph_bs`` requests (null: ServerArgs' default, 8 below 25,000 MiB of GPU
memory at TP < 4, else 160, server_args.py:226-234) is not gated (model_runner.py:936-943, cuda_graph_runner.py:511-520). Under the default overlap
scheduler the load's sync is on the scheduler's stream, not the forward's: ``scheduler_sync: false``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from harness.engines.base import CopyLink, EngineModel
from kvflow.model_spec import ModelSpec


@dataclass(frozen=True, kw_only=True)
class SGLang04(EngineModel):
    KIND: ClassVar[str] = "sglang_0.4"
    PAGED: ClassVar[bool] = False  # layout (2, L, size, H, D): page size 1 only

    host_gather_gbps: float  # CPU advanced-index gather (and backup scatter) rate
    pageable_h2d_gbps: float  # synchronous pageable copy, host -> device
    pageable_d2h_gbps: float  # synchronous pageable copy, device -> host
    cuda_graph_bs: int | None = None  # --cuda-graph-max-bs; None: ServerArgs' rule from GPU memory

    def cuda_graph_max_bs(self, gpu_memory_bytes: float) -> int:
        """ServerArgs.__post_init__ (server_args.py:226-234), TP 1: 8 below 25,000 MiB, else 160."""
        if self.cuda_graph_bs is not None:
            return self.cuda_graph_bs
        return 8 if gpu_memory_bytes / (1 << 20) < 25_000 else 160

    def copy_link(self, direction: str, link_gbps: float, latency_s: float, model: ModelSpec) -> CopyLink:
        pageable = min(self.pageable_h2d_gbps if direction == "h2d" else self.pageable_d2h_gbps, link_gbps)
        copies = model.layers if direction == "h2d" else 1  # one synchronous copy per layer per load
        gbps = 1.0 / (1.0 / self.host_gather_gbps + 1.0 / pageable)  # gather, then copy: serial
        return CopyLink(fixed_s=copies * latency_s, gbps=gbps)
