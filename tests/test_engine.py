"""The clock-free scheduler driven by a toy backend (instant or delayed ops)."""

from __future__ import annotations

import random

import pytest

from kvflow.cache import CacheConfig, KVCacheManager
from kvflow.engine import Engine, EngineConfig, Request
from kvflow.ops import Load
from kvflow.policies import make_policy


def build(policy="kvflow", gpu=2000, cpu=6000, **engine_kw) -> Engine:
    cache = KVCacheManager(
        CacheConfig(gpu_capacity_tokens=gpu, cpu_capacity_tokens=cpu, write_policy="write_through" if cpu else "none"),
        make_policy(policy),
    )
    return Engine(cache, EngineConfig(chunk_tokens=256, load_back=bool(cpu), **engine_kw))


def drain(engine: Engine, t: float = 0.0, hold_ops: bool = False) -> tuple[list[Request], float]:
    """Run until idle; ops complete instantly unless held. Checks invariants every iteration."""
    done = []
    while engine.has_work():
        for op in [] if hold_ops else engine.take_ops():
            engine.complete_op(op, t)
        it = engine.step(t)
        if it is None:
            assert not hold_ops, "scheduler stuck with nothing in flight"
            continue
        t += 0.01
        done += engine.finish(it, t)
        engine.cache.check_invariants()
    for op in [] if hold_ops else engine.take_ops():  # backups queued by the last finish
        engine.complete_op(op, t)
    return done, t


def workflow_requests(rng: random.Random, runs: int = 3, agents: int = 4, fixed: int = 500):
    prompts = {a: [rng.randrange(50_000) for _ in range(fixed)] for a in range(agents)}
    for r in range(runs):
        for a in range(agents):
            yield Request(
                f"r{r}-{a}", "wf", f"agent{a}", prompts[a] + [rng.randrange(50_000) for _ in range(40)], fixed, 16
            )


@pytest.mark.parametrize(
    "policy,cpu,prefetch",
    [("lru", 0, False), ("lru", 6000, False), ("kvflow", 6000, True), ("clairvoyant", 6000, True)],
)
def test_tokens_conserved_and_capacity_respected(policy, cpu, prefetch):
    engine = build(policy, cpu=cpu, prefetch=prefetch)
    t = 0.0
    for _i, req in enumerate(workflow_requests(random.Random(1))):
        engine.submit(req, t)
        agent = int(req.agent_id[-1])
        engine.set_hints("wf", {f"agent{b}": float((b - agent) % 4) for b in range(4)}, t)
        done, t = drain(engine, t)
        (finished,) = done
        assert (
            finished.hit_gpu_tokens + finished.loaded_cpu_tokens + finished.recomputed_tokens == finished.prompt_tokens
        )
        assert finished.first_token_s <= finished.finish_s and finished.generated_tokens == 16


def test_kvflow_prefetch_turns_cpu_reloads_into_gpu_hits():
    stats = {}
    for policy, prefetch in (("lru", False), ("kvflow", True)):
        engine = build(policy, gpu=1300, prefetch=prefetch)
        hits = 0
        for req in workflow_requests(random.Random(2), runs=4):
            engine.submit(req, 0.0)
            agent = int(req.agent_id[-1])
            engine.set_hints("wf", {f"agent{b}": float((b - agent) % 4) for b in range(4)}, 0.0)
            (done,), _ = drain(engine)
            hits += done.hit_gpu_tokens
        stats[policy] = (hits, engine.cache.stats)
    assert stats["kvflow"][0] > stats["lru"][0]
    assert stats["kvflow"][1].prefetch_issued > 0 and stats["kvflow"][1].prefetch_used > 0


def test_chunked_prefill_respects_token_budget():
    engine = build("lru", gpu=5000, cpu=0)
    engine.submit(Request("big", "c", "a", list(range(1000)), 0, 4), 0.0)
    engine.submit(Request("small", "c", "b", list(range(5000, 5100)), 0, 4), 0.0)
    it = engine.step(0.0)
    assert sum(c.new_tokens for c in it.prefill) == 256 and not it.prefill[0].is_last
    engine.finish(it, 0.1)
    chunks = []
    while (it := engine.step(0.0)) is not None and it.prefill:
        assert sum(c.new_tokens for c in it.prefill) <= 256
        chunks += it.prefill
        engine.finish(it, 0.1)
    assert sum(c.new_tokens for c in chunks if c.request.request_id == "big") == 1000 - 256


def test_status_aware_skips_request_whose_prefix_is_loading():
    engine = build("kvflow", gpu=1000, cpu=4000, prefetch=True)
    prompt = list(range(600))
    engine.submit(Request("warm", "c", "a", prompt + [9_001], 600, 2), 0.0)
    drain(engine)
    engine.submit(Request("evictor", "c", "b", list(range(10_000, 10_900)), 0, 2), 0.0)  # pushes "a" to CPU
    drain(engine)
    assert engine.cache.tree.match(prompt, touch=False).gpu_tokens < 600
    engine.set_hints("c", {"a": 1, "b": 0}, 0.0)  # prefetch of a starts; hold the copy
    loads = [op for op in engine.take_ops() if isinstance(op, Load)]
    assert loads and all(op.prefetch for op in loads)
    engine.submit(Request("again", "c", "a", prompt + [9_002], 600, 2), 1.0)
    engine.submit(Request("other", "c", "x", list(range(20_000, 20_050)), 0, 2), 1.0)
    it = engine.step(1.0)
    assert [c.request.request_id for c in it.prefill] == ["other"]  # "again" skipped, not blocking
    engine.finish(it, 1.1)
    for op in loads:
        engine.complete_op(op, 2.0)
    it = engine.step(2.0)
    again = [c.request for c in it.prefill if c.request.request_id == "again"][0]
    assert again.hit_gpu_tokens == 600 and again.stalled_s == pytest.approx(1.0)


def test_request_that_can_never_fit_is_rejected_with_its_size():
    engine = build("lru", gpu=100, cpu=0)
    with pytest.raises(ValueError, match="needs 132 KV tokens but the GPU holds 100"):
        engine.submit(Request("huge", "c", "a", list(range(100)), 0, 32), 0.0)
