"""LRU: evict the leaf accessed longest ago (SGLang RadixCache / HiCache default).

The template for a new policy: one ``Policy`` subclass, one ``key`` method, lowest key evicted
first (the contract is ``kvflow.policies.base.Policy``), plus ``conf/policy/<name>.yaml`` with
``eviction._target_: kvflow.policies.lru.LRUPolicy``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from kvflow.policies.base import Policy

if TYPE_CHECKING:
    from kvflow.radix import RadixNode


class LRUPolicy(Policy):
    name = "lru"

    def key(self, node: RadixNode) -> tuple:
        return (node.last_access,)
