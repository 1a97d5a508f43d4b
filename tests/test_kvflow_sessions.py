"""``kvflow_sessions`` (issue 15): KVFlow's steps-to-execution order first; where steps tie (one
main agent per session), the sessions' predicted next call decides, as in ``pause_aware``."""

from __future__ import annotations

import random

from kvflow.cache import CacheConfig, KVCacheManager
from kvflow.policies import make_policy
from tests.test_policies import evictable_leaves, order, put, seq


def make() -> KVCacheManager:
    config = CacheConfig(gpu_capacity_tokens=100_000, write_policy="none")
    return KVCacheManager(config, make_policy("kvflow_sessions"))


def call(cache: KVCacheManager, client: str, agent: str, tokens: list[int], start_s: float, end_s: float) -> None:
    cache.session_submit(client, (client, agent), start_s)
    put(cache, tokens, len(tokens), (client, agent))
    cache.session_finish(client, agent, len(tokens), end_s)


def test_steps_to_execution_decide_before_sessions():
    """Agent ``far`` (3 steps away) of a session predicted to call soon still goes before agent
    ``near`` (1 step) of a session predicted to call late: KVFlow's order is the first component."""
    cache = make()
    call(cache, "soon", "far", seq(100), 0.0, 1.0)
    call(cache, "soon", "far", seq(100) + seq(150), 3.0, 4.0)  # learned pause 2 s
    call(cache, "late", "near", seq(200), 0.0, 1.0)
    call(cache, "late", "near", seq(200) + seq(250), 101.0, 102.0)  # learned pause 100 s
    cache.set_hints("soon", {"far": 3})
    cache.set_hints("late", {"near": 1})
    assert order(cache) == [seq(150), seq(100), seq(250), seq(200)]


def test_equal_steps_fall_back_to_the_sessions_predicted_calls():
    """Two coding-agent sessions, one main agent each, both 0 steps away: the one predicted to call
    last goes first (pause_aware's rule), not the least recently used one (KVFlow's tie-break)."""
    cache = make()
    call(cache, "slow", "main", seq(100), 0.0, 1.0)
    call(cache, "slow", "main", seq(100) + seq(110), 101.0, 102.0)  # pause 100 s; used last
    call(cache, "fast", "main", seq(200), 0.0, 1.0)
    call(cache, "fast", "main", seq(200) + seq(210), 3.0, 4.0)  # pause 2 s; used before slow
    cache.set_hints("slow", {"main": 0})
    cache.set_hints("fast", {"main": 0})
    assert cache.policy.resume_s["slow"] > cache.policy.resume_s["fast"]
    assert order(cache) == [seq(110), seq(100), seq(210), seq(200)]


def test_key_order_rule_holds_under_random_hints_and_session_events():
    """Random pauses, resumes, ends and hint changes: the heap's top is always the evictable leaf
    with the lowest current key (both hook families report what may drop)."""
    rng = random.Random(5)
    cache = make()
    clients = [f"c{i}" for i in range(5)]
    prompts = {c: seq(1000 * (i + 1), 4) for i, c in enumerate(clients)}
    running: set[str] = set()
    now = 0.0
    for _ in range(300):
        now += rng.expovariate(0.2)
        client = rng.choice(clients)
        if rng.random() < 0.2:
            cache.set_hints(client, {"main": rng.choice([0, 1, 2, None])})
        elif client in running:
            prompts[client] = prompts[client] + seq(rng.randrange(10**6, 2 * 10**6), 4)
            put(cache, prompts[client], len(prompts[client]) - 4, (client, "main"))
            cache.session_finish(client, "main", len(prompts[client]), now)
            running.discard(client)
        else:
            cache.session_submit(client, (client, "main"), now)
            running.add(client)
        leaves = evictable_leaves(cache)
        if leaves:
            top = cache.tree.gpu_heap.top()
            assert top is not None and cache.policy.key(top) == min(cache.policy.key(n) for n in leaves)
