"""Least loaded: the replica with the fewest waiting + running requests (ties: lowest index)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sim.routers.base import ReplicaView, Router, least_loaded


class LeastLoadedRouter(Router):
    name = "least_loaded"

    def route(self, request: Any, replicas: Sequence[ReplicaView]) -> int:
        return least_loaded(replicas)
