"""LRU: evict the leaf accessed longest ago (SGLang RadixCache / HiCache default).

The template for a new policy: one class, one ``key`` method, lowest key evicted first. A policy
never mutates the tree; hints arrive through ``set_hints`` and the cache re-keys affected nodes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from kvflow.radix import RadixNode, User


class LRUPolicy:
    name = "lru"
    uses_hints = False

    def key(self, node: "RadixNode") -> tuple:
        return (node.last_access,)

    def set_hints(self, steps: dict["User", float]) -> None:
        """LRU ignores workflow hints."""

    def prefetch_limit(self, node: "RadixNode") -> tuple | None:
        """Victims a prefetch for ``node`` may evict: LRU knows no future, so no bound."""
        return None
