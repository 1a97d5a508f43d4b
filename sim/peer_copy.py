"""Replica-to-replica KV copies in a fleet (``cluster.peer_copy``; docs/fleet.md): the peer links and
the choice of source.

When a request is handed to replica R and another replica S caches a longer prefix of its prompt
(GPU or CPU tier of S), the difference is copied from S into R's CPU tier over an RDMA/NVLink-like
link, and R gets the request when it has arrived (as for a remote-tier read). One link per source
replica (a copy occupies its source's NIC; the fabric behind it is taken as non-blocking, and a
destination's ingress is not modelled). Each link is a ``sim.remote_tier.RemoteLink``: one transfer
at a time, urgent (a request waits) before background (a think-time prefetch).

The rule: S is the replica with the longest cached prefix (ties: lowest index); it is a source only
when it holds at least one block (``cluster.block_tokens``) more than R. With a remote tier too,
each offer's range and finish time come from its own link's arithmetic (queue included); an offer
at least one block longer than the other wins, else the one that finishes first (a tie: the remote
tier). The copy lands under the CPU tier's rules (``kvflow.cpu_fill.add_cpu_prefix``: at most R's
CPU capacity, what still fits on arrival). Not modelled: S reading its own GPU or CPU copy out
(no PCIe time or lock on S), S evicting the prefix while it is copied (a copy is a snapshot).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import simpy

from kvflow.cpu_fill import add_cpu_prefix
from sim.remote_tier import RemoteLink, RemoteTier, landing_range

__all__ = ["PEER_FIELDS", "REMOTE", "Offer", "PeerCopy", "PeerCopyConfig", "choose"]

PEER_FIELDS = (  # replicas.csv columns added when cluster.peer_copy is on (PeerCounts)
    "peer_copies",
    "peer_bytes",
    "peer_tokens",
    "peer_sent_bytes",
)
REMOTE = -1  # an Offer's source when it is the remote tier


class CachingReplica(Protocol):
    """What the source choice reads of a replica (``sim.fleet.Replica``)."""

    index: int
    engine: Any

    def cached_prefix_tokens(self, tokens: Sequence[int]) -> int: ...


@dataclass(frozen=True)
class PeerCopyConfig:
    """``cluster.peer_copy``: the rate and fixed cost of each source replica's link."""

    bandwidth_gbps: float  # GB/s (1e9 bytes per second), as the cost model's link rates
    latency_s: float = 0.0  # per transfer

    @classmethod
    def from_config(cls, block: Mapping[str, Any] | None) -> PeerCopyConfig | None:
        if block is None:
            return None
        return cls(float(block["bandwidth_gbps"]), float(block.get("latency_s", 0.0)))


@dataclass(frozen=True)
class Offer:
    """A source's part of a prompt for one replica: ``tokens[start_tokens:end_tokens]``, done in
    ``finish_s`` from now (its link's queue, latency and bytes / rate)."""

    source: int  # a replica index, or REMOTE
    start_tokens: int
    end_tokens: int
    finish_s: float


def choose(peer: Offer | None, remote: Offer | None, block_tokens: int) -> Offer | None:
    """An offer at least one block longer than the other wins; else the one that finishes first
    (a tie: the remote tier). Within a block the two cover the same history (the remote tier holds
    whole blocks only, a peer page-aligned prefixes), so speed decides there."""
    if peer is None or remote is None:
        return peer or remote
    if abs(peer.end_tokens - remote.end_tokens) >= block_tokens:
        return peer if peer.end_tokens > remote.end_tokens else remote
    return peer if peer.finish_s < remote.finish_s else remote


@dataclass
class PeerCounts:
    """One replica's peer traffic: received as the destination (``copies``, ``bytes``, the tokens
    placed for a routed request or a prefetch) and sent as the source (``sent_bytes``)."""

    copies: int = 0
    bytes: int = 0
    tokens: int = 0
    prefetch_tokens: int = 0
    sent_bytes: int = 0


class PeerCopy:
    """The peer links (one per source replica), the source choice and the per-replica counters."""

    def __init__(
        self, env: simpy.Environment, config: PeerCopyConfig, block_tokens: int, kv_bytes_per_token: int, n: int
    ) -> None:
        self.config, self.block_tokens, self.kv_bytes_per_token = config, block_tokens, kv_bytes_per_token
        self.links = [RemoteLink(env, config.bandwidth_gbps, config.latency_s) for _ in range(n)]
        self.counts = [PeerCounts() for _ in range(n)]
        self.won = {"peer": 0, "remote": 0}  # both sources offered: which one was taken

    def offer(
        self, replicas: Sequence[CachingReplica], index: int, tokens: Sequence[int], cached_tokens: int, urgent: bool
    ) -> Offer | None:
        """The peer's offer for replica ``index`` (caching ``cached_tokens``): the other replica with
        the longest cached prefix (ties: lowest index), if that is at least one block longer."""
        best, best_tokens = -1, 0
        for r in replicas:
            if r.index != index:
                got = r.cached_prefix_tokens(tokens)
                if got > best_tokens:
                    best, best_tokens = r.index, got
        if best < 0 or best_tokens - cached_tokens < self.block_tokens:
            return None
        start, end = landing_range(replicas[index].engine.cache, tokens, best_tokens, cached_tokens)
        if end <= start:
            return None
        nbytes = (end - start) * self.kv_bytes_per_token
        return Offer(best, start, end, self.links[best].finish_s(nbytes, urgent))

    def move(
        self,
        replicas: Sequence[CachingReplica],
        index: int,
        tokens: Sequence[int],
        remote: RemoteTier | None,
        urgent: bool,
        on_done: Callable[[], None],
    ) -> tuple[int, int]:
        """Start moving the missing prefix of ``tokens`` into replica ``index``'s CPU tier from the
        chosen source (``choose``); ``on_done`` when it has landed. Returns the token range moving,
        ``(0, 0)`` when no source has one (``on_done`` is then not called)."""
        cache = replicas[index].engine.cache
        cached = replicas[index].cached_prefix_tokens(tokens)
        peer = self.offer(replicas, index, tokens, cached, urgent)
        far = None
        if remote is not None:
            start, end = remote.offer(cache, tokens, cached)
            nbytes = (end - start) * remote.kv_bytes_per_token
            far = Offer(REMOTE, start, end, remote.link.finish_s(nbytes, urgent)) if end > start else None
        pick = choose(peer, far, self.block_tokens)
        if peer is not None and far is not None:
            self.won["peer" if pick is peer else "remote"] += 1
        if pick is None:
            return 0, 0
        if pick is far:
            assert remote is not None
            return remote.fetch(index, cache, tokens, cached, urgent, on_done)
        self.copy(pick, index, cache, tokens, urgent, on_done)
        return pick.start_tokens, pick.end_tokens

    def copy(
        self, offer: Offer, index: int, cache: Any, tokens: Sequence[int], urgent: bool, on_done: Callable[[], None]
    ) -> None:
        """Queue ``offer`` on its source's link; on arrival place what still fits in ``cache``."""
        start, end = offer.start_tokens, offer.end_tokens
        nbytes = (end - start) * self.kv_bytes_per_token
        dest = self.counts[index]
        dest.copies += 1
        dest.bytes += nbytes
        self.counts[offer.source].sent_bytes += nbytes

        def arrived() -> None:
            placed = add_cpu_prefix(cache, tokens, start, end)
            if urgent:
                dest.tokens += placed
            else:
                dest.prefetch_tokens += placed
            on_done()

        self.links[offer.source].copy(nbytes, arrived, urgent)

    def columns(self, index: int) -> dict[str, int]:
        """A replica's ``PEER_FIELDS`` (replicas.csv, peer copies on only)."""
        c = self.counts[index]
        return dict(zip(PEER_FIELDS, (c.copies, c.bytes, c.tokens, c.sent_bytes), strict=True))

    def details(self) -> dict[str, Any]:
        """``details.peer_copy``: the link settings, traffic summed over replicas, the links' busy
        time summed, and how often each source won when both offered."""
        counts = self.counts
        return {
            "bandwidth_gbps": self.config.bandwidth_gbps,
            "latency_s": self.config.latency_s,
            "copies": sum(c.copies for c in counts),
            "bytes": sum(c.bytes for c in counts),
            "tokens": sum(c.tokens for c in counts),
            "prefetch_tokens": sum(c.prefetch_tokens for c in counts),
            "link_busy_s": sum(link.busy_s for link in self.links),
            "won": dict(self.won),
        }
