"""What SGLang 0.4.4 counts as a hit (engine=sglang_0.4: count_match_hits, count_insert_hits,
chunk_inserts; docs/engines.md), each mechanism on a tiny hand-built case with exact counts."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from harness.engines import conf_engine, load_engine
from harness.setup import data_path
from kvflow.build import build_engine
from kvflow.engine import Engine, Request
from kvflow.ops import Offload
from sim.runner import load_conf, simulate

MECHANISMS = ("count_match_hits", "count_insert_hits", "chunk_inserts")


def core(gpu_tokens: int = 200, chunk_tokens: int = 1024, **flags: bool) -> Engine:
    """HiCache on sglang_0.4 with only the named hit-count mechanisms on (the others off)."""
    model = load_engine(conf_engine("sglang_0.4"))
    path = dataclasses.replace(data_path(model), **{m: flags.get(m, False) for m in MECHANISMS})
    return build_engine(
        load_conf("policy", "hicache"),
        gpu_tokens=gpu_tokens,
        cpu_tokens=4 * gpu_tokens,
        kv_bytes_per_token=1,
        chunk_tokens=chunk_tokens,
        h2d_gbps=1.0,
        data_path=path,
    )


def offloads(eng: Engine) -> list[int]:
    """Tokens of each backup queued since the last call; every op is acknowledged at once."""
    out = []
    for op in eng.take_ops():
        if isinstance(op, Offload):
            out.append(op.tokens)
        eng.complete_op(op, 0.0)
    return out


def run_step(eng: Engine) -> Any:
    """One iteration (one decode step at most)."""
    it = eng.step(0.0)
    assert it is not None
    eng.finish(it, 0.0, decode_steps_done=1 if it.decode else None)
    return it


def node_of(eng: Engine, tokens: list[int]) -> Any:
    match = eng.cache.tree.match(tokens, touch=False)
    assert match.gpu_tokens == len(tokens)
    return match.gpu_node


def test_the_mechanisms_are_sglang_04s_only() -> None:
    for name in ("sglang_0.5", "ideal"):
        model = load_engine(conf_engine(name))
        assert not any(getattr(model, m) for m in MECHANISMS), name
        eng = build_engine(load_conf("policy", "hicache"), gpu_tokens=64, cpu_tokens=64, kv_bytes_per_token=1,
                           chunk_tokens=16, h2d_gbps=1.0, data_path=data_path(model))  # fmt: skip
        assert not any(getattr(eng.config, m) for m in MECHANISMS)
        assert eng.cache.config.insert_is_hit
    model = load_engine(conf_engine("sglang_0.4"))
    assert all(getattr(model, m) for m in MECHANISMS)
    assert not data_path(model, chunk_inserts=False).chunk_inserts  # the real backend's choice


def test_insert_walks_count_a_prompt_is_backed_up_when_its_first_request_ends() -> None:
    """cache_unfinished_req after prefill: the new node gets 1 (the re-match); cache_finished_req's
    insert: 2 > write_through_threshold 1, backed up. Without the mechanism: not yet."""
    prompt = list(range(30))
    for counting, backed in ((True, [30]), (False, [])):
        eng = core(count_insert_hits=counting)
        eng.submit(Request("r1", "c", "a", prompt, 30, 2), 0.0)
        run_step(eng)  # prefill
        node = node_of(eng, prompt)
        assert node.hits == (1 if counting else 0)
        assert offloads(eng) == []
        run_step(eng)  # the 2nd output token: the request ends
        assert node.hits == (2 if counting else 0)
        assert offloads(eng) == backed


def test_a_request_waiting_for_memory_counts_a_hit_per_attempt() -> None:
    """Every scheduling attempt matches (and counts) the waiting request's prefix, admitted or not:
    the cached prompt is backed up while its request still waits."""
    prompt, other = list(range(20)), list(range(1000, 1030))
    for counting in (True, False):
        eng = core(gpu_tokens=100, count_match_hits=counting)
        eng.submit(Request("r1", "c", "a", prompt, 20, 1), 0.0)
        run_step(eng)  # r1: prefill and its only output token; node `prompt` cached (not backed up)
        eng.submit(Request("x", "c", "x", other, 30, 40), 0.0)
        run_step(eng)  # x holds 70 tokens while it decodes
        offloads(eng)
        eng.submit(Request("r2", "c", "a", prompt + [7, 7, 7, 7, 7], 20, 10), 0.0)
        node = node_of(eng, prompt)
        hits = []
        for _ in range(3):  # r2 needs 15 more tokens, 10 are free or evictable: it waits
            it = run_step(eng)
            assert not it.prefill and eng.waiting[0].request_id == "r2"
            hits.append(node.hits)
        assert hits == ([1, 2, 3] if counting else [0, 0, 0])
        assert eng.cache.match(prompt, touch=False).cpu_tokens == 0
        assert offloads(eng) == ([20] if counting else [])  # on the 1st failed match (insert counts as one)


def test_chunk_inserts_back_up_a_3_chunk_prompts_first_chunk_during_its_first_request() -> None:
    """A 48-token prompt in 16-token chunks: each non-last chunk's cache_unfinished_req inserts the
    prefix so far (walking the earlier chunks: +1 each) and re-matches it (+1 each, new node too)."""
    prompt = list(range(48))
    eng = core(chunk_tokens=16, count_insert_hits=True, chunk_inserts=True)
    eng.submit(Request("r1", "c", "a", prompt, 48, 2), 0.0)
    run_step(eng)  # chunk 1
    first = node_of(eng, prompt[:16])
    assert first.lock_ref == 1 and first.hits == 1 and offloads(eng) == []  # shareable, locked by r1
    run_step(eng)  # chunk 2: the insert walks chunk 1 (its 2nd count): backed up
    second = node_of(eng, prompt[:32])
    assert (first.hits, second.hits) == (3, 1)
    assert offloads(eng) == [16]
    assert eng.prefilling and eng.prefilling[0].request_id == "r1"  # still the first request's prefill
    run_step(eng)  # chunk 3 (last): chunk 2 reaches 2
    assert offloads(eng) == [16]
    third = node_of(eng, prompt)
    assert (first.hits, second.hits, third.hits) == (5, 3, 1)
    run_step(eng)  # the request ends: cache_finished_req's insert backs up chunk 3
    assert offloads(eng) == [16]
    assert eng.cache.gpu_used_tokens == 48 + 2  # the prompt's chunks and the 2-token output: nothing leaked
    eng.cache.check_invariants()


def test_without_chunk_inserts_the_prompt_joins_the_tree_at_its_end() -> None:
    prompt = list(range(48))
    eng = core(chunk_tokens=16, count_insert_hits=True)
    eng.submit(Request("r1", "c", "a", prompt, 48, 2), 0.0)
    run_step(eng)
    assert eng.cache.tree.match(prompt, touch=False).gpu_tokens == 0
    run_step(eng)
    run_step(eng)
    assert node_of(eng, prompt).hits == 1 and offloads(eng) == []


@pytest.mark.parametrize("policy", ["hicache", "kvflow"])
def test_sglang_04_runs_keep_the_invariants_with_chunked_prompts(policy: str) -> None:
    cfg = {
        "seed": 0,
        "hardware": load_conf("hardware", "a10g_paper"),
        "model": load_conf("model", "llama-3.1-8b"),
        "workload": {
            "name": "concurrent",
            "generator": "concurrent",
            "params": dict(
                workflows=6, agents=4, runs=2, warmup=1, fixed_tokens=300, dynamic_tokens=40, output_tokens=30
            ),
        },
        "policy": load_conf("policy", policy),
        "cache": {"gpu_capacity_tokens": 3000},
        "engine": {**conf_engine("sglang_0.4"), "chunk_tokens": 128},
        "sim": {"check_invariants": True},
    }
    summary = simulate(cfg).summary
    assert summary["requests"] > 0 and summary["d2h_bytes"] > 0
