"""Replica-to-replica KV copies of a fleet (sim/peer_copy.py, docs/fleet.md): a moved client's prefix
copied from the replica that holds it (exact tokens, bytes and wait), the one-block threshold, peer
vs remote-tier source choice (length, then finish time, queue included), think-time prefetch from a
peer, CPU capacity, one replica = the single engine, off = unchanged, one-line config errors."""

from __future__ import annotations

import csv
import json

import pytest
import simpy

import sim.peer_copy
from sim.fleet import PEER_FIELDS, REMOTE_FIELDS, REPLICA_FIELDS, simulate_fleet
from sim.peer_copy import REMOTE, Offer, choose
from sim.remote_tier import RemoteLink
from sim.runner import simulate
from tests.golden.cases import cases
from tests.test_fleet import SMALL, _assert_pinned, thrash_cfg
from tests.test_fleet_remote import BEFORE_REMOTE, KV_BYTES, moving_client_trace, overloaded_home_trace, remote_cfg
from tests.test_sim_cli import run
from traces.schema import Invocation, Segment, Trace, WorkflowDef

PEER = {"bandwidth_gbps": 10.0, "latency_s": 0.002}


def peer_cfg(router: str = "round_robin", policy: str = "hicache", remote: dict | None = None, **peer) -> dict:
    """Two replicas (12K GPU, 6K CPU tokens each); peer copies on, the remote tier only if given."""
    cfg = remote_cfg(router, policy=policy, **(remote or {}))
    if remote is None:
        del cfg["cluster"]["remote_tier"]
    cfg["cluster"]["peer_copy"] = {**PEER, **peer}
    return cfg


def by_id(result) -> dict:
    return {r["request_id"]: r for r in result.rows}


# ----- a client moves replica: its prefix comes from the replica it left ---------------------------
def test_moving_client_copies_its_prefix_from_the_other_replica():
    """round_robin: c/0 (1000 tokens) runs on replica 0, c/1 (1300, extending it) on replica 1, which
    caches nothing: the 1000 tokens replica 0 caches are copied into replica 1's CPU tier over
    replica 0's link (2 ms + 1000 x 128 KiB / 10 GB/s), c/1 waits for them, loads them and computes
    the other 300."""
    result = simulate_fleet(peer_cfg(), trace=moving_client_trace())
    peer = result.summary["details"]["peer_copy"]
    assert (peer["copies"], peer["bytes"], peer["tokens"]) == (1, 1000 * KV_BYTES, 1000)
    wait_s = 0.002 + 1000 * KV_BYTES / 10e9
    assert peer["link_busy_s"] == pytest.approx(wait_s, rel=1e-12)
    assert "remote_tier" not in result.summary["details"]
    rows = by_id(result)
    assert rows["c/1"]["loaded_cpu_tokens"] == 1000 and rows["c/1"]["recomputed_tokens"] == 300
    assert rows["c/1"]["queue_s"] == pytest.approx(wait_s, rel=1e-9)  # replica 1 was idle: the copy is the wait
    assert rows["c/1"]["ttft_s"] > rows["c/1"]["queue_s"]
    reps = result.replica_rows
    assert [r["peer_copies"] for r in reps] == [0, 1] and [r["peer_tokens"] for r in reps] == [0, 1000]
    assert [r["peer_bytes"] for r in reps] == [0, 1000 * KV_BYTES]
    assert [r["peer_sent_bytes"] for r in reps] == [1000 * KV_BYTES, 0]
    assert list(reps[0]) == [*REPLICA_FIELDS, *PEER_FIELDS]


def test_the_wait_shows_in_ttft_and_a_faster_link_cuts_it():
    fast = by_id(simulate_fleet(peer_cfg(bandwidth_gbps=100.0), trace=moving_client_trace()))["c/1"]
    slow = by_id(simulate_fleet(peer_cfg(bandwidth_gbps=1.0, latency_s=0.5), trace=moving_client_trace()))["c/1"]
    extra_s = (0.5 + 1000 * KV_BYTES / 1e9) - (0.002 + 1000 * KV_BYTES / 100e9)
    assert slow["ttft_s"] - fast["ttft_s"] == pytest.approx(extra_s, rel=1e-9)
    assert slow["queue_s"] - fast["queue_s"] == pytest.approx(extra_s, rel=1e-9)
    off = remote_cfg()
    del off["cluster"]["remote_tier"]
    recomputed = by_id(simulate_fleet(off, trace=moving_client_trace()))["c/1"]
    assert recomputed["recomputed_tokens"] == 1300 and recomputed["queue_s"] == 0.0
    assert fast["ttft_s"] < recomputed["ttft_s"]  # 1000 tokens over 100 GB/s beat computing them


def gain_trace(gain_tokens: int) -> Trace:
    """x/0 (A, 1000 tokens) and y/0 (A's first 1000 - gain) start together on replicas 0 and 1 (so
    nothing is copied then); z/0 goes to replica 0; v/0 (A, 1000) to replica 1, which caches
    1000 - gain of it while replica 0 caches all 1000."""
    invs = [
        Invocation("x/0", "x", "w", "a", 0, [Segment("shared", "A", 1000)], 0, 4, arrival_s=0.0),
        Invocation("y/0", "y", "w", "a", 0, [Segment("shared", "A", 1000 - gain_tokens)], 0, 4, arrival_s=0.0),
        Invocation("z/0", "z", "w", "a", 0, [Segment("unique", "", 10)], 0, 4, arrival_s=1.0),
        Invocation("v/0", "v", "w", "a", 0, [Segment("shared", "A", 1000)], 0, 4, arrival_s=2.0),
    ]
    return Trace({"seed": 0}, {"w": WorkflowDef("w", ["a"])}, invs)


def test_no_copy_when_the_peer_holds_less_than_one_block_more():
    short = simulate_fleet(peer_cfg(), trace=gain_trace(63))
    assert short.summary["details"]["peer_copy"]["copies"] == 0
    assert by_id(short)["v/0"]["recomputed_tokens"] == 63
    block = simulate_fleet(peer_cfg(), trace=gain_trace(64))
    peer = block.summary["details"]["peer_copy"]
    assert (peer["copies"], peer["tokens"], peer["bytes"]) == (1, 64, 64 * KV_BYTES)
    assert [r["peer_sent_bytes"] for r in block.replica_rows] == [64 * KV_BYTES, 0]
    v = by_id(block)["v/0"]
    assert v["hit_gpu_tokens"] == 936 and v["loaded_cpu_tokens"] + v["recomputed_tokens"] == 64


# ----- the destination's CPU tier ---------------------------------------------------------------------
def test_a_copy_is_cut_to_the_destination_cpu_capacity_and_none_without_a_cpu_tier():
    cfg = peer_cfg()
    cfg["cache"] = {"gpu_capacity_tokens": 12000, "cpu_capacity_tokens": 500}
    result = simulate_fleet(cfg, trace=moving_client_trace())
    peer = result.summary["details"]["peer_copy"]
    assert (peer["copies"], peer["tokens"], peer["bytes"]) == (1, 500, 500 * KV_BYTES)
    assert by_id(result)["c/1"]["loaded_cpu_tokens"] == 500
    cfg["cache"] = {"gpu_capacity_tokens": 12000, "cpu_capacity_tokens": 0}
    none = simulate_fleet(cfg, trace=moving_client_trace())
    assert none.summary["details"]["peer_copy"]["copies"] == 0
    assert by_id(none)["c/1"]["recomputed_tokens"] == 1300


@pytest.mark.parametrize("policy", ["hicache", "kvflow"])
def test_cpu_capacity_never_exceeded(policy, monkeypatch):
    """Three round-robin replicas with a small CPU tier: every copy that lands is checked at once,
    and every replica after every iteration (``sim.check_invariants``)."""
    placed = [0]
    add = sim.peer_copy.add_cpu_prefix

    def watched(cache, tokens, start, end):
        got = add(cache, tokens, start, end)
        cache.check_invariants()
        assert cache.cpu_used_tokens <= cache.config.cpu_capacity_tokens
        placed[0] += got
        return got

    monkeypatch.setattr(sim.peer_copy, "add_cpu_prefix", watched)
    cfg = thrash_cfg(3, "round_robin", policy)
    cfg["cache"] = {"gpu_capacity_tokens": 12000, "cpu_capacity_tokens": 1500}
    cfg["cluster"]["peer_copy"] = PEER
    result = simulate(cfg)
    peer = result.summary["details"]["peer_copy"]
    assert peer["copies"] > 0 and placed[0] == peer["tokens"] > 0
    assert peer["bytes"] == sum(r["peer_sent_bytes"] for r in result.replica_rows)
    for field in ("copies", "bytes", "tokens"):
        assert peer[field] == sum(r[f"peer_{field}"] for r in result.replica_rows)
    for r in result.replica_rows:
        assert r["prompt_tokens"] == r["hit_gpu_tokens"] + r["loaded_cpu_tokens"] + r["recomputed_tokens"]


# ----- peer or remote tier ------------------------------------------------------------------------
def test_choose_longer_by_a_block_then_first_to_finish():
    peer, remote = Offer(0, 0, 1000, 2.0), Offer(REMOTE, 0, 960, 1.0)
    assert choose(peer, remote, 64) is remote  # 40 tokens apart: the faster
    assert choose(Offer(0, 0, 1000, 0.5), remote, 64) == Offer(0, 0, 1000, 0.5)
    assert choose(Offer(0, 0, 1024, 9.0), remote, 64).source == 0  # a block longer: the longer, though slower
    assert choose(Offer(0, 0, 1000, 1.0), remote, 64) is remote  # a tie: the remote tier
    assert choose(None, remote, 64) is remote and choose(peer, None, 64) is peer and choose(None, None, 64) is None


def test_link_finish_time_counts_its_queue():
    env = simpy.Environment()
    link = RemoteLink(env, bandwidth_gbps=1.0, latency_s=0.5)
    assert link.finish_s(10**9, urgent=True) == 1.5  # idle: latency + bytes / rate
    link.copy(10**9, lambda: None, urgent=False)  # on the link until 1.5
    link.copy(2 * 10**9, lambda: None, urgent=False)  # queued background: 2.5 s
    link.copy(10**9, lambda: None, urgent=True)  # queued urgent: 1.5 s, goes first
    env.run(until=0.25)
    assert link.finish_s(0, urgent=True) == pytest.approx(1.25 + 1.5 + 0.5)
    assert link.finish_s(0, urgent=False) == pytest.approx(1.25 + 1.5 + 2.5 + 0.5)


def test_the_faster_source_wins_when_both_hold_the_prefix():
    """c/1 on replica 1: replica 0 offers 1000 tokens, the remote tier 960 (whole blocks): within a
    block, so the one that finishes first serves it."""
    fast_peer = simulate_fleet(peer_cfg(remote={}, bandwidth_gbps=100.0), trace=moving_client_trace())
    d = fast_peer.summary["details"]
    assert d["peer_copy"]["won"] == {"peer": 1, "remote": 0} and d["peer_copy"]["tokens"] == 1000
    assert d["remote_tier"]["reads"] == 0 and d["remote_tier"]["hit_tokens"] == 0
    assert by_id(fast_peer)["c/1"]["queue_s"] == pytest.approx(0.002 + 1000 * KV_BYTES / 100e9, rel=1e-9)
    slow_peer = simulate_fleet(peer_cfg(remote={}, bandwidth_gbps=1.0), trace=moving_client_trace())
    d = slow_peer.summary["details"]
    assert d["peer_copy"]["won"] == {"peer": 0, "remote": 1} and d["peer_copy"]["copies"] == 0
    assert d["remote_tier"]["hit_tokens"] == 960
    assert by_id(slow_peer)["c/1"]["queue_s"] == pytest.approx(0.002 + 960 * KV_BYTES / 10e9, rel=1e-9)
    assert list(slow_peer.replica_rows[0]) == [*REPLICA_FIELDS, *REMOTE_FIELDS, *PEER_FIELDS]


def test_a_peer_a_block_longer_wins_though_slower():
    """A 512-token pool keeps c/0's first 8 blocks; replica 0 holds all 1000 tokens: 488 more (both
    offered: ``won`` counts only then)."""
    result = simulate_fleet(peer_cfg(remote={"capacity_tokens": 512}, bandwidth_gbps=1.0), trace=moving_client_trace())
    d = result.summary["details"]
    assert d["peer_copy"]["won"] == {"peer": 1, "remote": 0} and d["peer_copy"]["tokens"] == 1000
    assert d["remote_tier"]["hit_tokens"] == 0


def test_a_busy_peer_link_sends_the_copy_to_the_remote_tier():
    """c/0 and d/0 run on replica 0; at t=5 c/1 and d/1 go to replica 1 (round robin, unique calls
    in between). The peer link (11.2 GB/s, 1000 tokens) beats the remote tier (10 GB/s, 960) for
    c/1; d/1 would queue behind that copy on replica 0's link, so the remote tier serves it."""

    def call(rid: str, seg: Segment, at_s: float) -> Invocation:
        return Invocation(rid, rid.split("/")[0], "w", "a", 0, [seg], 0, 4, arrival_s=at_s)

    unique = Segment("unique", "", 10)
    invs = [call("c/0", Segment("shared", "c", 1000), 0.0), call("u/0", unique, 0.0)]
    invs += [call("d/0", Segment("shared", "d", 1000), 0.0), call("v/0", unique, 0.0)]
    invs += [call("w/0", unique, 5.0), call("c/1", Segment("shared", "c", 1300), 5.0)]
    invs += [call("x/0", unique, 5.0), call("d/1", Segment("shared", "d", 1300), 5.0)]
    trace = Trace({"seed": 0}, {"w": WorkflowDef("w", ["a"])}, invs)
    result = simulate_fleet(peer_cfg(remote={}, bandwidth_gbps=11.2), trace=trace)
    peer_s, remote_s = 0.002 + 1000 * KV_BYTES / 11.2e9, 0.002 + 960 * KV_BYTES / 10e9
    assert peer_s < remote_s < 2 * peer_s
    d = result.summary["details"]
    assert d["peer_copy"]["won"] == {"peer": 1, "remote": 1}
    assert d["peer_copy"]["tokens"] == 1000 and d["remote_tier"]["hit_tokens"] == 960
    rows = by_id(result)
    assert rows["c/1"]["loaded_cpu_tokens"] == 1000 and rows["d/1"]["loaded_cpu_tokens"] == 960
    assert rows["c/1"]["queue_s"] == pytest.approx(peer_s, rel=1e-9)
    assert rows["d/1"]["queue_s"] >= remote_s - 1e-12


# ----- think-time prefetch from a peer ------------------------------------------------------------
def test_workflow_aware_prefetch_may_come_from_the_peer():
    """overloaded_home_trace: a's prefetch to replica 1 has two sources, replica 0 (1000 tokens) and
    the remote tier (960); a fast peer link serves it, and a/1 finds all 1000 in place."""
    cfg = peer_cfg("workflow_aware", remote={"prefetch": True}, bandwidth_gbps=100.0)
    cfg["cluster"]["balance_abs_threshold"] = 0
    result = simulate_fleet(cfg, trace=overloaded_home_trace())
    d = result.summary["details"]
    assert d["remote_tier"]["prefetch"] == {"issued": 1, "early": 1, "late": 0, "wasted": 0, "tokens": 0}
    assert d["peer_copy"]["prefetch_tokens"] == 1000 and d["peer_copy"]["tokens"] == 0
    assert d["remote_tier"]["reads"] == 0
    assert by_id(result)["a/1"]["loaded_cpu_tokens"] == 1000


# ----- one replica, off ---------------------------------------------------------------------------
def test_one_replica_with_peer_copy_is_the_single_engine():
    for name, cfg, trace in cases():
        one = {**cfg, "cluster": {"replicas": 1, "router": "round_robin", "peer_copy": PEER}}
        _assert_pinned(name, simulate(one, trace=trace).summary)
        fleet = simulate_fleet(one, trace=trace).summary
        _assert_pinned(name, fleet)
        assert fleet["details"]["peer_copy"]["copies"] == 0


@pytest.mark.parametrize("router,policy", sorted(BEFORE_REMOTE))
def test_fleet_without_peer_copy_keeps_its_numbers(router, policy):
    cfg = thrash_cfg(3, router, policy)
    cfg["cache"] = {"gpu_capacity_tokens": 12000, "cpu_capacity_tokens": 6000}
    cfg["cluster"]["peer_copy"] = None
    result = simulate(cfg)
    s = result.summary
    hit, latency, d2h, requests = BEFORE_REMOTE[(router, policy)]
    assert s["hit_rate_gpu"] == hit and s["workflow_latency_mean_s"] == pytest.approx(latency, rel=1e-12)
    assert s["d2h_bytes"] == d2h and [r["requests"] for r in result.replica_rows] == requests
    assert list(result.replica_rows[0]) == list(REPLICA_FIELDS) and "peer_copy" not in s["details"]


def test_peer_copy_off_is_identical_to_no_key():
    base = thrash_cfg(2, "round_robin", "hicache")
    base["cache"] = {"gpu_capacity_tokens": 12000, "cpu_capacity_tokens": 6000}
    null = {**base, "cluster": {**base["cluster"], "peer_copy": None}}
    a, b = simulate(base), simulate(null)
    drop = ("wall_s",)
    assert {k: v for k, v in a.summary.items() if k not in drop} == {
        k: v for k, v in b.summary.items() if k not in drop
    }
    assert a.replica_rows == b.replica_rows and a.rows == b.rows
    on = simulate({**base, "cluster": {**base["cluster"], "peer_copy": PEER}})
    assert on.summary["details"]["peer_copy"]["copies"] > 0


# ----- kvflow-sim ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "args,needle",
    [
        (["cluster.replicas=2", "+cluster.peer_copy.nope=1"], "cluster.peer_copy.nope=1: unknown key"),
        (
            ["cluster.replicas=2", "cluster.peer_copy={bandwidth_gbps:-1}"],
            "cluster.peer_copy.bandwidth_gbps=-1: must be a number > 0",
        ),
        (
            ["cluster.replicas=2", "cluster.peer_copy={bandwidth_gbps:1,latency_s:-0.1}"],
            "cluster.peer_copy.latency_s=-0.1: must be a number >= 0",
        ),
        (["cluster.replicas=2", "cluster.peer_copy={latency_s:0}"], "cluster.peer_copy.bandwidth_gbps: missing"),
        (["cluster.peer_copy=rdma"], "cluster.peer_copy='rdma': must be a mapping"),
    ],
)
def test_bad_peer_copy_config_is_one_line_exit_2(tmp_path, args, needle):
    p = run(tmp_path, *SMALL, *args)
    assert p.returncode == 2, p.stderr
    assert needle in p.stderr, p.stderr
    assert "Traceback" not in p.stderr and len(p.stderr.strip().splitlines()) == 1


def test_peer_copy_with_one_replica_runs(tmp_path):
    p = run(tmp_path, *SMALL, "cluster.peer_copy={bandwidth_gbps:50}")
    assert p.returncode == 0, p.stderr
    assert not (tmp_path / "run" / "replicas.csv").exists()


def test_fleet_run_with_peer_copy_writes_its_columns(tmp_path):
    p = run(tmp_path, *SMALL, "cluster.replicas=2", "cluster.peer_copy={bandwidth_gbps:50,latency_s:0.00001}")
    assert p.returncode == 0, p.stderr
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["details"]["peer_copy"]["bandwidth_gbps"] == 50
    with open(tmp_path / "run" / "replicas.csv") as f:
        header = next(csv.reader(f))
    assert header == [*REPLICA_FIELDS, *PEER_FIELDS]
