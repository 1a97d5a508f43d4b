"""Round robin: request k goes to replica k mod N, whatever it holds or carries."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sim.routers.base import ReplicaView, Router


class RoundRobinRouter(Router):
    name = "round_robin"

    def __init__(self, options: Any = None) -> None:
        super().__init__(options)
        self._next = 0

    def route(self, request: Any, replicas: Sequence[ReplicaView]) -> int:
        index = self._next % len(replicas)
        self._next += 1
        return index
