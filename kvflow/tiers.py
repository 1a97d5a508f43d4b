"""GPU and CPU capacity in tokens, and eviction from each tier (lowest policy key first).

GPU = tree nodes on (or loading onto) the GPU + tokens reserved by running requests; CPU = nodes
with a CPU copy (or one being written). Where a GPU victim goes (kept on the CPU, written back,
dropped) is the write policy's decision (``kvflow.write_policy``), handed in as ``demote``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from kvflow.ops import Free, Op
from kvflow.policies.base import Policy
from kvflow.radix import RadixNode, RadixTree

if TYPE_CHECKING:
    from kvflow.cache import CacheConfig, CacheStats


class CpuTier:
    """Host memory: reservations for CPU copies, and CPU eviction (the copy is dropped)."""

    def __init__(self, config: CacheConfig, tree: RadixTree, stats: CacheStats, ops: list[Op]) -> None:
        self.config, self.tree, self.stats, self.ops = config, tree, stats, ops
        self.used_tokens = 0

    @property
    def free_tokens(self) -> int:
        return self.config.cpu_capacity_tokens - self.used_tokens

    def alloc(self, n_tokens: int) -> bool:
        """Reserve ``n_tokens`` for a CPU copy, evicting as needed; all or nothing."""
        capacity = self.config.cpu_capacity_tokens  # (free space as plain arithmetic: a hot path)
        if capacity == 0:
            return False
        if capacity - self.used_tokens < n_tokens:
            self.evict(n_tokens - (capacity - self.used_tokens))
            if capacity - self.used_tokens < n_tokens:
                return False
        self.used_tokens += n_tokens
        return True

    def release(self, n_tokens: int) -> None:
        """Give back a reservation that will not be used."""
        self.used_tokens -= n_tokens

    def evict(self, n_tokens: int) -> int:
        """Drop CPU copies until ``n_tokens`` are free if possible; returns tokens freed."""
        if n_tokens <= 0:
            return 0
        freed = 0
        heap = self.tree.cpu_heap  # (built on this first use)
        while freed < n_tokens:
            node = heap.take()
            if node is None:
                break
            self.tree.leave_cpu(node)
            if self.config.free_ops:
                self.ops.append(Free(node, len(node.tokens), 0, tier="cpu"))
            self.used_tokens -= len(node.tokens)
            freed += len(node.tokens)
        self.stats.cpu_evicted_tokens += freed
        return freed


class GpuTier:
    """Device memory: reservations (all or nothing, or partial) and GPU eviction."""

    def __init__(
        self,
        config: CacheConfig,
        tree: RadixTree,
        stats: CacheStats,
        policy: Policy,
        demote: Callable[[RadixNode], int],
    ) -> None:
        self.config, self.tree, self.stats, self.policy = config, tree, stats, policy
        self.demote = demote  # takes a victim off the GPU, returns its tokens
        self.used_tokens = 0
        # the base hook is a no-op: skip the call per victim (eviction is hot) unless overridden
        hook = type(policy).observe_evict
        self.observe_evict = policy.observe_evict if hook is not Policy.observe_evict else None

    @property
    def free_tokens(self) -> int:
        return self.config.gpu_capacity_tokens - self.used_tokens

    def alloc(self, n_tokens: int, limit_key: tuple | None = None, partial: bool = False) -> int:
        """Reserve ``n_tokens``, evicting as needed. Returns the tokens granted: ``n_tokens`` or 0
        (all or nothing), or as many as possible when ``partial``. With ``limit_key`` only victims
        whose policy key is below it are evicted (a prefetch must not evict what is needed sooner)."""
        capacity = self.config.gpu_capacity_tokens  # (free space as plain arithmetic: a hot path)
        if capacity - self.used_tokens < n_tokens:
            self.evict(n_tokens - (capacity - self.used_tokens), limit_key)
        granted = min(n_tokens, max(capacity - self.used_tokens, 0))
        if granted < n_tokens and not partial:
            return 0
        self.used_tokens += granted
        return granted

    def release(self, n_tokens: int) -> None:
        self.used_tokens -= n_tokens
        assert self.used_tokens >= 0

    def evict(self, n_tokens: int, limit_key: tuple | None = None) -> int:
        """Free at least ``n_tokens`` GPU tokens if possible; returns tokens freed. With
        ``evict_partial`` a victim longer than needed gives up only its tail pages."""
        freed = 0
        tree, take, observe_evict = self.tree, self.tree.gpu_heap.take, self.observe_evict
        page, evict_partial = tree.page_size, self.config.evict_partial
        while freed < n_tokens:
            node = take(limit_key)
            if node is None:
                break
            if observe_evict is not None:
                observe_evict(node, tree.current_tick)
            need = tree.page_floor(n_tokens - freed + page - 1) if page > 1 else n_tokens - freed
            if evict_partial and need < len(node.tokens):
                tree.split(node, len(node.tokens) - need)
            n = self.demote(node)
            self.used_tokens -= n
            freed += n
        self.stats.gpu_evicted_tokens += freed
        return freed
