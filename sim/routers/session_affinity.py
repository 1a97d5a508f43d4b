"""Session affinity: a client's calls all go to ``crc32(client_id) mod N`` (sticky, load-blind).

crc32, not ``hash()``: Python salts string hashes per process, and a run must be reproducible."""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from typing import Any

from sim.routers.base import ReplicaView, Router


def client_replica(client_id: str, replicas: int) -> int:
    return zlib.crc32(client_id.encode()) % replicas


class SessionAffinityRouter(Router):
    name = "session_affinity"

    def route(self, request: Any, replicas: Sequence[ReplicaView]) -> int:
        return client_replica(request.client_id, len(replicas))
