"""The ideal engine: every copy free and instant, no gating, no sync (issue 14 item 3).

The latency floor "every prefix already on the GPU, no copy cost". Capacity choice: the GPU pool
stays the run's (the requests running need their KV on the GPU in any engine, so admission still
waits for memory), but the host pool is unbounded and every node is backed up on its first use at
no cost, so a prefix computed once is never computed again and reaching it costs nothing. With a
policy that has a CPU tier and load-back (hicache, kvflow, ...), no engine and no policy can
recompute less or copy faster; a policy without one (sglang) gets no benefit from it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

from harness.engines.base import CopyLink, EngineModel
from kvflow.model_spec import ModelSpec


@dataclass(frozen=True, kw_only=True)
class IdealEngine(EngineModel):
    KIND: ClassVar[str] = "ideal"

    def copy_link(self, direction: str, link_gbps: float, latency_s: float, model: ModelSpec) -> CopyLink:
        return CopyLink(fixed_s=0.0, gbps=math.inf)
