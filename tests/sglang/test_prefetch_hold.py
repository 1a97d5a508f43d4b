"""Status-aware holding (KVFLOW.md 2.6) with the HiCache controller mocked: a request whose prompt
reaches into a prefix that a prefetch is still loading is not scheduled until SGLang acknowledges
the load; other requests run meanwhile; issuing respects the controller's load slots."""

from __future__ import annotations

from array import array
from types import SimpleNamespace

from sglang.srt.mem_cache.radix_cache import RadixKey

from real.sglang.prefetch import PrefetchGate, around_get_new_batch_prefill

FIXED = list(range(100, 132))  # the next agent's fixed prompt: 16 tokens on the GPU, 16 in CPU only


class FakeCache:
    """The parts of KVFlowRadixCache / UnifiedRadixCache that the gate touches."""

    def __init__(self, slots: int = 3) -> None:
        self.ongoing_load_back: dict = {}
        self.cache_controller = SimpleNamespace(ack_load_queue=[], num_counters=slots)
        self.loads_started: list = []
        self.gate = PrefetchGate(self, max_prefetch=4)
        self.wanted: list = []

    def has_free_load_back_slot(self) -> bool:
        cc = self.cache_controller
        return len(cc.ack_load_queue) < cc.num_counters

    def match_prefix(self, params):
        return SimpleNamespace(best_match_node=7, host_hit_length=16, device_prefix_len=16)

    def prefetch_fits(self, node_id, need_tokens) -> bool:
        return True

    def load_back(self, node_id, mem_quota=None, req=None) -> bool:
        self.ongoing_load_back[node_id] = "locked"
        return True

    def ready_to_load_host_cache(self) -> int:
        self.cache_controller.ack_load_queue.append("ack")
        self.loads_started.append(len(self.cache_controller.ack_load_queue) - 1)
        return self.loads_started[-1]

    def ingest(self, req) -> None:
        pass

    def prefetch_next(self) -> int:
        started = sum(self.gate.try_prefetch(user, key) for user, key in self.wanted)
        self.wanted.clear()
        return started

    def finish_load(self, node_id) -> None:
        """What loading_check does once the (TP-reduced) ack count includes this load."""
        self.cache_controller.ack_load_queue.pop(0)
        del self.ongoing_load_back[node_id]


class FakeScheduler:
    def __init__(self, cache: FakeCache, queue: list) -> None:
        self.tree_cache = cache
        self.waiting_queue = queue
        self.scheduled: list[list[str]] = []

    def get_new_batch_prefill(self):  # admits everything it sees, as a roomy SGLang would
        self.scheduled.append([r.rid for r in self.waiting_queue])
        self.waiting_queue = []  # SGLang rebinds the list, it does not mutate it
        return self.scheduled[-1]


def req(rid: str, tokens: list[int]):
    return SimpleNamespace(rid=rid, origin_input_ids=array("q", tokens))


def step(scheduler: FakeScheduler):
    return around_get_new_batch_prefill(FakeScheduler.get_new_batch_prefill, scheduler)


def test_request_on_loading_prefix_waits_for_the_ack():
    cache = FakeCache()
    scheduler = FakeScheduler(cache, [])
    cache.wanted.append((("c1", "coder"), RadixKey(array("q", FIXED))))
    assert step(scheduler) == []  # empty queue; the hook then starts the prefetch
    assert cache.loads_started == [0] and 7 in cache.ongoing_load_back

    scheduler.waiting_queue = [
        req("coder", FIXED + [1, 2, 3]),
        req("other", [5, 6, 7]),
        req("same-gpu-part", FIXED[:16] + [9]),
    ]
    assert step(scheduler) == ["other", "same-gpu-part"]  # the coder request is held
    assert [r.rid for r in scheduler.waiting_queue] == ["coder"]
    assert step(scheduler) == []  # still loading: still held, nothing else to run
    assert cache.gate.held_steps == 2

    cache.finish_load(7)
    assert step(scheduler) == ["coder"]
    assert cache.gate.inflight == {}


def test_prefetch_respects_load_slots_and_limit():
    cache = FakeCache(slots=1)
    key = RadixKey(array("q", FIXED))
    assert cache.gate.try_prefetch(("c1", "a"), key)
    cache.match_prefix = lambda params: SimpleNamespace(best_match_node=8, host_hit_length=4, device_prefix_len=0)
    assert not cache.gate.try_prefetch(("c1", "b"), key)  # the only load slot is busy
    cache.finish_load(7)
    cache.gate.reap()
    cache.gate.max_prefetch = 0
    assert not cache.gate.try_prefetch(("c1", "b"), key)  # over the concurrency limit


def test_nothing_to_load_or_already_loading_is_skipped():
    cache = FakeCache()
    key = RadixKey(array("q", FIXED))
    cache.match_prefix = lambda params: SimpleNamespace(best_match_node=7, host_hit_length=0, device_prefix_len=32)
    assert not cache.gate.try_prefetch(("c1", "a"), key)  # already on the GPU
    cache.match_prefix = lambda params: SimpleNamespace(best_match_node=7, host_hit_length=16, device_prefix_len=16)
    cache.ongoing_load_back[7] = "a reactive load of another batch"
    assert not cache.gate.try_prefetch(("c1", "a"), key)
    assert cache.loads_started == []


def test_hook_passes_through_without_kvflow_cache():
    scheduler = FakeScheduler(SimpleNamespace(), [req("x", [1])])
    assert step(scheduler) == ["x"]
