"""Simulator invariants on every policy: token conservation, capacities, dependencies, determinism."""

import json

import pytest

from sim.runner import load_conf as conf
from sim.runner import simulate
from tests.golden.cases import POLICIES as GOLDEN_POLICIES

POLICIES = (*GOLDEN_POLICIES, "pause_aware", "pause_aware_prefetch", "ttl_pin", "kvflow_sessions")  # every policy


WORKLOADS = {
    # single sequential workflow, GPU pool smaller than the agents' fixed prompts
    "sequential": (
        {
            "generator": "sequential",
            "params": dict(agents=5, warmup=1, runs=2, fixed_tokens=600, dynamic_tokens=20, output_tokens=8),
        },
        2000,
    ),
    # concurrent workflows contending for the pool
    "concurrent": (
        {
            "generator": "concurrent",
            "params": dict(
                workflows=6, agents=4, runs=2, warmup=1, fixed_tokens=300, dynamic_tokens=40, output_tokens=30
            ),
        },
        3000,
    ),
    "branches": (
        {
            "generator": "branches",
            "params": dict(agents=4, runs=3, fixed_tokens=400, dynamic_tokens=10, output_tokens=5),
        },
        1500,
    ),
    "fanout": (
        {
            "generator": "fanout",
            "params": dict(workflows=3, width=3, runs=2, fixed_tokens=200, dynamic_tokens=16, output_tokens=12),
        },
        1200,
    ),
}


def make_cfg(policy: str, workload: str, seed: int = 0) -> dict:
    wl, gpu_tokens = WORKLOADS[workload]
    return {
        "seed": seed,
        "hardware": conf("hardware", "a10g_paper"),
        "model": conf("model", "llama-3.1-8b"),
        "workload": {"name": workload, **wl},
        "policy": conf("policy", policy),
        "cache": {"gpu_capacity_tokens": gpu_tokens, "cpu_capacity_tokens": 2 * gpu_tokens},
        "engine": {},
        "sim": {"check_invariants": True},
    }


@pytest.mark.parametrize("workload", sorted(WORKLOADS))
@pytest.mark.parametrize("policy", POLICIES)
def test_invariants(policy, workload):
    result = simulate(make_cfg(policy, workload))  # check_invariants asserts capacities every iteration
    rows = result.rows
    finish = {r["request_id"]: r["finish_s"] for r in rows}
    from sim.runner import build_trace

    trace = build_trace(make_cfg(policy, workload)["workload"], 0)
    deps = {inv.id: inv.deps for inv in trace.invocations}
    for r in rows:
        assert r["hit_gpu_tokens"] + r["loaded_cpu_tokens"] + r["recomputed_tokens"] == r["prompt_tokens"]
        assert r["recomputed_tokens"] >= 1  # the last prompt token is always computed
        assert r["arrival_s"] <= r["admit_s"] <= r["first_token_s"] <= r["finish_s"]
        for d in deps[r["request_id"]]:
            assert r["admit_s"] >= finish[d], (r["request_id"], d)
    s = result.summary
    assert s["requests"] == len(trace.invocations)
    if policy == "sglang":
        assert s["h2d_bytes"] == s["d2h_bytes"] == 0
        assert s["details"]["tokens"]["loaded_cpu"] == 0


@pytest.mark.parametrize("policy", POLICIES)
def test_same_seed_same_summary(policy):
    a = simulate(make_cfg(policy, "concurrent", seed=3)).summary
    b = simulate(make_cfg(policy, "concurrent", seed=3)).summary
    assert a.pop("wall_s") >= 0 and b.pop("wall_s") >= 0  # the one wall-clock value (run-dir contract)
    assert json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


def test_kvflow_beats_lru_baselines_under_pressure():
    lat = {p: simulate(make_cfg(p, "sequential")).summary["workflow_latency_mean_s"] for p in POLICIES}
    assert lat["kvflow"] < lat["hicache"] < lat["sglang"]
    assert lat["clairvoyant"] <= lat["kvflow"] * 1.05


def test_decode_runs_match_single_steps(monkeypatch):
    """Jumping over decode runs (and cutting them at wake-ups) gives the same timeline as stepping."""
    from kvflow.engine import Engine

    base = simulate(make_cfg("kvflow", "concurrent")).summary
    real_step = Engine.step

    def one_step(self, now_s):
        it = real_step(self, now_s)
        if it is not None and it.decode_steps > 1:
            it.decode_steps = 1
        return it

    monkeypatch.setattr(Engine, "step", one_step)
    stepped = simulate(make_cfg("kvflow", "concurrent")).summary
    assert stepped["makespan_s"] == pytest.approx(base["makespan_s"], rel=1e-9)
    assert stepped["workflow_latency_mean_s"] == pytest.approx(base["workflow_latency_mean_s"], rel=1e-9)
    assert stepped["details"]["tokens"] == base["details"]["tokens"]


def test_timeline_shows_prefetch_overlapping_gpu_compute():
    cfg = make_cfg("kvflow", "sequential")
    cfg["sim"]["timeline"] = True
    rows = simulate(cfg).timeline
    assert {r[0] for r in rows} >= {"gpu", "h2d", "d2h"}
    assert all(end >= start for _, start, end, _ in rows)
    gpu = [(s, e) for res, s, e, _ in rows if res == "gpu"]
    prefetches = [(s, e) for res, s, e, label in rows if label == "prefetch"]
    assert prefetches, "kvflow under memory pressure prefetches"
    assert any(s < ge and gs < e for s, e in prefetches for gs, ge in gpu), "no prefetch overlaps compute"
    assert (
        not make_cfg("kvflow", "sequential")["sim"].get("timeline")
        and not simulate(make_cfg("kvflow", "sequential")).timeline
    )


@pytest.mark.parametrize("policy", ["kvflow_cost", "kvflow_gd"])
def test_invariants_on_the_imported_chatdev_traces(policy):
    """The real ChatDev logs under memory pressure, with the deadline prefetcher: this run broke GPU
    prefix-closure (a stale prefetch run loaded below a just-demoted parent) before the fix in
    KVCacheManager.load; synthetic workloads never hit it."""
    from conftest import CHATDEV

    from traces.importers import import_trace

    paths = sorted(str(p) for p in CHATDEV.glob("*.log.gz"))
    if not paths:
        pytest.skip(f"shared data not found at {CHATDEV}")
    trace = import_trace("chatdev", paths, warn=lambda *_: None)
    clients = len({inv.client_id for inv in trace.invocations})
    cfg = {
        "seed": 0,
        "hardware": conf("hardware", "h100"),
        "model": conf("model", "llama-3.1-8b"),
        "workload": {"name": "chatdev"},
        "policy": conf("policy", policy),
        "cache": {"gpu_capacity_tokens": 1024 * clients},
        "engine": {},
        "sim": {"check_invariants": True},
    }
    result = simulate(cfg, trace=trace)  # check_invariants asserts after every iteration
    assert len(result.rows) == len(trace.invocations)
