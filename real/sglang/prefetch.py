"""Proactive load-back and status-aware holding on SGLang's scheduler (KVFLOW.md 2.5-2.6).

SGLang 0.5.23 has no prefetch API, so a prefetch is its own HiCache load-back: ``load_back(node)``
commits GPU slots to the node and queues the copy, ``ready_to_load_host_cache()`` (the cache
controller's ``start_loading``) starts it at once on the load stream. The slots are visible in the
tree before the copy lands, and a batch that merely *matches* those nodes does not wait on the
copy's event: any waiting request whose prompt reaches into a loading prefix is held out of the
waiting queue until the load is acknowledged.

"Loading" means: the node is still in ``cache.ongoing_load_back``. That set changes only in
``loading_check``, whose completion count is all-reduced (MIN) over the TP group, so every rank
holds and releases the same requests at the same step (a rank-local ``event.query()`` would not).
A prefetch never takes the last load slot's check away from SGLang: it starts only while
``has_free_load_back_slot()`` (the controller has a bounded ring of layer-done counters).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

logger = logging.getLogger(__name__)


@dataclass
class Inflight:
    node_id: Any
    tokens: list[int]  # the prefix being loaded, from the root
    ready_tokens: int  # leading tokens already on the GPU when the load started
    user: tuple[str, str]


def _reaches(prompt: Sequence[int], load: Inflight) -> bool:
    """True if ``prompt`` shares more than the ready part of the loading prefix."""
    k = load.ready_tokens + 1
    return len(prompt) >= k and len(load.tokens) >= k and list(prompt[:k]) == load.tokens[:k]


class PrefetchGate:
    """Tracks prefetch loads in flight and keeps requests that need them out of the schedule."""

    def __init__(self, cache: Any, max_prefetch: int = 4) -> None:
        self.cache = cache
        self.max_prefetch = max_prefetch
        self.inflight: dict[Any, Inflight] = {}
        self.issued = 0
        self.held_steps = 0  # request-steps spent held (a stall counter for logs and tests)

    # ----- status ---------------------------------------------------------------------------
    def reap(self) -> list[Inflight]:
        """Forget loads that SGLang has acknowledged; returns them."""
        done = [f for f in self.inflight.values() if f.node_id not in self.cache.ongoing_load_back]
        for f in done:
            del self.inflight[f.node_id]
        return done

    def is_held(self, req: Any) -> bool:
        prompt = req.origin_input_ids
        return any(_reaches(prompt, f) for f in self.inflight.values())

    def hold(self, queue: list) -> list[tuple[int, Any]]:
        """Remove held requests from ``queue`` in place; returns (index, request) to put back."""
        if not self.inflight:
            return []
        held = [(i, r) for i, r in enumerate(queue) if self.is_held(r)]
        if held:
            held_ids = {id(r) for _, r in held}
            queue[:] = [r for r in queue if id(r) not in held_ids]
            self.held_steps += len(held)
        return held

    @staticmethod
    def release(queue: list, held: list[tuple[int, Any]]) -> None:
        """Put held requests back at their old positions (relative to what is still waiting)."""
        for index, req in held:
            queue.insert(min(index, len(queue)), req)

    # ----- issuing --------------------------------------------------------------------------
    def has_capacity(self) -> bool:
        cache = self.cache
        return (
            len(self.inflight) < self.max_prefetch
            and cache.cache_controller is not None
            and cache.has_free_load_back_slot()
        )

    def try_prefetch(self, user: tuple[str, str], key: Any) -> bool:
        """Load ``key``'s CPU-only tail to the GPU in the background, if it fits without evicting
        anything needed as soon. Returns True when a load started."""
        from sglang.srt.mem_cache.base_prefix_cache import MatchPrefixParams

        cache = self.cache
        if not self.has_capacity():
            return False
        match = cache.match_prefix(MatchPrefixParams(key=key))
        node_id = match.best_match_node
        if match.host_hit_length <= 0 or node_id in cache.ongoing_load_back:
            return False  # already on the GPU (or nothing cached), or being loaded
        if not cache.prefetch_fits(node_id, match.host_hit_length):
            return False
        if not cache.load_back(node_id):
            return False
        cache.ready_to_load_host_cache()  # start the copy now, not with the next batch
        tokens = list(key.token_ids[: len(key)])
        self.inflight[node_id] = Inflight(node_id, tokens, match.device_prefix_len, user)
        self.issued += 1
        logger.debug("kvflow prefetch %s: %d tokens", user, match.host_hit_length)
        return True


def around_get_new_batch_prefill(original: Callable[..., Any], scheduler: Any, *args: Any, **kwargs: Any) -> Any:
    """AROUND hook on ``Scheduler.get_new_batch_prefill``: read new hints, hold requests whose
    prefix is loading, schedule, put them back, then start prefetches for next-step agents."""
    cache = getattr(scheduler, "tree_cache", None)
    gate = getattr(cache, "gate", None)
    if not isinstance(gate, PrefetchGate):
        return original(scheduler, *args, **kwargs)
    for req in scheduler.waiting_queue:
        cache.ingest(req)
    gate.reap()
    held = gate.hold(scheduler.waiting_queue)
    try:
        result = original(scheduler, *args, **kwargs)
    finally:
        gate.release(scheduler.waiting_queue, held)
    cache.prefetch_next()
    return result
