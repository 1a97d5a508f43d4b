"""Policies beyond KVFlow: inferred step graph, cost-aware ranking, deadline prefetch, release."""

from __future__ import annotations

import pytest
from test_policies import order, put, seq

from kvflow.cache import CacheConfig, KVCacheManager
from kvflow.engine import Engine, EngineConfig, Request
from kvflow.ops import Load
from kvflow.policies import make_policy
from kvflow.step_graph import INF
from kvflow.step_inference import TransitionModel


# ----- inferred step graph ---------------------------------------------------------------------
def test_transition_model_learns_a_loop_and_distances():
    model = TransitionModel(min_observations=2)
    for _ in range(3):
        for agent in ("plan", "exec", "review"):
            model.observe("app", "c1", agent)
    assert model.steps_from("app", "plan") == {"plan": 0, "exec": 1, "review": 2}
    assert model.steps_from("app", "review") == {"review": 0, "plan": 1, "exec": 2}


def test_transition_model_is_shared_across_clients_of_one_app_only():
    model = TransitionModel(min_observations=2)
    for client in ("c1", "c2"):
        for agent in ("a", "b", "a"):
            model.observe("app", client, agent)
    assert model.steps_from("app", "a")["b"] == 1  # two observations, from two clients
    assert model.steps_from("other", "a") is None


def test_not_confident_means_no_prediction():
    model = TransitionModel(min_observations=3)
    model.observe("app", "c", "a")
    model.observe("app", "c", "b")
    assert model.steps_from("app", "a") is None  # one transition seen from a: LRU fallback


def test_rare_transitions_are_not_edges():
    model = TransitionModel(min_observations=1, min_edge_prob=0.2)
    for _ in range(9):
        model.observe("app", "c", "a")
        model.observe("app", "c", "b")
    model.observe("app", "c", "a")
    model.observe("app", "c", "z")  # 1 of 10 transitions out of a
    steps = model.steps_from("app", "a")
    assert steps["b"] == 1 and steps["z"] == INF


def engine_for(policy="kvflow", gpu=1200, cpu=5000, **kw) -> Engine:
    cache = KVCacheManager(CacheConfig(gpu_capacity_tokens=gpu, cpu_capacity_tokens=cpu), make_policy(policy))
    return Engine(cache, EngineConfig(chunk_tokens=4096, **kw))


def run_one(engine: Engine, req: Request, t: float) -> float:
    engine.submit(req, t)
    while engine.has_work():
        for op in engine.take_ops():
            engine.complete_op(op, t)
        it = engine.step(t)
        if it is not None:
            t += 0.1
            engine.finish(it, t)
    for op in engine.take_ops():
        engine.complete_op(op, t)
    return t


def test_inferred_engine_falls_back_to_lru_until_confident():
    engine = engine_for(infer_steps=True, infer_min_observations=2)
    prompts = {a: seq(1000 * (i + 1), 300) for i, a in enumerate("abc")}
    t = run_one(engine, Request("r0", "c", "a", prompts["a"] + [1], 300, 2), 0.0)
    assert engine.hints.get("c", {}) == {}  # nothing learned yet: no hints, LRU order
    for i, agent in enumerate("bcabcab"):
        t = run_one(engine, Request(f"r{i + 1}", "c", agent, prompts[agent] + [i], 300, 2), t)
    assert engine.hints["c"] == {"b": 0, "c": 1, "a": 2}
    assert engine.cache.policy.steps[("c", "c")] == 1


def test_declared_hints_win_over_inference():
    engine = engine_for(infer_steps=True, infer_min_observations=1)
    engine.set_hints("c", {"a": 0, "b": 5}, 0.0)
    for i, agent in enumerate("abab"):
        run_one(engine, Request(f"r{i}", "c", agent, seq(100 * (i + 1), 50), 20, 2), float(i))
    assert engine.hints["c"] == {"a": 0, "b": 5}


# ----- cost-aware ranking --------------------------------------------------------------------
def cost_cache(gpu=4000) -> KVCacheManager:
    return KVCacheManager(CacheConfig(gpu_capacity_tokens=gpu, write_policy="none"), make_policy("kvflow_cost"))


def test_cost_policy_orders_fixed_prompts_like_kvflow():
    cache = cost_cache()
    put(cache, seq(100), fixed=4, user=("c", "far"))
    put(cache, seq(200), fixed=4, user=("c", "near"))
    put(cache, seq(300), fixed=4, user=("c", "mid"))
    cache.set_hints("c", {"far": 6, "near": 1, "mid": 3})
    assert order(cache) == [seq(100), seq(300), seq(200)]


def test_cost_policy_keeps_dynamic_prompts_that_are_reused():
    """A conversation the same agent extends next turn outranks a far agent's fixed prompt once the
    policy has seen such conversations reused; KVFlow evicts it first regardless."""
    for policy, first in (("kvflow", "conversation"), ("kvflow_cost", "far")):
        cache = KVCacheManager(CacheConfig(gpu_capacity_tokens=4000, write_policy="none"), make_policy(policy))
        convo = seq(5000, 8)
        put(cache, seq(100) + convo, fixed=4, user=("c", "talker"))
        if policy == "kvflow_cost":  # evidence: earlier conversations of this agent were reused
            cache.policy.dynamic_created["talker"] = 1000
            cache.policy.dynamic_reused["talker"] = 950
        put(cache, seq(300), fixed=4, user=("c", "far"))
        cache.set_hints("c", {"talker": 1, "far": 8})
        evicted = order(cache)
        assert evicted[0] == (convo if first == "conversation" else seq(300)), policy


def test_cost_policy_output_tokens_go_first_and_are_not_backed_up():
    cache = KVCacheManager(
        CacheConfig(gpu_capacity_tokens=100, cpu_capacity_tokens=100, write_policy="write_through"),
        make_policy("kvflow_cost"),
    )
    res = cache.match(seq(100) + seq(900))
    granted = cache.alloc_gpu(12)
    cache.insert(seq(100) + seq(900, 4) + seq(700, 4), granted, 4, ("c", "a"), prompt_tokens=8)
    ops = cache.take_ops()
    backed = {tuple(op.node.tokens) for op in ops}
    for op in ops:
        cache.complete(op)
    assert tuple(seq(700, 4)) not in backed  # the output: no reuse expected, never copied to CPU
    assert tuple(seq(100)) in backed
    cache.set_hints("c", {"a": 2})
    assert order(cache)[0] == seq(700, 4)
    del res


def test_release_on_completion_ranks_dead_workflow_first():
    engine = engine_for(policy="kvflow", gpu=4000, release_finished=True)
    t = run_one(engine, Request("r1", "live", "x", seq(100, 40), 40, 2), 0.0)
    t = run_one(engine, Request("r2", "done", "x", seq(900, 40), 40, 2), t)
    engine.set_hints("live", {"x": 6}, t)
    engine.set_hints("done", {"x": 1}, t)
    engine.finish_client("done", t)
    victims = order(engine.cache)
    fixed = [v for v in victims if v[0] in (100, 900)]
    assert fixed[0] == seq(900, 40)  # the dead branch goes before a live agent 6 steps away


# ----- deadline prefetch -----------------------------------------------------------------------
def demote_to_cpu(engine: Engine, user: tuple[str, str]) -> None:
    node = engine.cache.tree.user_nodes[user]
    for n in node.path_to_root():
        assert n.cpu
    engine.cache.evict_gpu(engine.cache.config.gpu_capacity_tokens)
    for op in engine.take_ops():
        engine.complete_op(op, 0.0)


def test_deadline_prefetch_starts_earliest_predicted_start_first():
    engine = engine_for(
        policy="kvflow", gpu=3000, cpu=8000, prefetch=True, prefetch_mode="deadline", h2d_gbps=1e-9
    )  # slow link: long copies, so two-step-ahead agents qualify
    engine.cache.config.max_prefetch = 1
    t = 0.0
    for client, base in (("slow", 100), ("fast", 500)):
        for k in range(3):  # establish each client's step interval
            t = run_one(
                engine,
                Request(f"{client}{k}", client, f"a{k}", seq(base + 50 * k, 40), 40, 2),
                t + (5.0 if client == "slow" else 0.5),
            )
    for client in ("slow", "fast"):
        demote_to_cpu(engine, (client, "a0"))
    engine.set_hints("slow", {"a2": 0, "a0": 2}, t)
    engine.set_hints("fast", {"a2": 0, "a0": 2}, t)
    engine.step(t)
    (load,) = [op for op in engine.take_ops() if isinstance(op, Load)]
    assert load.node.users == {("fast", "a0")}  # due sooner: the fast client's agent


def test_deadline_prefetch_waits_for_far_agents_on_a_fast_link():
    engine = engine_for(policy="kvflow", gpu=3000, cpu=8000, prefetch=True, prefetch_mode="deadline", h2d_gbps=1e3)
    t = 0.0
    for k in range(3):
        t = run_one(engine, Request(f"r{k}", "c", f"a{k}", seq(100 + 50 * k, 40), 40, 2), t + 10.0)
    demote_to_cpu(engine, ("c", "a0"))
    engine.set_hints("c", {"a2": 0, "a0": 2}, t)
    engine.step(t)
    assert not [op for op in engine.take_ops() if isinstance(op, Load)]  # 2 steps away, copy is instant
    engine.set_hints("c", {"a2": 0, "a0": 1}, t)
    engine.step(t)
    assert [op for op in engine.take_ops() if isinstance(op, Load)]  # next step: always eligible


def test_prefetch_mode_is_validated():
    with pytest.raises(ValueError, match="valid: next_step, deadline"):
        EngineConfig(prefetch_mode="eager")


# ----- learning dynamic reuse, latest-path tagging, GreedyDual aging ------------------------------
def test_dynamic_reuse_is_learned_from_prompts_not_from_cache_hits():
    """Even with a cache too small to ever hit, the policy sees that each prompt repeats the
    previous one (a growing conversation), so the estimate is not biased by its own evictions."""
    cache = KVCacheManager(CacheConfig(gpu_capacity_tokens=8, write_policy="none"), make_policy("kvflow_cost"))
    convo = seq(100, 4)
    for turn in range(6):
        cache.observe_prompt(("c", "talker"), convo, 0)
        convo = convo + seq(1000 + 10 * turn, 4)
    assert cache.policy.reuse_probability("talker") > 0.7
    cache.observe_prompt(("c", "fresh"), seq(500), 0)
    for k in range(6):
        cache.observe_prompt(("c", "fresh"), seq(600 + 10 * k), 0)  # new topic every time
    assert cache.policy.reuse_probability("fresh") < 0.3


def test_only_the_latest_dynamic_prompt_of_an_agent_is_tagged():
    cache = cost_cache()
    put(cache, seq(100) + seq(200), fixed=4, user=("c", "a"))
    put(cache, seq(100) + seq(300), fixed=4, user=("c", "a"))  # the agent moved on to a new prompt
    tagged = {tuple(n.tokens) for n in cache.tree.walk() if ("c", "a") in n.dynamic_users}
    assert tagged == {tuple(seq(300))}


def test_greedy_dual_aging_lets_recency_decide_between_similar_values():
    gd = KVCacheManager(CacheConfig(gpu_capacity_tokens=4000, write_policy="none"), make_policy("kvflow_gd"))
    put(gd, seq(100), fixed=4, user=("c", "old"))
    put(gd, seq(200), fixed=4, user=("c", "new"))
    gd.set_hints("c", {"old": 2, "new": 2})
    put(gd, seq(900, 4))  # no workflow info: goes first and raises the inflation level...
    gd.set_hints("other", {})
    victims = order(gd)
    assert victims[0] == seq(900, 4)
    assert victims[1:] == [seq(100), seq(200)]  # same value: the older access goes first


def test_greedy_dual_evicts_a_just_used_output_before_an_old_needed_prompt():
    gd = KVCacheManager(CacheConfig(gpu_capacity_tokens=4000, write_policy="none"), make_policy("kvflow_gd"))
    put(gd, seq(100), fixed=4, user=("c", "next"))
    gd.set_hints("c", {"next": 1})
    granted = gd.alloc_gpu(8)
    gd.insert(seq(300) + seq(700), granted, 4, ("c", "now"), prompt_tokens=4)  # fresh output tokens
    gd.set_hints("c", {"next": 1, "now": 5})
    assert order(gd)[0] == seq(700)  # value 0, however recent
