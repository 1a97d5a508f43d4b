"""Prefix-cache aware (SGLang router style): the router keeps, per replica, an approximate index of
the prompts it sent there, and sends a request to the replica whose index matches most of its
prompt when that match ratio is at least ``cluster.cache_threshold`` and the fleet is balanced
(max load - min load <= ``cluster.balance_abs_threshold``); otherwise to the least loaded replica.

The index is approximate on purpose, as SGLang's router tree is: it records what was *routed*, not
what the replica still caches (evictions are invisible to it). It is kept as chained hashes of
``cluster.block_tokens``-token blocks (a prefix of k blocks is one dict key), LRU-bounded to the
replica's GPU + CPU capacity in blocks, so one lookup costs O(prompt / block) hashes.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

from sim.routers.base import ReplicaView, Router, least_loaded


def block_keys(tokens: Sequence[int], block_tokens: int) -> list[int]:
    """One key per whole block of ``tokens``: key i stands for the prefix of i + 1 blocks."""
    keys, key = [], 0
    for start in range(0, len(tokens) - block_tokens + 1, block_tokens):
        key = hash((key, tuple(tokens[start : start + block_tokens])))
        keys.append(key)
    return keys


class PrefixIndex:
    """Prefix keys routed to one replica, least recently routed dropped first beyond ``capacity_blocks``."""

    def __init__(self, capacity_blocks: int) -> None:
        self.capacity_blocks = max(1, capacity_blocks)
        self.keys: OrderedDict[int, None] = OrderedDict()

    def matched_blocks(self, keys: Sequence[int]) -> int:
        n = 0
        for key in keys:
            if key not in self.keys:
                break
            n += 1
        return n

    def insert(self, keys: Sequence[int]) -> None:
        for key in keys:
            self.keys[key] = None
            self.keys.move_to_end(key)
        while len(self.keys) > self.capacity_blocks:
            self.keys.popitem(last=False)


class PrefixAwareRouter(Router):
    name = "prefix_aware"

    def __init__(self, options: Any = None) -> None:
        super().__init__(options)
        self.threshold = float(self.options.get("cache_threshold", 0.5))
        self.balance_abs = int(self.options.get("balance_abs_threshold", 32))
        self.block_tokens = int(self.options.get("block_tokens", 64))
        self.capacity_blocks = int(self.options.get("capacity_blocks", 1 << 20))
        self.indexes: list[PrefixIndex] = []

    def route(self, request: Any, replicas: Sequence[ReplicaView]) -> int:
        while len(self.indexes) < len(replicas):
            self.indexes.append(PrefixIndex(self.capacity_blocks))
        keys = block_keys(request.tokens, self.block_tokens)
        loads = [r.load() for r in replicas]
        chosen = least_loaded(replicas)
        if max(loads) - min(loads) <= self.balance_abs and keys:
            matched = [index.matched_blocks(keys) for index in self.indexes[: len(replicas)]]
            best = min(range(len(replicas)), key=lambda i: (-matched[i], loads[i], i))
            ratio = matched[best] * self.block_tokens / len(request.tokens)
            if ratio >= self.threshold:
                chosen = best
        self.indexes[chosen].insert(keys)
        return chosen
