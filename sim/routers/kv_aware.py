"""KV aware (NVIDIA Dynamo style): ask every replica how much of the prompt its own radix tree holds
(GPU or CPU tier; a read-only walk) and pick the highest
``score = cluster.overlap_weight x cached prefix blocks - active blocks``, where active blocks are the
KV tokens of the requests waiting or running there, both in ``cluster.block_tokens``-token blocks
(ties: fewer requests, then the lowest index)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sim.routers.base import ReplicaView, Router


class KVAwareRouter(Router):
    name = "kv_aware"

    def __init__(self, options: Any = None) -> None:
        super().__init__(options)
        self.overlap_weight = float(self.options.get("overlap_weight", 1.0))
        self.block_tokens = int(self.options.get("block_tokens", 64))

    def score(self, request: Any, replica: ReplicaView) -> float:
        overlap = replica.cached_prefix_tokens(request.tokens) // self.block_tokens
        return self.overlap_weight * overlap - replica.active_tokens() / self.block_tokens

    def route(self, request: Any, replicas: Sequence[ReplicaView]) -> int:
        return min(replicas, key=lambda r: (-self.score(request, r), r.load(), r.index)).index
