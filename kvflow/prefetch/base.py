"""The prefetcher interface the engine drives, and what every copying prefetcher shares.

The engine chooses one prefetcher from its config (``make_prefetcher``) and calls every hook
unconditionally; ``NoPrefetcher`` ignores them. A prefetcher sees the cache, the engine's hints
view (client -> agent -> known steps-to-execution; the engine updates it in place) and the engine
config, never the engine itself.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from kvflow.ops import Load
from kvflow.radix import RadixNode, RadixTree, User

if TYPE_CHECKING:
    from kvflow.cache import KVCacheManager
    from kvflow.engine import Request

HintsView = dict[str, dict[str, float]]  # client -> agent -> steps-to-execution (known values only)


class Prefetcher:
    """Hooks the engine calls; each is a no-op here."""

    def on_submit(self, request: Request, now_s: float) -> None:
        """A request arrived."""

    def on_hints(self, client_id: str) -> None:
        """The client's hints (in the hints view) just changed."""

    def on_finish(self, request: Request, now_s: float) -> None:
        """A request finished (its sequence is in the tree)."""

    def on_prefetch_done(self, op: Load) -> None:
        """The backend finished prefetch load ``op`` (the cache has already flipped its nodes)."""

    def before_step(self, now_s: float) -> None:
        """The engine is about to plan an iteration."""

    def on_client_end(self, client_id: str, now_s: float) -> None:
        """A workflow instance (session) ended: it submits nothing more."""

    def wake_at_s(self) -> float | None:
        """When this prefetcher next wants ``before_step`` called with nothing else happening
        (a load falls due); None: never on its own."""
        return None


class NoPrefetcher(Prefetcher):
    """No proactive loads (prefetch off, or no CPU tier to load from)."""


def cpu_run(tree: RadixTree, user: User) -> list[RadixNode]:
    """The CPU-only tail of ``user``'s fixed-prompt path, ready to load; [] when nothing to do
    (all on the GPU, unknown, or part of it already in flight)."""
    node = tree.user_nodes.get(user)
    if node is None or node.parent is None:
        return []
    run = []  # GPU residency is prefix-closed: the nodes off the GPU are the path's tail
    while node.parent is not None and not node.gpu:
        if node.inflight is not None or not node.cpu:
            return []
        run.append(node)
        node = node.parent
    run.reverse()
    return run


class CopyingPrefetcher(Prefetcher):
    """Loads fixed prompts from the CPU tier, at most ``CacheConfig.max_prefetch`` at a time."""

    def __init__(self, cache: KVCacheManager, hints: HintsView) -> None:
        self.cache, self.hints = cache, hints
        self.loads_in_flight = 0

    def slot_free(self) -> bool:
        return self.loads_in_flight < self.cache.config.max_prefetch  # (read live: tests lower it)

    def start(self, user: User, run: list[RadixNode]) -> list[Load]:
        """Queue the loads of ``run`` for ``user``, evicting only what is needed later."""
        cache = self.cache
        ops = cache.load(run, prefetch=True, limit_key=cache.policy.prefetch_limit(cache.tree.user_nodes[user]))
        cache.queue_ops(ops)
        self.loads_in_flight += len(ops)
        return ops

    def on_prefetch_done(self, op: Load) -> None:
        self.loads_in_flight -= 1
        self.slot_freed()

    def slot_freed(self) -> None:
        """One of this prefetcher's loads finished."""
