"""Ranking rules of lru / kvflow / clairvoyant (KVFLOW.md 2.3) on small hand-built trees."""

from __future__ import annotations

import pytest

from kvflow.cache import CacheConfig, KVCacheManager
from kvflow.policies import make_policy
from kvflow.radix import RadixNode


def make(policy: str, gpu: int = 1000) -> KVCacheManager:
    return KVCacheManager(CacheConfig(gpu_capacity_tokens=gpu, write_policy="none"), make_policy(policy))


def put(cache: KVCacheManager, tokens: list[int], fixed: int = 0, user=None):
    result = cache.match(tokens)
    granted = cache.alloc_gpu(len(tokens) - result.gpu_tokens)
    return cache.insert(tokens, granted, fixed, user)


def order(cache: KVCacheManager) -> list[list[int]]:
    """Evict everything one leaf at a time; returns the evicted leaves' tokens in order."""
    out, heap = [], cache.tree.gpu_heap
    while heap.top() is not None:
        node = heap.pop()
        out.append(list(node.tokens))
        cache.release_gpu(cache.writes.demote(node))
    return out


def evictable_leaves(cache: KVCacheManager) -> list[RadixNode]:
    """GPU leaves the cache could evict now (no GPU child, unlocked, nothing in flight): the nodes the
    GPU heap's top must be the lowest key of."""
    return [
        n
        for n in cache.tree.walk()
        if n.parent is not None and n.gpu and not n.gpu_children and not n.lock_ref and n.inflight is None
    ]


def seq(base: int, n: int = 4) -> list[int]:
    return list(range(base, base + n))


def test_lru_evicts_oldest_leaf_first():
    cache = make("lru")
    for base in (100, 200, 300):
        put(cache, seq(base))
    cache.match(seq(100))  # touch: now newest
    assert order(cache) == [seq(200), seq(300), seq(100)]


def test_kvflow_suffix_first_then_no_info_then_descending_steps():
    cache = make("kvflow")
    put(cache, seq(100) + seq(900), fixed=4, user=("c", "far"))  # fixed 100.., suffix 900..
    put(cache, seq(200), fixed=4, user=("c", "near"))
    put(cache, seq(300))  # no workflow info
    put(cache, seq(400), fixed=4, user=("c", "mid"))
    cache.set_hints("c", {"far": 5, "near": 1, "mid": 2})
    assert order(cache) == [seq(900), seq(300), seq(100), seq(400), seq(200)]


def test_kvflow_ties_break_by_lru():
    cache = make("kvflow")
    put(cache, seq(100), fixed=4, user=("c", "x"))
    put(cache, seq(200), fixed=4, user=("c", "y"))
    cache.match(seq(100))
    cache.set_hints("c", {"x": 2, "y": 2})
    assert order(cache) == [seq(200), seq(100)]


def test_kvflow_shared_prefix_takes_minimum_of_its_users():
    # two agents share a 4-token prefix; the shared node must rank as the *nearer* agent
    cache = make("kvflow")
    shared = seq(100)
    put(cache, shared + seq(500), fixed=8, user=("c", "soon"))
    put(cache, shared + seq(600), fixed=8, user=("c", "late"))
    put(cache, seq(700), fixed=4, user=("c", "mid"))
    cache.set_hints("c", {"soon": 1, "late": 9, "mid": 4})
    # late's private part, then mid, then soon's private part, then the shared node (min = 1)
    assert order(cache) == [seq(600), seq(700), seq(500), shared]


def test_kvflow_shared_across_two_concurrent_workflows():
    cache = make("kvflow")
    role = seq(100)
    put(cache, role + seq(500), fixed=4, user=("wf1", "coder"))
    put(cache, role + seq(600), fixed=4, user=("wf2", "coder"))
    put(cache, seq(800), fixed=4, user=("wf1", "tester"))
    cache.set_hints("wf1", {"coder": 7, "tester": 3})
    cache.set_hints("wf2", {"coder": 1})
    # suffixes first (both), then wf1's tester (3) before the role shared with wf2's coder (min 1)
    evicted = order(cache)
    assert evicted[:2] == [seq(500), seq(600)] or evicted[:2] == [seq(600), seq(500)]
    assert evicted[2:] == [seq(800), role]


def test_kvflow_rekeys_when_hints_change():
    cache = make("kvflow")
    put(cache, seq(100), fixed=4, user=("c", "a"))
    put(cache, seq(200), fixed=4, user=("c", "b"))
    cache.set_hints("c", {"a": 1, "b": 3})
    assert cache.tree.gpu_heap.top().tokens == seq(200)
    cache.set_hints("c", {"a": 3, "b": 1})
    assert order(cache) == [seq(100), seq(200)]


def test_locked_and_loading_nodes_are_never_victims():
    cache = make("kvflow")
    node = put(cache, seq(100), fixed=4, user=("c", "a"))
    put(cache, seq(200), fixed=4, user=("c", "b"))
    cache.lock(node)
    assert order(cache) == [seq(200)]
    cache.unlock(node)
    assert order(cache) == [seq(100)]


def test_clairvoyant_evicts_farthest_next_use():
    cache = make("clairvoyant")
    nodes = [put(cache, seq(b)) for b in (100, 200, 300)]
    for node, nxt in zip(nodes, (5, 50, 10)):
        node.next_use = nxt
        cache.tree.refresh(node)
    assert order(cache) == [seq(200), seq(300), seq(100)]


def test_clairvoyant_reads_user_next_use():
    cache = make("clairvoyant")
    put(cache, seq(100), fixed=4, user=("c", "a"))
    put(cache, seq(200), fixed=4, user=("c", "b"))
    cache.policy.set_next_use({("c", "a"): 9, ("c", "b"): 2})
    assert order(cache) == [seq(100), seq(200)]


def test_unknown_policy_lists_valid_names():
    with pytest.raises(
        ValueError,
        match="valid: clairvoyant, lru, kvflow, pause_aware, ttl_pin, kvflow_cost, kvflow_sessions, kvflow_gd, subagent_aware",
    ):
        make_policy("fifo")
