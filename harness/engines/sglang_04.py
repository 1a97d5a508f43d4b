"""SGLang v0.4.4.post1-post3, the KVFlow paper's engine (ENGINES.md section 1).

Loads: per layer, an advanced-index gather on the CPU from the unpinned host pool into a fresh
tensor (``host_gather_gbps``), then one synchronous pageable ``.to(device)`` (``pageable_h2d_gbps``),
one after the other on the load thread: ``L x latency + bytes / gather + bytes / pageable``.
Backups: a GPU gather into a temporary, a pageable synchronous D2H and a CPU scatter on a Python
thread: ``L x latency`` is not paid (one copy per node, merged or split at 1000 tokens), so
``latency + bytes / pageable_d2h + bytes / gather``. The pageable rates are capped by the link.
Every forward launched while a load runs waits for it layer by layer (one global LayerDoneCounter),
and ``HiCacheController.load`` synchronizes the scheduler thread.
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

    def copy_link(self, direction: str, link_gbps: float, latency_s: float, model: ModelSpec) -> CopyLink:
        pageable = min(self.pageable_h2d_gbps if direction == "h2d" else self.pageable_d2h_gbps, link_gbps)
        copies = model.layers if direction == "h2d" else 1  # one synchronous copy per layer per load
        gbps = 1.0 / (1.0 / self.host_gather_gbps + 1.0 / pageable)  # gather, then copy: serial
        return CopyLink(fixed_s=copies * latency_s, gbps=gbps)
