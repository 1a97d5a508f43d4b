"""Eviction candidates of one tier: ``TierHeap`` (``GpuHeap``, ``CpuHeap``), the heaps a
``kvflow.radix.RadixTree`` keeps, one per tier, with lazy invalidation (no scan of the tree)."""

from __future__ import annotations

import heapq
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from kvflow.radix import RadixNode


class TierHeap:
    """One tier's eviction candidates: a heap of ``(key, node_id, version, node)`` entries with lazy
    invalidation. An entry is live only while its version is the node's current one for this tier,
    the node is evictable from this tier, and its key is the policy's present key for the node; a
    key that rose without a refresh is re-filed when its entry surfaces, which is exact because it
    surfaces too early, never too late. ``GpuHeap`` / ``CpuHeap`` name the node fields they use."""

    __slots__ = ("entries", "key_of")

    def __init__(self, key_of: Callable[[RadixNode], tuple]) -> None:
        self.entries: list[tuple] = []
        self.key_of = key_of

    def push(self, node: RadixNode, key: tuple) -> None:
        """File ``node`` under ``key`` (a new version: older entries of the node go stale)."""
        raise NotImplementedError

    def top(self) -> tuple | None:
        """The first live entry (stale ones are dropped on the way), or None; nothing is evicted."""
        raise NotImplementedError

    def pop(self) -> RadixNode:
        """Take the entry ``top`` just returned (no second validation): its node is the victim."""
        raise NotImplementedError


class GpuHeap(TierHeap):
    """GPU victims: on the GPU, unlocked, no copy in flight, no child on the GPU."""

    __slots__ = ()

    def push(self, node: RadixNode, key: tuple) -> None:
        node.gpu_version += 1
        node.gpu_filed = key
        heapq.heappush(self.entries, (key, node.node_id, node.gpu_version, node))

    def top(self) -> tuple | None:
        heap, key_of = self.entries, self.key_of
        while heap:
            entry = heap[0]
            key, node_id, version, node = entry
            if version != node.gpu_version:
                heapq.heappop(heap)
                continue
            if not (
                node.gpu
                and node.inflight is None
                and node.lock_ref == 0
                and node.gpu_children == 0
                and node.parent is not None
            ):
                heapq.heappop(heap)
                node.gpu_filed = None
                continue
            fresh = key_of(node)
            if fresh != key:  # a key rose without a refresh: re-file it, never trust a stale key
                heapq.heapreplace(heap, (fresh, node_id, version, node))
                node.gpu_filed = fresh
                continue
            return entry
        return None

    def pop(self) -> RadixNode:
        node = heapq.heappop(self.entries)[3]
        node.gpu_filed = None
        return node


class CpuHeap(TierHeap):
    """CPU victims: a CPU copy, unlocked, no copy in flight, no child with a CPU copy, and either
    still on the GPU or a leaf (a CPU-only inner node keeps the path to its CPU children)."""

    __slots__ = ()

    def push(self, node: RadixNode, key: tuple) -> None:
        node.cpu_version += 1
        node.cpu_filed = key
        heapq.heappush(self.entries, (key, node.node_id, node.cpu_version, node))

    def top(self) -> tuple | None:
        heap, key_of = self.entries, self.key_of
        while heap:
            entry = heap[0]
            key, node_id, version, node = entry
            if version != node.cpu_version:
                heapq.heappop(heap)
                continue
            if not (
                node.cpu
                and node.inflight is None
                and node.lock_ref == 0
                and node.cpu_children == 0
                and node.parent is not None
                and (node.gpu or not node.children)
            ):
                heapq.heappop(heap)
                node.cpu_filed = None
                continue
            fresh = key_of(node)
            if fresh != key:
                heapq.heapreplace(heap, (fresh, node_id, version, node))
                node.cpu_filed = fresh
                continue
            return entry
        return None

    def pop(self) -> RadixNode:
        node = heapq.heappop(self.entries)[3]
        node.cpu_filed = None
        return node
