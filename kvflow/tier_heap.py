"""Eviction candidates of one tier: ``TierHeap`` (``GpuHeap``, ``CpuHeap``), the heaps a
``kvflow.radix.RadixTree`` keeps, one per tier, with lazy invalidation (no scan of the tree).

Entries are flat tuples ``(*key, KEY_END, node_id, version, node)``, in the order of ``(key,
node_id)`` pairs for any keys (see ``KEY_END``): an entry holding the key as a tuple costs a
nested tuple comparison at every sift step, about a third more time per heap operation.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from kvflow.radix import RadixNode


class _KeyEnd:
    """Closes a key inside a flat entry: equal only to itself and below every other value, so a key
    that is a prefix of another sorts first, as tuples do, and equal keys fall to the node id."""

    __slots__ = ()

    def __lt__(self, other: object) -> bool:
        return other is not self

    def __le__(self, other: object) -> bool:
        return True

    def __gt__(self, other: object) -> bool:
        return False

    def __ge__(self, other: object) -> bool:
        return other is self

    def __repr__(self) -> str:
        return "KEY_END"


KEY_END = _KeyEnd()


class TierHeap:
    """One tier's eviction candidates (flat entries, see the module), with lazy invalidation.
    An entry is live only while its version is the node's current one for this tier, the node is
    evictable from this tier, and its key is the policy's present key for the node; a key that
    rose without a refresh is re-filed when its entry surfaces, which is exact because it surfaces
    too early, never too late. The key of a node's live entry is its ``gpu_filed`` / ``cpu_filed``
    (None: no live entry); ``GpuHeap`` / ``CpuHeap`` name the node fields they use."""

    __slots__ = ("entries", "key_of")

    def __init__(self, key_of: Callable[[RadixNode], tuple]) -> None:
        self.entries: list[tuple] = []
        self.key_of = key_of

    def push(self, node: RadixNode, key: tuple) -> None:
        """File ``node`` under ``key`` (a new version: older entries of the node go stale)."""
        raise NotImplementedError

    def top(self) -> RadixNode | None:
        """The first live victim (stale entries are dropped on the way), or None; nothing is evicted."""
        raise NotImplementedError

    def pop(self) -> RadixNode:
        """Take the victim ``top`` just returned (no second validation)."""
        raise NotImplementedError

    def take(self, limit_key: tuple | None = None) -> RadixNode | None:
        """``top`` and ``pop`` in one: the first live victim, or None when there is none or (with
        ``limit_key``) its key is not below ``limit_key``."""
        raise NotImplementedError


class GpuHeap(TierHeap):
    """GPU victims: on the GPU, unlocked, no copy in flight, no child on the GPU."""

    __slots__ = ()

    def push(self, node: RadixNode, key: tuple) -> None:
        node.gpu_version += 1
        node.gpu_filed = key
        heapq.heappush(self.entries, (*key, KEY_END, node.node_id, node.gpu_version, node))

    def top(self) -> RadixNode | None:
        heap, key_of = self.entries, self.key_of
        while heap:
            first = heap[0]
            node = first[-1]
            if first[-2] != node.gpu_version:
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
            if fresh != node.gpu_filed:  # a key rose without a refresh: re-file it, never trust a stale key
                heapq.heapreplace(heap, (*fresh, KEY_END, first[-3], first[-2], node))
                node.gpu_filed = fresh
                continue
            return node
        return None

    def pop(self) -> RadixNode:
        node = heapq.heappop(self.entries)[-1]
        node.gpu_filed = None
        return node

    def take(self, limit_key: tuple | None = None) -> RadixNode | None:
        node = self.top()
        if node is None or (limit_key is not None and node.gpu_filed >= limit_key):  # type: ignore[operator]
            return None
        heapq.heappop(self.entries)
        node.gpu_filed = None
        return node


class CpuHeap(TierHeap):
    """CPU victims: a CPU copy, unlocked, no copy in flight, no child with a CPU copy, and either
    still on the GPU or a leaf (a CPU-only inner node keeps the path to its CPU children)."""

    __slots__ = ()

    def push(self, node: RadixNode, key: tuple) -> None:
        node.cpu_version += 1
        node.cpu_filed = key
        heapq.heappush(self.entries, (*key, KEY_END, node.node_id, node.cpu_version, node))

    def top(self) -> RadixNode | None:
        heap, key_of = self.entries, self.key_of
        while heap:
            first = heap[0]
            node = first[-1]
            if first[-2] != node.cpu_version:
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
            if fresh != node.cpu_filed:
                heapq.heapreplace(heap, (*fresh, KEY_END, first[-3], first[-2], node))
                node.cpu_filed = fresh
                continue
            return node
        return None

    def pop(self) -> RadixNode:
        node = heapq.heappop(self.entries)[-1]
        node.cpu_filed = None
        return node

    def take(self, limit_key: tuple | None = None) -> RadixNode | None:
        node = self.top()
        if node is None or (limit_key is not None and node.cpu_filed >= limit_key):  # type: ignore[operator]
            return None
        heapq.heappop(self.entries)
        node.cpu_filed = None
        return node
