"""SGLang's Python tree core, driven through the plug-in, evicts in exactly the order that the
core predicts (kvflow.cache.KVCacheManager with the same policy), and ``lru`` matches SGLang's."""

from __future__ import annotations

import random

import pytest
from sgl_kit import Driver, build_cache

from kvflow.cache import CacheConfig, KVCacheManager
from kvflow.ops import Free
from kvflow.policies import make_policy
from kvflow.step_graph import StepGraph
from real.sglang.hints import WorkflowHint

GRAPH = StepGraph.from_dict(
    {
        "agents": {"planner": {}, "coder": {"aggregation": "OR"}, "reviewer": {}, "tester": {}},
        "edges": [["planner", "coder"], ["coder", "reviewer"], ["reviewer", "coder"], ["reviewer", "tester"]],
    }
)
SYSTEM = list(range(1000, 1016))  # shared by every agent of every client
ROLES = {a: list(range(2000 + 100 * i, 2008 + 100 * i)) for i, a in enumerate(GRAPH.agents)}


class CoreModel:
    """The prediction: the same requests and hints through the policy core's own cache."""

    def __init__(self, policy: str) -> None:
        self.cache = KVCacheManager(
            CacheConfig(gpu_capacity_tokens=1 << 20, write_policy="none", evict_partial=False), make_policy(policy)
        )

    def request(self, tokens: list[int], hint: WorkflowHint | None) -> None:
        if hint is not None:
            self.cache.set_hints(hint.client_id, hint.steps)
        need = len(tokens) - self.cache.match(tokens, touch=False).gpu_tokens
        assert self.cache.alloc_gpu(need) == need
        self.cache.insert(tokens, need, hint.fixed_tokens if hint else 0, hint.user if hint else None)

    def set_hints(self, client: str, steps: dict[str, float]) -> None:
        self.cache.set_hints(client, steps)

    def evict(self, n: int) -> list[tuple[int, ...]]:
        self.cache.evict_gpu(n)
        return [tuple(op.node.tokens) for op in self.cache.take_ops() if isinstance(op, Free)]


class SGLangModel:
    def __init__(self, policy: str, backend: str = "kvflow") -> None:
        self.driver = Driver(*build_cache(eviction_policy=policy, backend=backend))

    def request(self, tokens: list[int], hint: WorkflowHint | None) -> None:
        self.driver.request(tokens, hint)

    def set_hints(self, client: str, steps: dict[str, float]) -> None:
        if hasattr(self.driver.cache, "set_hints"):  # SGLang's own cache has no hint input
            self.driver.cache.set_hints(client, steps)

    def evict(self, n: int) -> list[tuple[int, ...]]:
        return self.driver.evict(n)


def workload(seed: int, warmup: bool = False):
    """A ChatDev-like run: two workflows over one step graph, plus untagged traffic; yields
    ('req', tokens, hint) and ('hints', client, steps) events. ``warmup`` first caches the shared
    system prompt and each fixed prompt alone (the paper's warm-up), so no later insert splits a
    node."""
    rng = random.Random(seed)
    if warmup:
        yield "req", list(SYSTEM), None
        for agent in GRAPH.agents:
            yield "req", SYSTEM + ROLES[agent], None
    fresh = iter(range(10_000, 1_000_000))
    frontier = {"c1": "planner", "c2": "planner"}
    order = {"planner": ["coder"], "coder": ["reviewer"], "reviewer": ["coder", "tester"], "tester": ["planner"]}
    for _ in range(14):
        if rng.random() < 0.2:
            yield "req", [next(fresh) for _ in range(rng.randint(3, 9))], None
            continue
        client = rng.choice(sorted(frontier))
        agent = frontier[client]
        steps = GRAPH.steps_to_execution([agent])
        fixed = SYSTEM + ROLES[agent]
        dynamic = [next(fresh) for _ in range(rng.randint(2, 7))]
        yield "req", fixed + dynamic, WorkflowHint(client, agent, len(fixed), steps)
        frontier[client] = rng.choice(order[agent])
    for client, agent in sorted(frontier.items()):
        yield "hints", client, GRAPH.steps_to_execution([agent])


def run(model, seed: int, warmup: bool = False) -> list[tuple[int, ...]]:
    events = list(workload(seed, warmup))
    for event in events:
        if event[0] == "req":
            model.request(event[1], event[2])
    rng = random.Random(seed + 1)
    evicted: list[tuple[int, ...]] = []
    hint_events = [e for e in events if e[0] == "hints"]
    for step in range(400):
        if step % 3 == 0 and hint_events:  # priorities change between evict calls
            _, client, steps = hint_events[step // 3 % len(hint_events)]
            model.set_hints(client, {a: (s + step // 3) % 5 for a, s in steps.items() if s != float("inf")})
        got = model.evict(rng.choice([1, 1, 4, 9]))
        if not got:
            break
        evicted.extend(got)
    return evicted


@pytest.mark.parametrize("seed", range(6))
def test_kvflow_order_matches_core(seed):
    predicted = run(CoreModel("kvflow"), seed)
    actual = run(SGLangModel("kvflow"), seed)
    assert len(predicted) > 10
    assert actual == predicted


@pytest.mark.parametrize("seed", range(6))
def test_kvflow_order_matches_core_after_warmup(seed):
    assert run(SGLangModel("kvflow"), seed, warmup=True) == run(CoreModel("kvflow"), seed, warmup=True)


@pytest.mark.parametrize("seed", range(6))
def test_lru_core_matches_sglang_lru(seed):
    """The core's LRU against SGLang's own ``lru`` on SGLang's own cache (no plug-in at all)."""
    predicted = run(CoreModel("lru"), seed, warmup=True)
    actual = run(SGLangModel("lru", backend="default"), seed, warmup=True)
    assert len(predicted) > 10
    assert actual == predicted


@pytest.mark.parametrize("seed", range(3))
def test_core_lru_strategy_ranks_like_sglang_lru(seed):
    """Same SGLang tree, two strategies: the plug-in's adapter of the core LRU and SGLang's own."""
    from sglang.srt.mem_cache.evict_policy import LRUStrategy

    from real.sglang.policy import CorePolicyStrategy

    model = SGLangModel("lru", backend="default")
    for event in workload(seed):
        if event[0] == "req":
            model.request(event[1], event[2])
    core = model.driver.cache.tree_core
    leaves = list(core.evictable_device_leaves)
    ours, theirs = CorePolicyStrategy("lru"), LRUStrategy()
    assert sorted(leaves, key=ours.get_priority) == sorted(leaves, key=theirs.get_priority)


def test_sglang_split_refreshes_suffix_recency():
    """Pins the one place where SGLang's LRU and the core's differ: SGLang's ``_split_node`` gives
    the split-off tail a new access time; the core keeps the old one. Here the third request
    splits the first one's leaf, so SGLang then ranks that old dynamic part as recent."""
    system, a, b = list(range(1, 9)), [20, 21], [30, 31]
    sglang_model, core_model = SGLangModel("lru", backend="default"), CoreModel("lru")
    for model in (sglang_model, core_model):
        model.request(system + a + [40], None)
        model.request(system + b + [50], None)
        model.request(system + a + [60], None)
    assert core_model.evict(1) == [(40,)]
    assert sglang_model.evict(1) == [(30, 31, 50)]
