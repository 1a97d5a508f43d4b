"""Workflow aware: an agent's call goes where its client's previous call ran (its KV lives there),
unless that replica carries more than ``cluster.balance_abs_threshold`` requests above the least
loaded one; a client's first call, and an overloaded home, go to the least loaded replica (which
becomes the client's home). ``predict`` applies the same rule between calls, so a fleet with a remote
tier can prefetch a client's prefix to the replica its next call will run on, from the remote tier or
(``cluster.peer_copy``) from another replica (``pin`` makes that replica the home)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sim.routers.base import ReplicaView, Router, least_loaded


class WorkflowAwareRouter(Router):
    name = "workflow_aware"

    def __init__(self, options: Any = None) -> None:
        super().__init__(options)
        self.balance_abs = int(self.options.get("balance_abs_threshold", 32))
        self.home: dict[str, int] = {}

    def predict(self, client_id: str, replicas: Sequence[ReplicaView]) -> int:
        lightest = least_loaded(replicas)
        home = self.home.get(client_id)
        if home is None or replicas[home].load() - replicas[lightest].load() > self.balance_abs:
            return lightest
        return home

    def pin(self, client_id: str, index: int) -> None:
        self.home[client_id] = index

    def route(self, request: Any, replicas: Sequence[ReplicaView]) -> int:
        home = self.home[request.client_id] = self.predict(request.client_id, replicas)
        return home
