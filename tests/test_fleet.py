"""Fleet simulation (sim/fleet.py, sim/routers/): one replica is the single engine exactly, each
router's rule, more replicas hold more KV, determinism, token conservation, one-line config errors."""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass, field
from types import SimpleNamespace

import pytest

from sim.fleet import simulate_fleet
from sim.routers import ROUTERS, make_router
from sim.routers.prefix_aware import block_keys
from sim.routers.session_affinity import client_replica
from sim.runner import load_conf, simulate
from tests.golden.cases import cases, pinned
from tests.golden.regen import GOLDEN
from tests.test_sim_cli import run  # kvflow-sim in a subprocess, one-line errors visible

EXPECTED = json.loads(GOLDEN.read_text())
CASES = cases()


def _assert_pinned(name: str, summary: dict) -> None:
    got = pinned(summary)
    for key, value in EXPECTED[name].items():
        if isinstance(value, float):
            assert math.isclose(got[key], value, rel_tol=1e-9, abs_tol=1e-12), (name, key, got[key], value)
        else:
            assert got[key] == value, (name, key, got[key], value)


@pytest.mark.parametrize("router", sorted(ROUTERS))
def test_one_replica_is_the_single_engine_with_any_router(router):
    """Every golden case, through the runner (its own path) and through the fleet path, equals the pins."""
    for name, cfg, trace in CASES:
        fleet_cfg = {**cfg, "cluster": {"replicas": 1, "router": router}}
        _assert_pinned(name, simulate(fleet_cfg, trace=trace).summary)
        _assert_pinned(name, simulate_fleet(fleet_cfg, trace=trace).summary)


def test_schema_router_names_match_the_routers():
    from harness.config_schema import ROUTER_NAMES

    assert set(ROUTER_NAMES) == set(ROUTERS)


# ----- each router's rule on a hand-built situation ----------------------------------------------
@dataclass
class FakeReplica:
    index: int
    requests: int = 0
    tokens: int = 0
    cached: dict = field(default_factory=dict)  # prompt tuple -> cached prefix tokens

    def load(self) -> int:
        return self.requests

    def active_tokens(self) -> int:
        return self.tokens

    def cached_prefix_tokens(self, tokens) -> int:
        return self.cached.get(tuple(tokens), 0)


def req(client: str = "c", tokens=(1, 2, 3, 4)):
    return SimpleNamespace(client_id=client, request_id=f"{client}-{len(tokens)}", tokens=list(tokens))


def test_round_robin_cycles():
    r, reps = make_router("round_robin"), [FakeReplica(i, requests=9 - i) for i in range(3)]
    assert [r.route(req(), reps) for _ in range(5)] == [0, 1, 2, 0, 1]


def test_least_loaded_ties_go_to_lowest_index():
    r = make_router("least_loaded")
    assert r.route(req(), [FakeReplica(0, 3), FakeReplica(1, 1), FakeReplica(2, 1)]) == 1
    assert r.route(req(), [FakeReplica(0, 0), FakeReplica(1, 0)]) == 0


def test_session_affinity_is_sticky_and_load_blind():
    r = make_router("session_affinity")
    reps = [FakeReplica(i) for i in range(4)]
    home = client_replica("client-7", 4)
    reps[home].requests = 100
    assert {r.route(req("client-7"), reps) for _ in range(3)} == {home}
    assert len({client_replica(f"c{i}", 4) for i in range(40)}) == 4  # clients spread over replicas


def test_prefix_aware_follows_the_prefix_unless_unbalanced():
    r = make_router("prefix_aware", {"block_tokens": 2, "cache_threshold": 0.5, "balance_abs_threshold": 2})
    reps = [FakeReplica(0), FakeReplica(1)]
    reps[0].requests = 1
    assert r.route(req("a", range(8)), reps) == 1  # nothing routed yet: least loaded
    reps[1].requests = 2
    assert r.route(req("b", [*range(6), 50, 51]), reps) == 1  # 6 of 8 tokens match replica 1's index
    assert r.route(req("c", [9, 9, 9, 9]), reps) == 0  # no match: least loaded
    reps[1].requests = 5  # gap 4 > 2: balance wins over the match
    assert r.route(req("d", range(8)), reps) == 0
    assert block_keys(list(range(5)), 2) == block_keys(list(range(4)), 2)  # a partial block is not indexed


def test_prefix_aware_below_threshold_goes_least_loaded():
    r = make_router("prefix_aware", {"block_tokens": 2, "cache_threshold": 0.9})
    reps = [FakeReplica(0), FakeReplica(1, requests=1)]
    assert r.route(req("a", range(8)), reps) == 0
    reps[0].requests = 2
    assert r.route(req("b", [0, 1, 2, 3, 7, 7, 7, 7]), reps) == 1  # 50% match < 90%


def test_kv_aware_scores_overlap_minus_load():
    prompt = tuple(range(8))
    r = make_router("kv_aware", {"block_tokens": 2, "overlap_weight": 1.0})
    reps = [FakeReplica(0, tokens=2, cached={prompt: 2}), FakeReplica(1, tokens=4, cached={prompt: 8})]
    assert r.route(req("a", prompt), reps) == 1  # 1 - 1 = 0 vs 4 - 2 = 2
    reps[1].tokens = 20  # 4 - 10 < 0
    assert r.route(req("a", prompt), reps) == 0
    heavy = make_router("kv_aware", {"block_tokens": 2, "overlap_weight": 5.0})
    assert heavy.route(req("a", prompt), reps) == 1  # 20 - 10 = 10 vs 5 - 1 = 4


def test_workflow_aware_stays_home_until_overloaded():
    r = make_router("workflow_aware", {"balance_abs_threshold": 2})
    reps = [FakeReplica(0, requests=1), FakeReplica(1, requests=0)]
    assert r.route(req("a"), reps) == 1  # first call: least loaded
    reps[1].requests = 3
    assert r.route(req("a"), reps) == 1  # home, gap 2 <= 2
    reps[1].requests = 4
    assert r.route(req("a"), reps) == 0  # overloaded: least loaded becomes home
    reps[0].requests = 5
    assert r.route(req("a"), reps) == 0


def test_unknown_router_is_a_value_error_naming_the_key():
    with pytest.raises(ValueError, match="cluster.router='nope'"):
        make_router("nope")


# ----- whole fleets --------------------------------------------------------------------------------
def thrash_cfg(replicas: int, router: str, policy: str = "hicache") -> dict:
    return {
        "hardware": load_conf("hardware", "a10g_paper"),
        "model": load_conf("model", "llama-3.1-8b"),
        "workload": {
            "generator": "concurrent",
            "params": dict(
                workflows=8, agents=4, runs=3, warmup=0, fixed_tokens=600, dynamic_tokens=40, output_tokens=16
            ),
        },
        "policy": load_conf("policy", policy),
        "cache": {"gpu_capacity_tokens": 12000, "cpu_capacity_tokens": 0},
        "sim": {"timeline": False, "check_invariants": True},
        "cluster": {"replicas": replicas, "router": router},
        "seed": 1,
    }


def test_two_replicas_hold_more_than_one():
    one = simulate(thrash_cfg(1, "session_affinity")).summary
    two = simulate(thrash_cfg(2, "session_affinity")).summary
    assert two["replicas"] == 2 and "replicas" not in one
    assert one["details"]["evicted_tokens"]["gpu"] > 0  # the workload thrashes one replica
    assert two["hit_rate_gpu"] > one["hit_rate_gpu"] + 0.1
    assert two["workflow_latency_mean_s"] < one["workflow_latency_mean_s"]
    assert two["details"]["gpu_capacity_tokens"] == 2 * one["details"]["gpu_capacity_tokens"]


@pytest.mark.parametrize("router", sorted(ROUTERS))
def test_fleet_is_deterministic_and_conserves_tokens(router):
    a = simulate(thrash_cfg(3, router, "kvflow"))
    b = simulate(thrash_cfg(3, router, "kvflow"))
    drop = ("wall_s",)
    assert {k: v for k, v in a.summary.items() if k not in drop} == {
        k: v for k, v in b.summary.items() if k not in drop
    }
    assert a.replica_rows == b.replica_rows and a.rows == b.rows
    assert len(a.replica_rows) == 3 and sum(r["requests"] for r in a.replica_rows) == a.summary["requests"]
    tokens = a.summary["details"]["tokens"]
    for r in a.replica_rows:
        assert r["prompt_tokens"] == r["hit_gpu_tokens"] + r["loaded_cpu_tokens"] + r["recomputed_tokens"]
    for key, col in (("prompt", "prompt_tokens"), ("hit_gpu", "hit_gpu_tokens"), ("recomputed", "recomputed_tokens")):
        assert tokens[key] == sum(r[col] for r in a.replica_rows)
    assert a.summary["h2d_bytes"] == sum(r["h2d_bytes"] for r in a.replica_rows)


def test_cached_prefix_walk_reads_without_changing_the_tree():
    """kv_aware's question to a replica: the same length as the tree's own match, and no split."""
    from harness.setup import prepare
    from sim.fleet import run_fleet

    cfg = {**thrash_cfg(2, "kv_aware", "kvflow"), "cache": {"gpu_capacity_tokens": 12000, "cpu_capacity_tokens": 6000}}
    setup = prepare(cfg)
    _, fleet, _ = run_fleet(cfg, setup, 2)
    asked = 0
    for replica in fleet.replicas:
        tree = replica.engine.cache.tree
        for inv in setup.trace.invocations[::7]:
            prompt = setup.trace.prompt_array(inv)
            nodes = sum(1 for _ in tree.walk())
            got = replica.cached_prefix_tokens(prompt)
            assert sum(1 for _ in tree.walk()) == nodes  # nothing split
            assert got == tree.match(prompt, touch=False).total_tokens
            asked += got > 0
    assert asked > 0  # some prompts were cached somewhere


# ----- kvflow-sim ---------------------------------------------------------------------------------
SMALL = ["policy=kvflow", "workload.params.runs=1", "workload.params.agents=4", "output.report=false"]


@pytest.mark.parametrize(
    "args,needle",
    [
        (["cluster.router=nope"], "cluster.router='nope': must be one of round_robin"),
        (["cluster.replicas=0"], "cluster.replicas=0: must be an integer >= 1"),
        (["cluster.remote_tier=mooncake"], "cluster.remote_tier='mooncake': must be a mapping"),
        (["cluster.cache_threshold=2"], "cluster.cache_threshold=2: must be a number >= 0 and <= 1"),
    ],
)
def test_bad_cluster_config_is_one_line_exit_2(tmp_path, args, needle):
    p = run(tmp_path, *SMALL, *args)
    assert p.returncode == 2, p.stderr
    assert needle in p.stderr
    assert "Traceback" not in p.stderr and len(p.stderr.strip().splitlines()) == 1


def test_fleet_run_writes_replicas_csv(tmp_path):
    p = run(tmp_path, *SMALL, "cluster.replicas=2", "cluster.router=least_loaded")
    assert p.returncode == 0, p.stderr
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["replicas"] == 2
    with open(tmp_path / "run" / "replicas.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["replica"] for r in rows] == ["0", "1"]
    assert sum(int(r["requests"]) for r in rows) == summary["requests"]
