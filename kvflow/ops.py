"""Ops the core asks a backend to execute: the only way KV moves between tiers.

The core never copies or times anything; it hands out ops, the backend runs them (SimPy channels
or CUDA streams) and acknowledges each with ``KVCacheManager.complete(op)``. While an op is in
flight its node is LOADING/OFFLOADING and cannot be evicted.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from kvflow.radix import RadixNode

_op_ids = itertools.count()


@dataclass(eq=False, slots=True)
class Op:
    """Base class: one transfer or release of one radix node's KV."""

    node: RadixNode
    tokens: int
    bytes: int
    op_id: int = field(default_factory=_op_ids.__next__)

    @property
    def kind(self) -> str:
        return type(self).__name__.lower()


@dataclass(eq=False, slots=True)
class Load(Op):
    """CPU -> GPU copy (H2D). ``prefetch`` marks a proactive load (KVFlow 2.5) as opposed to a
    reactive load-back that a scheduled request waits on."""

    prefetch: bool = False


@dataclass(eq=False, slots=True)
class Offload(Op):
    """GPU -> CPU copy (D2H): a backup (write-through) or a demotion before the GPU copy is freed."""

    free_gpu_after: bool = False


@dataclass(eq=False, slots=True)
class Free(Op):
    """Release of GPU memory (no transfer); ``tier`` is "gpu" or "cpu". Zero cost for backends."""

    tier: str = "gpu"
