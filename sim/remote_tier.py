"""A shared remote KV tier (Mooncake store / LMCache pool) behind a fleet (``cluster.remote_tier``).

Every replica writes the prompts it computed and reads prefixes it lacks over one shared link. The
tier is an index of prompt-prefix blocks (``cluster.block_tokens`` tokens, chained hashes: key i
stands for the prefix of i + 1 blocks; ``sim.routers.prefix_aware.PrefixIndex``), LRU-bounded to
``capacity_tokens``. A chain is touched deepest block first, so a block is never more recent than
its parent and LRU drops a chain's tail before its head: what the index holds stays prefix-closed.
The link is one FIFO queue (reads a request waits for go before writes and prefetches at a copy
boundary); a transfer of ``b`` bytes takes ``latency_s + b / (bandwidth_gbps x 1e9)``. A block
becomes readable when its write has arrived.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import simpy

from kvflow.cpu_fill import add_cpu_prefix, cpu_fill_start
from sim.routers.prefix_aware import PrefixIndex, block_keys

__all__ = ["RemoteLink", "RemoteTier", "RemoteTierConfig"]


@dataclass(frozen=True)
class RemoteTierConfig:
    """``cluster.remote_tier``: pool size, the shared link, and workflow-aware prefetch."""

    capacity_tokens: int
    bandwidth_gbps: float  # GB/s (1e9 bytes per second), as the cost model's link rates
    latency_s: float = 0.0  # per transfer
    prefetch: bool = False  # workflow_aware: move a client's prefix to its next call's replica ahead

    @classmethod
    def from_config(cls, block: Mapping[str, Any] | None) -> RemoteTierConfig | None:
        if block is None:
            return None
        return cls(
            int(block["capacity_tokens"]),
            float(block["bandwidth_gbps"]),
            float(block.get("latency_s", 0.0)),
            bool(block.get("prefetch", False)),
        )


class RemoteLink:
    """One shared link: one transfer at a time, urgent ones first; byte, transfer and busy counters."""

    def __init__(self, env: simpy.Environment, bandwidth_gbps: float, latency_s: float) -> None:
        self.env, self.rate, self.latency_s = env, bandwidth_gbps * 1e9, latency_s
        self.urgent: deque[tuple[int, Callable[[], None]]] = deque()
        self.background: deque[tuple[int, Callable[[], None]]] = deque()
        self.busy = False
        self.busy_s = 0.0

    def duration_s(self, nbytes: int) -> float:
        return self.latency_s + nbytes / self.rate

    def copy(self, nbytes: int, on_done: Callable[[], None], urgent: bool) -> None:
        (self.urgent if urgent else self.background).append((nbytes, on_done))
        if not self.busy:
            self._start_next()

    def _start_next(self) -> None:
        queue = self.urgent or self.background
        if not queue:
            self.busy = False
            return
        nbytes, on_done = queue.popleft()
        self.busy = True
        t = self.duration_s(nbytes)
        self.busy_s += t

        def done(_event: Any) -> None:
            self._start_next()
            on_done()

        self.env.timeout(t).callbacks.append(done)


@dataclass
class RemoteCounts:
    """One replica's traffic with the remote tier."""

    read_bytes: int = 0
    reads: int = 0
    hit_tokens: int = 0  # prompt tokens a routed request found on the remote tier (placed in the CPU tier)
    prefetch_tokens: int = 0  # tokens a workflow-aware prefetch placed in the CPU tier
    write_bytes: int = 0
    writes: int = 0


class RemoteTier:
    """The pool's index and link; ``write`` and ``read`` queue transfers and count them per replica."""

    def __init__(
        self, env: simpy.Environment, config: RemoteTierConfig, block_tokens: int, kv_bytes_per_token: int, n: int
    ) -> None:
        self.config, self.block_tokens, self.kv_bytes_per_token = config, block_tokens, kv_bytes_per_token
        self.index = PrefixIndex(config.capacity_tokens // block_tokens)
        self.link = RemoteLink(env, config.bandwidth_gbps, config.latency_s)
        self.pending: set[int] = set()  # block keys whose write is on the link
        self.counts = [RemoteCounts() for _ in range(n)]

    @property
    def held_tokens_total(self) -> int:
        return len(self.index.keys) * self.block_tokens

    def held_tokens(self, tokens: Sequence[int]) -> int:
        """Length of the longest prefix of ``tokens`` the tier can serve now (whole blocks)."""
        return self.index.matched_blocks(block_keys(tokens, self.block_tokens)) * self.block_tokens

    def write(self, replica: int, tokens: Sequence[int], on_done: Callable[[], None] | None = None) -> bool:
        """Write the blocks of prompt ``tokens`` the tier neither holds nor is writing; they become
        readable when the transfer ends (then ``on_done``). False when there was nothing to write."""
        keys = block_keys(tokens, self.block_tokens)
        mine = [k for k in keys[self.index.matched_blocks(keys) :] if k not in self.pending]
        if not mine:
            return False
        self.pending.update(mine)
        nbytes = len(mine) * self.block_tokens * self.kv_bytes_per_token
        counts = self.counts[replica]
        counts.write_bytes += nbytes
        counts.writes += 1
        written = set(mine)

        def landed() -> None:
            self.pending.difference_update(written)
            present = [k for k in keys if k in written or k in self.index.keys]
            self.index.insert(present[::-1])  # deepest first: a parent is never older than its child
            if on_done is not None:
                on_done()

        self.link.copy(nbytes, landed, urgent=False)
        return True

    def read(
        self, replica: int, tokens: Sequence[int], n_tokens: int, on_done: Callable[[], None], urgent: bool
    ) -> None:
        """Move ``n_tokens`` of ``tokens``' prefix to a replica; the blocks read count as used (LRU)."""
        keys = block_keys(tokens, self.block_tokens)
        held = keys[: self.index.matched_blocks(keys)]
        self.index.insert(held[::-1])
        nbytes = n_tokens * self.kv_bytes_per_token
        counts = self.counts[replica]
        counts.read_bytes += nbytes
        counts.reads += 1
        self.link.copy(nbytes, on_done, urgent)

    def fetch(
        self,
        replica: int,
        cache: Any,
        tokens: Sequence[int],
        cached_tokens: int,
        urgent: bool,
        on_done: Callable[[], None],
    ) -> tuple[int, int]:
        """Start moving the part of ``tokens``' prefix the tier holds beyond what a replica caches
        (``cached_tokens``) into its CPU tier (``cache``: its ``KVCacheManager``), at most the CPU
        tier's capacity; placed when it arrives (what still fits then), then ``on_done()``. Returns
        the token range moving, ``(0, 0)`` when nothing is to move (``on_done`` is then not called)."""
        tree = cache.tree
        end = tree.page_floor(self.held_tokens(tokens))
        start = cpu_fill_start(cache, tokens, end) if end > cached_tokens else None
        if start is None or start >= end:
            return 0, 0
        end = min(end, start + tree.page_floor(cache.config.cpu_capacity_tokens))
        if end <= start:
            return 0, 0
        counts = self.counts[replica]

        def arrived() -> None:
            placed = add_cpu_prefix(cache, tokens, start, end)
            if urgent:
                counts.hit_tokens += placed
            else:
                counts.prefetch_tokens += placed
            on_done()

        self.read(replica, tokens, end - start, arrived, urgent)
        return start, end
