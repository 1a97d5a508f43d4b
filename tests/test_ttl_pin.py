"""ttl_pin: a pausing session's prefix is pinned for its learned pause quantile, under a token
budget; pins end on resume, on the session's end and at expiry; LRU otherwise."""

from __future__ import annotations

import pytest

from kvflow.cache import CacheConfig, KVCacheManager
from kvflow.policies import make_policy
from tests.test_policies import order, put, seq


def make(**kwargs) -> KVCacheManager:
    return KVCacheManager(CacheConfig(gpu_capacity_tokens=1000, write_policy="none"), make_policy("ttl_pin", **kwargs))


def call(cache: KVCacheManager, client: str, tokens: list[int], start_s: float, end_s: float) -> None:
    cache.session_submit(client, (client, "main"), start_s)
    put(cache, tokens, 0, (client, "main"))
    cache.session_finish(client, "main", len(tokens), end_s)


def test_pinned_session_outranks_lru_until_it_expires():
    cache = make(quantile=0.5, prior_gap_s=10.0)
    put(cache, seq(900))  # no session: LRU
    call(cache, "a", seq(100), 0.0, 1.0)  # pinned until ~11 s (median of the 10 s prior)
    put(cache, seq(800))  # newer than a's prefix
    assert cache.policy.pinned["a"][0] == pytest.approx(11.0)
    assert order(cache) == [seq(900), seq(800), seq(100)]
    cache2 = make(quantile=0.5, prior_gap_s=10.0)
    call(cache2, "a", seq(100), 0.0, 1.0)
    put(cache2, seq(800))
    call(cache2, "b", seq(200), 12.0, 12.5)  # an event after a's expiry unpins a (its keys drop)
    assert "a" not in cache2.policy.pinned
    assert order(cache2) == [seq(100), seq(800), seq(200)]


def test_ttl_follows_the_sessions_pauses_and_is_capped():
    cache = make(quantile=0.9, max_ttl_s=50.0)
    t = 0.0
    for _ in range(30):  # a session that always pauses 20 s
        call(cache, "a", seq(100), t, t + 1.0)
        t += 21.0
    ttl = cache.policy.ttl_s("a", "main")
    assert 15.0 < ttl < 30.0
    for _ in range(30):  # now 500 s pauses: the TTL grows up to the cap
        call(cache, "a", seq(100), t, t + 1.0)
        t += 501.0
    assert cache.policy.ttl_s("a", "main") == 50.0


def test_budget_limits_pinned_tokens_and_resume_frees_it():
    cache = make(budget_tokens=6)
    call(cache, "a", seq(100), 0.0, 1.0)  # 4 tokens pinned
    call(cache, "b", seq(200), 0.0, 1.0)  # 4 more would exceed 6: not pinned
    policy = cache.policy
    assert set(policy.pinned) == {"a"} and policy.pinned_tokens == 4
    assert order(cache) == [seq(200), seq(100)]
    cache = make(budget_tokens=6)
    call(cache, "a", seq(100), 0.0, 1.0)
    cache.session_submit("a", ("a", "main"), 2.0)  # a resumes: its pin (and budget) is released
    assert cache.policy.pinned_tokens == 0
    call(cache, "b", seq(200), 2.0, 3.0)
    assert set(cache.policy.pinned) == {"b"}
    cache.session_end("b", 3.5)
    assert not cache.policy.pinned and cache.policy.pinned_tokens == 0


def test_bad_arguments():
    with pytest.raises(ValueError):
        make_policy("ttl_pin", quantile=1.0)
