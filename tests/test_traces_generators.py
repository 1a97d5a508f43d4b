"""Generators reproduce the paper's settings by name, with the structure the paper describes."""

from __future__ import annotations

from pathlib import Path

import pytest

from traces import Trace, generate, write_trace


def _deps_ok(trace: Trace) -> None:
    seen: set[str] = set()
    for inv in trace.invocations:
        assert all(d in seen for d in inv.deps)
        seen.add(inv.id)


def _dynamic(trace: Trace, inv) -> list[int]:
    return trace.prompt_tokens(inv)[trace.fixed_tokens(inv) :]


def test_sequential_paper_setting() -> None:
    t = generate("sequential", agents=10, fixed_tokens=8192, dynamic_tokens=32, output_tokens=32, runs=10, seed=0)
    assert len(t.invocations) == 110  # one warm-up run + 10 runs of 10 agents
    assert sum("/warmup" in i.id for i in t.invocations) == 10
    _deps_ok(t)
    for k, inv in enumerate(t.invocations):
        assert (t.fixed_tokens(inv), t.prompt_len(inv) - t.fixed_tokens(inv), inv.output_tokens) == (8192, 32, 32)
        assert inv.deps == ([t.invocations[k - 1].id] if k else [])  # run r's first agent after run r-1's last
        assert inv.agent_id == f"agent{k % 10}" and inv.client_id == "wf0" and inv.step == k
    same_agent = [i for i in t.invocations if i.agent_id == "agent3"]
    fixed = {tuple(t.prompt_tokens(i)[:8192]) for i in same_agent}
    dynamic = {tuple(_dynamic(t, i)) for i in same_agent}
    assert len(fixed) == 1 and len(dynamic) == len(same_agent) == 11
    assert t.prompt_tokens(t.invocations[0])[:8192] != t.prompt_tokens(t.invocations[1])[:8192]
    g = t.workflows["sequential"].graph
    assert ["agent9", "agent0"] in g["edges"] and g["agents"]["agent0"] == {"aggregation": "OR"} and g["horizon"]


def test_sequential_4096_and_cli_strings_equal_python_values(tmp_path: Path) -> None:
    a = generate("sequential", agents="10", fixed_tokens="4096", dynamic_tokens="32", output_tokens="32", runs="10")
    b = generate("sequential", agents=10, fixed_tokens=4096, dynamic_tokens=32, output_tokens=32, runs=10)
    write_trace(a, tmp_path / "a.jsonl")
    write_trace(b, tmp_path / "b.jsonl")
    assert (tmp_path / "a.jsonl").read_bytes() == (tmp_path / "b.jsonl").read_bytes()
    assert {a.fixed_tokens(i) for i in a.invocations} == {4096}


def test_same_seed_same_trace_different_seed_different(tmp_path: Path) -> None:
    paths = []
    for name, seed in [("a", 1), ("b", 1), ("c", 2)]:
        t = generate("peer_loop", seed=seed, workflows=3)
        write_trace(t, tmp_path / f"{name}.jsonl")
        paths.append((tmp_path / f"{name}.jsonl").read_bytes())
    assert paths[0] == paths[1] != paths[2]
    t1, t2 = generate("sequential", seed=1, runs=1), generate("sequential", seed=2, runs=1)
    assert t1.prompt_tokens(t1.invocations[0]) != t2.prompt_tokens(t2.invocations[0])


def test_distributions_and_arrivals() -> None:
    t = generate(
        "sequential",
        agents=4,
        runs=5,
        warmup=0,
        output_tokens="uniform:16:64",
        dynamic_tokens="normal:100:10",
        delay_s="exp:0.5",
        workflows=5,
        arrival="poisson:2",
        seed=4,
    )
    outs = [i.output_tokens for i in t.invocations]
    assert min(outs) >= 16 and max(outs) <= 64 and len(set(outs)) > 5
    starts = [i.arrival_s for i in t.invocations if i.step == 0]
    assert len(starts) == 5 and starts[0] == 0.0 and starts == sorted(starts) and starts[-1] > 0
    assert all(i.arrival_s is None for i in t.invocations if i.step > 0)
    assert any(i.delay_s > 0 for i in t.invocations) and all(i.delay_s >= 0 for i in t.invocations)


def test_branches_paper_setting() -> None:
    t = generate("branches", branches=2, agents=10, fixed_tokens=8192, dynamic_tokens=32, output_tokens=32, runs=10)
    assert len(t.invocations) == (2 + 10) * 10  # warm-up covers both candidates, then 10 runs
    _deps_ok(t)
    runs = [i for i in t.invocations if "/r" in i.id]
    assert {i.agent_id for i in runs if i.agent_id.startswith("s0b")} == {"s0b0", "s0b1"}
    a = next(i for i in t.invocations if i.agent_id == "s3b0")
    b = next(i for i in t.invocations if i.agent_id == "s3b1")
    pa, pb = t.prompt_tokens(a), t.prompt_tokens(b)
    assert pa[:4096] == pb[:4096] and pa[4096:8192] != pb[4096:8192]
    assert t.fixed_tokens(a) == t.fixed_tokens(b) == 8192
    g = t.workflows["branches"].graph
    assert ["s0b1", "s1b0"] in g["edges"] and g["agents"]["s1b0"]["aggregation"] == "OR"


def test_concurrent_paper_setting() -> None:
    t = generate("concurrent", workflows=64, fixed_tokens=1024, dynamic_tokens=256, output_tokens=256)
    assert len(t.invocations) == 640 and len({i.client_id for i in t.invocations}) == 64
    _deps_ok(t)
    by_id = t.by_id()
    assert all(by_id[d].client_id == i.client_id for i in t.invocations for d in i.deps)
    assert {(t.fixed_tokens(i), t.prompt_len(i), i.output_tokens) for i in t.invocations} == {(1024, 1280, 256)}
    first = [i for i in t.invocations if i.agent_id == "agent0"]
    assert len({tuple(t.prompt_tokens(i)[:1024]) for i in first}) == 64  # each instance its own prompts
    assert all(i.arrival_s == 0.0 for i in first)
    shared = generate("concurrent", workflows=4, shared_prompts=True)
    assert len({tuple(shared.prompt_tokens(i)[:1024]) for i in shared.invocations if i.agent_id == "agent0"}) == 1


def test_peer_loop_structure() -> None:
    t = generate("peer_loop", workflows=20, seed=5)
    _deps_ok(t)
    order = ["planner", "executor", "expresser", "reviewer"]
    counts = set()
    for c in {i.client_id for i in t.invocations}:
        agents = [i.agent_id for i in t.invocations if i.client_id == c]
        assert len(agents) % 4 == 0 and agents == order * (len(agents) // 4)
        counts.add(len(agents) // 4)
    assert counts <= {2, 3, 4} and len(counts) > 1  # 1 + uniform:1:3 loop-backs
    g = t.workflows["peer_loop"].graph
    assert g == {
        "agents": {"planner": {"aggregation": "OR"}, "executor": {}, "expresser": {}, "reviewer": {}},
        "edges": [
            ["planner", "executor"],
            ["executor", "expresser"],
            ["expresser", "reviewer"],
            ["reviewer", "planner"],
        ],
        "horizon": 16,
    }
    inv = t.invocations[:4]
    common = t.invocations[0].segments[0].n_tokens
    assert len({tuple(t.prompt_tokens(i)[:common]) for i in inv}) == 1  # partial overlap: shared preamble


def test_fanout_structure() -> None:
    t = generate("fanout", width=3, runs=2)
    _deps_ok(t)
    assert [i.agent_id for i in t.invocations] == ["planner", "worker0", "worker1", "worker2", "aggregator"] * 2
    plan, w0, w1, w2, agg = t.invocations[:5]
    assert w0.deps == w1.deps == w2.deps == [plan.id] and agg.deps == [w0.id, w1.id, w2.id]
    assert t.invocations[5].deps == [agg.id]
    g = t.workflows["fanout"].graph
    assert g["agents"]["aggregator"] == {"aggregation": "AND"} and ["aggregator", "planner"] in g["edges"]


@pytest.mark.parametrize(
    "params, key",
    [
        ({"bogus": 1}, "bogus"),
        ({"agents": "ten"}, "agents"),
        ({"agents": 0}, "agents"),
        ({"output_tokens": "uniform:64:16"}, "output_tokens"),
        ({"fixed_tokens": -3}, "fixed_tokens"),
        ({"arrival": "poisson:-1"}, "arrival"),
        ({"output_tokens": "zipf:2"}, "output_tokens"),
    ],
)
def test_bad_params_name_the_key(params: dict, key: str) -> None:
    with pytest.raises(ValueError, match=key):
        generate("sequential", **params)
