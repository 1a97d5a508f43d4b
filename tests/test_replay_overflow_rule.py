"""Where kvflow-replay and kvcache-simulator part, and why: the one rule for a prompt larger than
the free cache. kvcache-simulator protects only the blocks a request found cached, so once nothing
else can go, its next insertion evicts the request's own just-inserted last block and stops (the
cache ends one block short of full); ``sim.replay`` keeps every block that fit. Replaying with that
rule (public KVCacheManager calls only) reproduces kvcache-simulator's LRU token for token where
prompts exceed the cache; without it ours keeps a few more blocks (20,229,568 vs 20,225,984 hit
tokens at 2,048 blocks on these three sessions)."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import SHARED_DATA

from kvflow.cache import CacheConfig, KVCacheManager
from kvflow.policies import make_policy
from sim.replay import ReplayRequest, read_mooncake, replay
from traces.export import export_mooncake
from traces.importers import import_trace

SESSIONS = [SHARED_DATA / "weka" / n for n in ("trace_0010.json.gz", "trace_0254.json.gz", "trace_0277.json.gz")]


def lru_with_their_overflow_rule(requests: list[ReplayRequest], capacity_blocks: int) -> int:
    """LRU hit tokens over the second half, as ``sim.replay.replay`` but a prompt that does not fit
    gives back its last granted block (kvcache-simulator's eviction of its own unprotected tail)."""
    cache = KVCacheManager(CacheConfig(gpu_capacity_tokens=capacity_blocks, write_policy="none"), make_policy("lru"))
    warmup, hit_tokens = len(requests) // 2, 0
    for index, req in enumerate(requests):
        match = cache.match(req.keys)
        hit = match.gpu_tokens
        cache.lock(match.gpu_node)
        granted = cache.alloc_gpu(len(req.keys) - hit, partial=True)
        cache.unlock(match.gpu_node)
        if 0 < granted < len(req.keys) - hit:
            cache.release_gpu(1)
            granted -= 1
        cache.insert(req.keys[: hit + granted], granted, 0, None)
        if index >= warmup:
            assert req.unit_tokens is not None
            hit_tokens += sum(req.unit_tokens[:hit])
    return hit_tokens


def test_the_overflow_rule_is_the_whole_difference(tmp_path: Path) -> None:
    kcs = pytest.importorskip("kvcache_sim.simulator")
    from kvcache_sim.trace import parse_trace_file

    if not SESSIONS[0].exists():
        pytest.skip("shared weka data missing")
    path = tmp_path / "weka.mooncake.jsonl"
    export_mooncake(import_trace("weka", [str(p) for p in SESSIONS]), str(path))
    sweep = kcs.run_sweep(
        parse_trace_file(path, block_size=64),
        model_id="llama-3.1-8b",
        budgets_gib=[16],
        policies=["lru"],
        backend="python",
    )
    requests = read_mooncake(path, 64)
    point = sweep["points"][0]
    blocks, theirs = point["cacheBlocks"], point["results"]["lru"]["hitTokens"]
    assert max(len(r.keys) for r in requests) > blocks  # some prompt exceeds the cache: the rule matters
    assert lru_with_their_overflow_rule(requests, blocks) == theirs
    assert replay(requests, "lru", blocks)["hit_tokens"] > theirs  # ours keeps the blocks that fit
