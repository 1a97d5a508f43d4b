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

import numpy as np
import simpy

from kvflow.cpu_fill import add_cpu_prefix, cpu_fill_start
from sim.routers.prefix_aware import PrefixIndex

__all__ = ["RemoteLink", "RemoteTier", "RemoteTierConfig", "landing_range", "prefix_keys"]


_MIX = np.uint64(0x9E3779B97F4A7C15)  # odd: invertible mod 2^64
_MIX_INV = np.uint64(pow(0x9E3779B97F4A7C15, -1, 1 << 64))
_SPREAD = np.uint64(0xBF58476D1CE4E5B9)


def prefix_keys(tokens: Sequence[int], block_tokens: int) -> list[int]:
    """One key per whole block, key i standing for the first i + 1 blocks (as ``block_keys``), in
    numpy: a block's hash is a mixed dot product of its ids with powers of an odd constant, and key
    i the polynomial ``sum_j h_j x M^(i-j)`` mod 2^64, one cumulative sum (``M`` is invertible mod
    2^64). ~100x faster than a tuple hash per block on 100K-token prompts; a 64-bit hash, so two
    different prefixes share a key with odds of about 2^-64 per pair."""
    n = len(tokens) // block_tokens
    if n == 0:
        return []
    flat = np.frombuffer(tokens, dtype=f"={tokens.typecode}") if hasattr(tokens, "typecode") else np.asarray(tokens)
    ids = flat[: n * block_tokens].astype(np.uint64).reshape(n, block_tokens)
    with np.errstate(over="ignore"):
        powers = np.cumprod(np.full(block_tokens, _MIX, dtype=np.uint64), dtype=np.uint64)
        h = ids @ powers
        h ^= h >> np.uint64(31)
        h *= _SPREAD
        h ^= h >> np.uint64(29)
        up = np.cumprod(np.full(n, _MIX, dtype=np.uint64), dtype=np.uint64)  # M^(j+1)
        down = np.cumprod(np.full(n, _MIX_INV, dtype=np.uint64), dtype=np.uint64)  # M^-(j+1)
        keys = up * np.cumsum(h * down, dtype=np.uint64)
    return keys.tolist()  # type: ignore[no-any-return]


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
        self.ends_at_s = 0.0  # when the transfer on the link ends (while busy)

    def duration_s(self, nbytes: int) -> float:
        return self.latency_s + nbytes / self.rate

    def finish_s(self, nbytes: int, urgent: bool) -> float:
        """Seconds from now until a transfer of ``nbytes`` queued now would end: the one on the link,
        the urgent queue (and, for a background one, the background queue), then its own duration.
        Exact for an urgent one; for a background one a lower bound (a later urgent one passes it)."""
        wait_s = self.ends_at_s - self.env.now if self.busy else 0.0
        wait_s += sum(self.duration_s(n) for n, _ in self.urgent)
        if not urgent:
            wait_s += sum(self.duration_s(n) for n, _ in self.background)
        return wait_s + self.duration_s(nbytes)

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
        self.ends_at_s = self.env.now + t

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
        self._keys: dict[int, tuple[Sequence[int], list[int]]] = {}  # id(prompt) -> (prompt, its keys)

    def keys_of(self, tokens: Sequence[int]) -> list[int]:
        """The prompt's block keys, computed once between a request's submit and its write."""
        hit = self._keys.get(id(tokens))
        if hit is not None and hit[0] is tokens:
            return hit[1]
        keys = prefix_keys(tokens, self.block_tokens)
        self._keys[id(tokens)] = (tokens, keys)
        return keys

    @property
    def held_tokens_total(self) -> int:
        return len(self.index.keys) * self.block_tokens

    def forget(self, tokens: Sequence[int]) -> None:
        """Drop the prompt's memoized keys (a prefetch's prompt: no write of it follows)."""
        self._keys.pop(id(tokens), None)

    def held_blocks(self, keys: Sequence[int]) -> int:
        """Blocks of the chain ``keys`` the tier holds from its start: a binary search, as the index
        is prefix-closed (a block held means its parents are; ``PrefixIndex.matched_blocks`` walks)."""
        held = self.index.keys
        lo, hi = 0, len(keys)  # keys[:lo] held; keys[hi:] not
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if keys[mid - 1] in held:
                lo = mid
            else:
                hi = mid - 1
        return lo

    def held_tokens(self, tokens: Sequence[int]) -> int:
        """Length of the longest prefix of ``tokens`` the tier can serve now (whole blocks)."""
        return self.held_blocks(self.keys_of(tokens)) * self.block_tokens

    def write(self, replica: int, tokens: Sequence[int], on_done: Callable[[], None] | None = None) -> bool:
        """Write the blocks of prompt ``tokens`` the tier neither holds nor is writing; they become
        readable when the transfer ends (then ``on_done``). False when there was nothing to write."""
        keys = self.keys_of(tokens)
        self.forget(tokens)  # the request's last use of them
        mine = [k for k in keys[self.held_blocks(keys) :] if k not in self.pending]
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
            held = self.index.keys
            n = 0
            while n < len(keys) and (keys[n] in written or keys[n] in held):
                n += 1  # the chain's blocks now held from its start (a gap would break prefix closure)
            self.index.insert(keys[n - 1 :: -1] if n else [])  # deepest first: a parent is never older
            if on_done is not None:
                on_done()

        self.link.copy(nbytes, landed, urgent=False)
        return True

    def read(
        self, replica: int, tokens: Sequence[int], n_tokens: int, on_done: Callable[[], None], urgent: bool
    ) -> None:
        """Move ``n_tokens`` of ``tokens``' prefix to a replica; the blocks read count as used (LRU)."""
        keys = self.keys_of(tokens)
        held = keys[: self.held_blocks(keys)]
        self.index.insert(held[::-1])
        nbytes = n_tokens * self.kv_bytes_per_token
        counts = self.counts[replica]
        counts.read_bytes += nbytes
        counts.reads += 1
        self.link.copy(nbytes, on_done, urgent)

    def offer(self, cache: Any, tokens: Sequence[int], cached_tokens: int) -> tuple[int, int]:
        """Read-only: the token range ``fetch`` would move now, ``(0, 0)`` when none."""
        return landing_range(cache, tokens, self.held_tokens(tokens), cached_tokens)

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
        start, end = self.offer(cache, tokens, cached_tokens)
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


def landing_range(cache: Any, tokens: Sequence[int], source_tokens: int, cached_tokens: int) -> tuple[int, int]:
    """Where KV of ``tokens[:source_tokens]`` arriving from outside would land in a replica's CPU
    tier (``cache``: its ``KVCacheManager``) that caches ``cached_tokens`` of it: from the end of
    the path with CPU copies (``cpu_fill_start``) to the source's end, page aligned, at most the CPU
    tier's capacity; ``(0, 0)`` when nothing would (no gain, or a GPU-only node blocks the path)."""
    tree = cache.tree
    end = tree.page_floor(source_tokens)
    start = cpu_fill_start(cache, tokens, end) if end > cached_tokens else None
    if start is None or start >= end:
        return 0, 0
    end = min(end, start + tree.page_floor(cache.config.cpu_capacity_tokens))
    if end <= start:
        return 0, 0
    return start, end
