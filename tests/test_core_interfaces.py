"""The joins inside kvflow/: the Policy contract, policies built from conf/policy/*.yaml (a new one
is one module + one YAML), the prefetcher chosen from EngineConfig, in-flight state as an enum."""

from __future__ import annotations

import textwrap
from importlib.resources import files

import pytest
import yaml

from kvflow.build import build_engine, build_policy
from kvflow.cache import CacheConfig, KVCacheManager
from kvflow.engine import Engine, EngineConfig, Request
from kvflow.policies import POLICY_NAMES, Policy, make_policy
from kvflow.policies.clairvoyant import ClairvoyantPolicy
from kvflow.policies.kvflow import KVFlowPolicy
from kvflow.prefetch import DeadlinePrefetcher, NextStepPrefetcher, NoPrefetcher
from kvflow.radix import InFlight, RadixNode, Tier

ENGINE_KW = dict(gpu_tokens=50, cpu_tokens=0, kv_bytes_per_token=2, chunk_tokens=256, h2d_gbps=1.0)


def _conf_policies() -> dict[str, dict]:
    folder = files("conf").joinpath("policy")
    return {p.name: yaml.safe_load(p.read_text()) for p in folder.iterdir() if p.name.endswith(".yaml")}


def test_every_conf_policy_names_a_policy_class_that_builds():
    for name, cfg in _conf_policies().items():
        target = cfg["eviction"]["_target_"]
        policy = build_policy(cfg["eviction"], gain_s_per_token=lambda: 0.5)
        assert isinstance(policy, Policy) and type(policy).__name__ == target.rsplit(".", 1)[1], name
        assert policy.name in POLICY_NAMES
        if cfg["eviction"].get("gain_from_cost_model"):
            assert policy.gain_s_per_token == 0.5  # type: ignore[attr-defined]


def test_policy_names_come_from_the_yamls_and_old_names_still_work():
    assert set(POLICY_NAMES) == {
        "lru",
        "kvflow",
        "clairvoyant",
        "kvflow_cost",
        "kvflow_gd",
        "pause_aware",
        "ttl_pin",
        "kvflow_sessions",
        "subagent_aware",
    }
    assert isinstance(make_policy("kvflow_gd"), KVFlowPolicy) and make_policy("kvflow_gd").aging
    assert isinstance(make_policy("kvflow.policies.clairvoyant.ClairvoyantPolicy"), ClairvoyantPolicy)
    assert build_policy({"name": "kvflow"}).name == "kvflow"  # an older config: eviction.name


def test_gain_from_cost_model_without_a_cost_model_is_a_one_line_error():
    with pytest.raises(ValueError, match="needs gain_from_cost_model"):
        build_policy({"_target_": "kvflow.policies.kvflow_cost.KVFlowCostPolicy", "gain_from_cost_model": True})


@pytest.mark.parametrize(
    "target,message",
    [("nowhere.Nothing", "cannot import"), ("kvflow.build.build_engine", "not a kvflow.policies.base.Policy")],
)
def test_a_bad_target_is_a_one_line_error(target, message):
    with pytest.raises(ValueError, match=message) as err:
        build_policy({"_target_": target})
    assert "\n" not in str(err.value) and target in str(err.value)


def test_a_new_policy_is_one_module_plus_one_yaml(tmp_path, monkeypatch):
    (tmp_path / "fifo_policy.py").write_text(
        textwrap.dedent('''
        from kvflow.policies.base import Policy

        class FifoPolicy(Policy):
            """Evict the node created first (its id), whatever its use."""
            name = "fifo"

            def __init__(self, offset: int = 0) -> None:
                self.offset = offset

            def key(self, node):
                return (node.node_id + self.offset,)
    ''')
    )
    (tmp_path / "fifo.yaml").write_text(
        textwrap.dedent("""
        name: fifo
        eviction:
          _target_: fifo_policy.FifoPolicy
          offset: 3
        write_policy: none
        load_back: false
        prefetch: false
    """)
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    engine = build_engine(yaml.safe_load((tmp_path / "fifo.yaml").read_text()), **ENGINE_KW)
    assert type(engine.cache.policy).__name__ == "FifoPolicy" and engine.cache.policy.offset == 3
    assert isinstance(engine.prefetcher, NoPrefetcher)
    t = 0.0
    for i, base in enumerate((100, 200, 300)):  # 3 x 20 tokens (prompt + output) in a 50-token pool
        engine.submit(Request(f"r{i}", "c", "a", list(range(base, base + 18)), 0, 2), t)
        while engine.has_work():
            it = engine.step(t)
            t += 0.01
            engine.finish(it, t)
            engine.cache.check_invariants()
    cached = [engine.cache.tree.match(list(range(b, b + 18)), touch=False).gpu_tokens for b in (100, 200, 300)]
    assert cached[0] < 18 and cached[1:] == [18, 18]  # the oldest nodes went first


def _engine(**kw) -> Engine:
    cache = KVCacheManager(CacheConfig(gpu_capacity_tokens=100, cpu_capacity_tokens=100), make_policy("kvflow"))
    return Engine(cache, EngineConfig(**kw))


def test_the_prefetcher_is_chosen_once_from_the_engine_config():
    assert isinstance(_engine(prefetch=False).prefetcher, NoPrefetcher)
    assert isinstance(_engine(prefetch=True, load_back=False).prefetcher, NoPrefetcher)
    assert isinstance(_engine(prefetch=True).prefetcher, NextStepPrefetcher)
    deadline = _engine(prefetch=True, prefetch_mode="deadline", h2d_gbps=2.0).prefetcher
    assert isinstance(deadline, DeadlinePrefetcher) and deadline.bandwidth_bytes_s == 2e9


def test_policy_hooks_return_the_users_whose_keys_may_drop():
    policy = KVFlowPolicy()
    assert policy.set_hints({("c", "a"): 2.0, ("c", "b"): 1.0}) == [("c", "a"), ("c", "b")]  # new: unknown before
    assert policy.set_hints({("c", "a"): 1.0, ("c", "b"): 3.0}) == [("c", "b")]  # a: sooner (rises), b: later
    assert policy.set_hints({("c", "a"): None}) == [("c", "a")] and ("c", "a") not in policy.steps
    clairvoyant = ClairvoyantPolicy()
    assert clairvoyant.set_next_use({("c", "a"): 4.0}) == []  # unknown counted as never: 4 is sooner
    assert clairvoyant.set_next_use({("c", "a"): 6.0, ("c", "b"): 1.0}) == [("c", "a")]


def test_declared_capabilities_replace_probes():
    flags = {
        n: (p.uses_hints, p.tracks_dynamic, p.observes_prompts, p.reads_future)
        for n, p in ((n, make_policy(n)) for n in POLICY_NAMES)
    }
    assert flags["lru"] == (False, False, False, False)
    assert flags["kvflow"] == (True, False, False, False)
    assert flags["clairvoyant"] == (False, False, False, True)
    assert flags["kvflow_cost"] == flags["kvflow_gd"] == (True, True, True, False)
    node = RadixNode([], None)
    assert Policy().worth_keeping(node) is True and Policy().prefetch_limit(node) is None


def test_in_flight_state_is_an_enum_with_paired_verbs():
    cache = KVCacheManager(CacheConfig(gpu_capacity_tokens=40, cpu_capacity_tokens=40), make_policy("lru"))
    node = cache.insert(list(range(10)), cache.alloc_gpu(10))
    (backup,) = cache.take_ops()
    assert node.inflight is InFlight.OFFLOAD and node.tier is Tier.OFFLOADING and node.inflight == "offload"
    cache.complete(backup)
    assert node.inflight is None and node.tier is Tier.GPU_CPU
    cache.evict_gpu(10)
    assert node.tier is Tier.CPU and [op.kind for op in cache.take_ops()] == ["free"]
    (load,) = cache.load([node])
    assert node.inflight is InFlight.LOAD and node.tier is Tier.LOADING
    cache.complete(load)
    assert node.tier is Tier.GPU_CPU
    cache.check_invariants()
