"""What a router sees of a replica, and the router contract (docs/fleet.md).

A router picks one replica per request at submit time. It reads only a replica's load (requests
waiting or running there) and, for the cache-aware rules, how much of a prompt the replica's own
radix tree already holds (a read-only walk: the tree is neither split nor touched, so asking
changes nothing the replica will later decide).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol


class ReplicaView(Protocol):
    """One replica as a router may read it."""

    index: int

    def load(self) -> int:
        """Requests waiting or running on the replica (waiting + prefilling + loading + decoding)."""
        ...

    def active_tokens(self) -> int:
        """KV tokens (prompt + output) of the requests waiting or running on the replica."""
        ...

    def cached_prefix_tokens(self, tokens: Sequence[int]) -> int:
        """Length of the longest prefix of ``tokens`` cached on the replica (GPU or CPU tier)."""
        ...


class Router:
    """Chooses a replica index for each request; ``route`` may remember what it chose."""

    name = "router"

    def __init__(self, options: Mapping[str, Any] | None = None) -> None:
        self.options = dict(options or {})

    def route(self, request: Any, replicas: Sequence[ReplicaView]) -> int:
        raise NotImplementedError

    def predict(self, client_id: str, replicas: Sequence[ReplicaView]) -> int | None:
        """Where the client's next call would go now (None: this router cannot tell ahead); a fleet's
        remote-tier prefetch moves the client's prefix there (``cluster.remote_tier.prefetch``)."""
        return None

    def pin(self, client_id: str, index: int) -> None:
        """The client's prefix was prefetched to ``index``: send its next call there if the rule allows."""


def least_loaded(replicas: Sequence[ReplicaView]) -> int:
    """Fewest waiting + running requests; ties go to the lowest index."""
    return min(replicas, key=lambda r: (r.load(), r.index)).index
