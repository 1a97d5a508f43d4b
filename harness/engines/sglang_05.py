"""SGLang 0.5.x (0.5.23), the current engine (ENGINES.md section 2).

Pinned host pool, layout ``host_layout`` (page_first by default). Two IO backends:
- ``kernel``: SM gather/scatter kernels reading pinned memory, one launch per layer:
  ``L x latency + bytes / kernel_gbps[host_layout]`` (rates from H20, UNCONFIRMED on H100/H200);
- ``direct``: one ``cudaMemcpyAsync`` per page per layer (the device pool is layer-first):
  ``pages x L x direct_copy_latency_s + bytes / direct_gbps``, so small pages are slow.
A page is ``page_size`` tokens; a load or backup is whole pages. Loads are fenced per consumer
batch (only the batch that reads the KV waits), with no host synchronize.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar

from harness.engines.base import CopyLink, EngineModel
from kvflow.model_spec import ModelSpec

IO_BACKENDS = ("kernel", "direct")
HOST_LAYOUTS = ("layer_first", "page_first")


@dataclass(frozen=True, kw_only=True)
class SGLang05(EngineModel):
    KIND: ClassVar[str] = "sglang_0.5"

    io_backend: str  # IO_BACKENDS
    host_layout: str  # HOST_LAYOUTS: the host pool's layout (the device pool is layer_first)
    kernel_gbps: Mapping[str, float]  # kernel backend rate by host layout
    direct_gbps: float  # direct backend: bytes rate of cudaMemcpyAsync from pinned memory
    direct_copy_latency_s: float  # direct backend: cost of one cudaMemcpyAsync

    def copy_link(self, direction: str, link_gbps: float, latency_s: float, model: ModelSpec) -> CopyLink:
        if self.io_backend == "kernel":
            return CopyLink(model.layers * latency_s, min(self.kernel_gbps[self.host_layout], link_gbps))
        page_bytes = self.page_size * model.kv_bytes_per_token
        per_byte_s = model.layers * self.direct_copy_latency_s / page_bytes  # one copy per page per layer
        rate_gbps = min(self.direct_gbps, link_gbps)
        gbps = 1.0 / (per_byte_s * 1e9 + 1.0 / rate_gbps) if per_byte_s > 0 else rate_gbps
        return CopyLink(fixed_s=latency_s, gbps=gbps if math.isfinite(gbps) else rate_gbps)
