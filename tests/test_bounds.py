"""Bounds that are bounds: no policy's reuse (GPU hits + CPU loads) beats exact Belady over the
same run's admission order with both tiers' capacity (sim/bounds.py)."""

import pytest

from sim.bounds import admission_order, reuse_bound, run_reuse_bound
from sim.replay import ReplayRequest, replay
from sim.runner import build_trace, simulate
from tests.test_sim_invariants import POLICIES, WORKLOADS, make_cfg


@pytest.mark.parametrize("workload", sorted(WORKLOADS))
@pytest.mark.parametrize("policy", POLICIES)
def test_no_policy_reuses_more_than_belady(policy, workload):
    cfg = make_cfg(policy, workload)
    cfg["sim"] = {}
    result = simulate(cfg)
    bound = run_reuse_bound(build_trace(cfg["workload"], 0), result.rows, result.summary)
    s = result.summary
    measured = [r for r in result.rows if not r["warmup"]]
    reused = sum(r["hit_gpu_tokens"] + r["loaded_cpu_tokens"] for r in measured)
    assert bound.total_tokens == sum(r["prompt_tokens"] for r in measured)
    assert reused <= bound.hit_tokens, (policy, workload, reused, bound)
    assert s["hit_rate_gpu"] + s["hit_rate_cpu"] <= bound.rate + 1e-12


def test_belady_on_a_sequence_worked_by_hand():
    """Capacity 4 tokens; prompts A=[1,2] B=[3,4] A C=[5,6] B. Belady keeps A and B (C is never
    used again: it bypasses), so the 2nd A and the 2nd B hit: 4 tokens. LRU evicts B for C, so
    only the 2nd A hits: 2 tokens."""
    seq = [[1, 2], [3, 4], [1, 2], [5, 6], [3, 4]]
    reqs = [ReplayRequest(list(p), None) for p in seq]
    every = [True] * len(seq)
    assert replay(reqs, "belady", 4, measured=every)["hit_tokens"] == 4
    assert replay([ReplayRequest(list(p), None) for p in seq], "lru", 4, measured=every)["hit_tokens"] == 2


def test_bound_follows_the_runs_own_admission_order():
    rows = [{"admit_s": 2.0}, {"admit_s": float("nan")}, {"admit_s": 1.0}, {"admit_s": 1.0}]
    assert admission_order(rows) == [2, 3, 0, 1]


def test_warmup_rows_are_not_counted():
    cfg = make_cfg("kvflow", "sequential")
    result = simulate(cfg)
    trace = build_trace(cfg["workload"], 0)
    all_rows = [{**r, "warmup": False} for r in result.rows]
    with_warmup = reuse_bound(trace, result.rows, 4000)
    everything = reuse_bound(trace, all_rows, 4000)
    assert any(r["warmup"] for r in result.rows)
    assert with_warmup.total_tokens < everything.total_tokens


def test_the_paged_bound_counts_whole_pages_only():
    """``reuse_bound(page_tokens=P)``: one unit per whole page, a request-unique tail unit that never
    hits; the total is still every prompt token; a page-granular bound is never above the token one
    (a paged cache can only match less) and it is exact on a hand-worked pair of prompts."""
    from array import array

    from sim.bounds import _paged

    req = _paged(array("i", range(10)), 4, 7)
    assert req.unit_tokens == [4, 4, 2] and req.keys[-1] == ("tail", 7)
    assert req.keys[0] == array("i", range(4)).tobytes()
    assert _paged(array("i", range(8)), 4, 0).unit_tokens == [4, 4]
    # [0..9] then [0..5, 99]: pages [0-3] shared, [4-7] differ -> 4 hit tokens of the 2nd prompt
    first, second = _paged(array("i", range(10)), 4, 0), _paged(array("i", [0, 1, 2, 3, 4, 5, 99]), 4, 1)
    got = replay([first, second], "belady", 100, measured=[False, True])
    assert (got["hit_tokens"], got["total_tokens"]) == (4, 7)
    cfg = make_cfg("hicache", "sequential")
    result = simulate(cfg)
    trace = build_trace(cfg["workload"], 0)
    tokens, paged = reuse_bound(trace, result.rows, 4000), reuse_bound(trace, result.rows, 4000, page_tokens=16)
    assert paged.total_tokens == tokens.total_tokens and paged.hit_tokens <= tokens.hit_tokens
