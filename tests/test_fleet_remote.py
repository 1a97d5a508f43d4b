"""The shared remote KV tier of a fleet (sim/remote_tier.py, kvflow/cpu_fill.py, docs/fleet.md):
the CPU-tier verb on its own, a client moving replica with its prefix from the remote tier (exact
counts and times), workflow-aware prefetch, conservation and capacity, config errors, and remote off
leaving a fleet exactly as it was."""

from __future__ import annotations

import csv
import json

import pytest

from kvflow.cache import CacheConfig, KVCacheManager
from kvflow.cpu_fill import add_cpu_prefix, cpu_fill_start
from kvflow.policies import make_policy
from sim.fleet import REMOTE_FIELDS, REPLICA_FIELDS, simulate_fleet
from sim.remote_tier import RemoteTier
from sim.routers.prefix_aware import PrefixIndex
from sim.runner import simulate
from tests.test_fleet import SMALL, thrash_cfg
from tests.test_sim_cli import run
from traces.schema import Invocation, Segment, Trace, WorkflowDef

KV_BYTES = 131072  # llama-3.1-8b, bf16: 32 layers x 8 KV heads x 128 x 2 (K, V) x 2 bytes
REMOTE = {"capacity_tokens": 200_000, "bandwidth_gbps": 10.0, "latency_s": 0.002}


# ----- the verb: a prefix into the CPU tier -------------------------------------------------------
def cache(cpu: int = 1000, gpu: int = 1000, policy: str = "lru") -> KVCacheManager:
    return KVCacheManager(CacheConfig(gpu_capacity_tokens=gpu, cpu_capacity_tokens=cpu), make_policy(policy))


def test_cpu_prefix_goes_in_as_a_cpu_only_run():
    c = cache()
    tokens = list(range(300))
    assert cpu_fill_start(c, tokens, 300) == 0
    assert add_cpu_prefix(c, tokens, 0, 300) == 300
    c.check_invariants()
    assert c.cpu_used_tokens == 300 and c.gpu_used_tokens == 0
    m = c.match(tokens, touch=False)
    assert m.gpu_tokens == 0 and m.cpu_tokens == 300 and all(n.cpu and not n.gpu for n in m.cpu_nodes)
    assert add_cpu_prefix(c, tokens, 0, 300) == 0  # already there: nothing placed twice
    assert cpu_fill_start(c, tokens + [7, 8], 302) == 300


def test_cpu_prefix_extends_a_cpu_path_and_splits_where_it_forks():
    c = cache()
    add_cpu_prefix(c, list(range(100)), 0, 100)
    fork = list(range(60)) + [999] * 40
    assert cpu_fill_start(c, fork, 100) == 60
    assert add_cpu_prefix(c, fork, 60, 100) == 40
    c.check_invariants()
    assert c.cpu_used_tokens == 140
    assert c.match(fork, touch=False).cpu_tokens == 100 and c.match(list(range(100)), touch=False).cpu_tokens == 100


def test_cpu_prefix_never_below_a_node_without_a_cpu_copy():
    """A GPU-only node on the path blocks the run (CPU copies stay prefix-closed), and a run whose
    start the tree does not hold is not placed (it could not be reached)."""
    c = KVCacheManager(
        CacheConfig(gpu_capacity_tokens=1000, cpu_capacity_tokens=1000, write_policy="none"), make_policy("lru")
    )
    tokens = list(range(200))
    assert c.alloc_gpu(50) == 50
    c.insert(tokens[:50], 50)  # GPU only: no backup under write_policy=none
    assert cpu_fill_start(c, tokens, 200) is None
    assert add_cpu_prefix(c, tokens, 50, 200) == 0
    other = [5000 + t for t in range(200)]
    assert add_cpu_prefix(c, other, 100, 200) == 0  # the tree holds nothing of other[:100]
    c.check_invariants()
    assert c.cpu_used_tokens == 0


def test_cpu_prefix_respects_capacity_and_takes_what_fits():
    c = cache(cpu=250)
    add_cpu_prefix(c, list(range(1000, 1100)), 0, 100)  # an older CPU copy: an LRU victim
    placed = add_cpu_prefix(c, list(range(300)), 0, 300)
    c.check_invariants()
    assert placed == 250 and c.cpu_used_tokens == 250  # the victim went, then what was free
    assert c.stats.cpu_evicted_tokens == 100
    assert cpu_fill_start(c, list(range(300)), 300) == 250
    assert add_cpu_prefix(cache(cpu=0), list(range(10)), 0, 10) == 0


# ----- a client moves replica: its prefix comes from the remote tier -------------------------------
def moving_client_trace(think_s: float = 5.0) -> Trace:
    """One client, two calls; the second's prompt extends the first's (the first 1000 of 1300)."""
    invs = [
        Invocation("c/0", "c", "w", "a", 0, [Segment("shared", "hist", 1000)], 0, 4, arrival_s=0.0),
        Invocation("c/1", "c", "w", "a", 1, [Segment("shared", "hist", 1300)], 0, 4, deps=["c/0"], delay_s=think_s),
    ]
    return Trace({"seed": 0}, {"w": WorkflowDef("w", ["a"])}, invs)


def remote_cfg(router: str = "round_robin", replicas: int = 2, policy: str = "hicache", **remote) -> dict:
    cfg = thrash_cfg(replicas, router, policy)
    cfg["cache"] = {"gpu_capacity_tokens": 12000, "cpu_capacity_tokens": 6000}
    cfg["cluster"] = {**cfg["cluster"], "remote_tier": {**REMOTE, **remote}}
    return cfg


def test_moving_client_reads_its_prefix_from_the_remote_tier():
    """round_robin sends c/0 to replica 0 and c/1 to replica 1. c/0's 15 whole 64-token blocks (960
    tokens) are written at its end; c/1 on replica 1 (which caches nothing) reads those 960 tokens
    into replica 1's CPU tier, loads them back and computes the other 340."""
    result = simulate_fleet(remote_cfg(), trace=moving_client_trace())
    remote = result.summary["details"]["remote_tier"]
    assert (remote["reads"], remote["read_bytes"], remote["hit_tokens"]) == (1, 960 * KV_BYTES, 960)
    # writes: c/0's 15 blocks, then c/1's 5 new ones (20 blocks of 1300 tokens, 15 already there)
    assert (remote["writes"], remote["write_bytes"]) == (2, (960 + 320) * KV_BYTES)
    rows = {r["request_id"]: r for r in result.rows}
    assert rows["c/1"]["loaded_cpu_tokens"] == 960 and rows["c/1"]["recomputed_tokens"] == 340
    assert rows["c/1"]["hit_gpu_tokens"] == 0
    by_replica = result.replica_rows
    assert [r["remote_reads"] for r in by_replica] == [0, 1]
    assert [r["remote_hit_tokens"] for r in by_replica] == [0, 960]
    assert [r["remote_write_bytes"] for r in by_replica] == [960 * KV_BYTES, 320 * KV_BYTES]
    # the link: latency + bytes / (GB/s x 1e9) per transfer; c/1 waited for its read before queueing
    read_s = 0.002 + 960 * KV_BYTES / 10e9
    assert remote["link_busy_s"] == pytest.approx(3 * 0.002 + (960 + 960 + 320) * KV_BYTES / 10e9, rel=1e-12)
    assert rows["c/1"]["queue_s"] >= read_s - 1e-12


def test_without_the_remote_tier_the_moved_client_recomputes():
    cfg = remote_cfg()
    cfg["cluster"] = {k: v for k, v in cfg["cluster"].items() if k != "remote_tier"}
    result = simulate_fleet(cfg, trace=moving_client_trace())
    rows = {r["request_id"]: r for r in result.rows}
    assert rows["c/1"]["recomputed_tokens"] == 1300 and "remote_tier" not in result.summary["details"]
    assert list(result.replica_rows[0]) == list(REPLICA_FIELDS)


def test_a_slower_link_delays_the_call_by_the_read():
    fast = simulate_fleet(remote_cfg(bandwidth_gbps=100.0), trace=moving_client_trace())
    slow = simulate_fleet(remote_cfg(bandwidth_gbps=1.0, latency_s=0.5), trace=moving_client_trace())
    extra_s = (0.5 + 960 * KV_BYTES / 1e9) - (0.002 + 960 * KV_BYTES / 100e9)
    fast_s, slow_s = ({r["request_id"]: r["queue_s"] for r in res.rows}["c/1"] for res in (fast, slow))
    assert slow_s - fast_s == pytest.approx(extra_s, rel=1e-9)


# ----- workflow-aware prefetch ---------------------------------------------------------------------
def overloaded_home_trace(think_s: float = 5.0) -> Trace:
    """a/0 goes to replica 0, x/0 (short) to replica 1, y/0 (long) to replica 0. When a/0 ends its
    home (replica 0, running y) carries one request more than replica 1 (x done): with
    balance_abs_threshold=0 the prefetch moves a's prefix to replica 1 during a's think time."""
    invs = [
        Invocation("a/0", "a", "w", "a", 0, [Segment("shared", "a", 1000)], 0, 4, arrival_s=0.0),
        Invocation("x/0", "x", "w", "a", 0, [Segment("unique", "", 100)], 0, 1, arrival_s=0.001),
        Invocation("y/0", "y", "w", "a", 0, [Segment("unique", "", 100)], 0, 3000, arrival_s=0.002),
        Invocation("a/1", "a", "w", "a", 1, [Segment("shared", "a", 1300)], 0, 4, deps=["a/0"], delay_s=think_s),
    ]
    return Trace({"seed": 0}, {"w": WorkflowDef("w", ["a"])}, invs)


def test_prefetch_moves_the_prefix_to_the_next_calls_replica_early():
    cfg = remote_cfg("workflow_aware", prefetch=True)
    cfg["cluster"]["balance_abs_threshold"] = 0
    result = simulate_fleet(cfg, trace=overloaded_home_trace())
    remote = result.summary["details"]["remote_tier"]
    assert remote["prefetch"] == {"issued": 1, "early": 1, "late": 0, "wasted": 0, "tokens": 960}
    assert remote["hit_tokens"] == 0  # a/1 found its prefix already in place: no read at submit
    rows = {r["request_id"]: r for r in result.rows}
    assert result.replica_rows[1]["remote_reads"] == 1
    assert rows["a/1"]["loaded_cpu_tokens"] == 960 and rows["a/1"]["recomputed_tokens"] == 340
    off = simulate_fleet(
        {**cfg, "cluster": {**cfg["cluster"], "remote_tier": {**REMOTE}}}, trace=overloaded_home_trace()
    )
    assert off.summary["details"]["remote_tier"]["prefetch"]["issued"] == 0
    off_rows = {r["request_id"]: r for r in off.rows}
    # without prefetch a/1 moves at its submit and waits for the same read
    assert off.summary["details"]["remote_tier"]["hit_tokens"] == 960 and off_rows["a/1"]["loaded_cpu_tokens"] == 960
    read_s = 0.002 + 960 * KV_BYTES / 10e9
    assert off_rows["a/1"]["queue_s"] - rows["a/1"]["queue_s"] == pytest.approx(read_s, rel=1e-9)


def test_a_call_during_its_prefetch_is_late_and_waits_for_it():
    """Think time 0.02 s: a/0's write takes w = 2 ms + 960 x 128 KiB / 10 GB/s, the prefetch another
    w; a/1 arrives in between and waits for the prefetch's end (2w - 0.02 s), then loads the prefix."""
    cfg = remote_cfg("workflow_aware", prefetch=True)
    cfg["cluster"]["balance_abs_threshold"] = 0
    result = simulate_fleet(cfg, trace=overloaded_home_trace(think_s=0.02))
    remote = result.summary["details"]["remote_tier"]
    assert remote["prefetch"] == {"issued": 1, "early": 0, "late": 1, "wasted": 0, "tokens": 960}
    w = 0.002 + 960 * KV_BYTES / 10e9
    rows = {r["request_id"]: r for r in result.rows}
    assert rows["a/1"]["queue_s"] == pytest.approx(2 * w - 0.02, rel=1e-9)
    assert rows["a/1"]["loaded_cpu_tokens"] == 960


def test_a_prefetch_to_a_replica_the_call_skips_is_wasted():
    """y ends and z (long) lands on replica 1 during a's think time: a/1's pinned home is now the
    busier one, so it goes back to replica 0 (where a's KV still is) and the prefetch was wasted."""
    trace = overloaded_home_trace()
    trace.invocations[2].output_tokens = 100  # y ends before a/1 ...
    trace.invocations.append(Invocation("z/0", "z", "w", "a", 0, [Segment("unique", "", 100)], 0, 3000, arrival_s=1.0))
    cfg = remote_cfg("workflow_aware", prefetch=True)
    cfg["cluster"]["balance_abs_threshold"] = 0
    result = simulate_fleet(cfg, trace=Trace(trace.meta, trace.workflows, trace.invocations))
    assert result.summary["details"]["remote_tier"]["prefetch"] == {
        "issued": 1,
        "early": 0,
        "late": 0,
        "wasted": 1,
        "tokens": 960,
    }
    rows = {r["request_id"]: r for r in result.rows}
    assert rows["a/1"]["hit_gpu_tokens"] + rows["a/1"]["loaded_cpu_tokens"] >= 1000 - 1000 % 64


def test_no_prefetch_after_a_clients_last_call():
    trace = overloaded_home_trace()
    trace.invocations.pop()  # no a/1
    cfg = remote_cfg("workflow_aware", prefetch=True)
    cfg["cluster"]["balance_abs_threshold"] = 0
    remote = simulate_fleet(cfg, trace=trace).summary["details"]["remote_tier"]
    assert remote["prefetch"]["issued"] == 0  # the driver ended client a before its write landed


# ----- conservation, capacity, remote off -----------------------------------------------------------
@pytest.mark.parametrize("router", ["round_robin", "workflow_aware", "kv_aware"])
def test_bytes_conserved_and_capacity_never_exceeded(router, monkeypatch):
    peak = [0]
    insert = PrefixIndex.insert

    def watched(self, keys):
        insert(self, keys)
        peak[0] = max(peak[0], len(self.keys))

    monkeypatch.setattr(PrefixIndex, "insert", watched)
    cfg = remote_cfg(router, replicas=3, policy="kvflow", capacity_tokens=4096)
    cfg["sim"] = {"timeline": False, "check_invariants": True}
    result = simulate(cfg)
    remote = result.summary["details"]["remote_tier"]
    assert remote["held_tokens"] <= 4096 and peak[0] * 64 <= 4096
    assert remote["write_bytes"] >= remote["held_tokens"] * KV_BYTES
    assert remote["read_bytes"] >= remote["hit_tokens"] * KV_BYTES
    assert remote["writes"] > 0
    for field in REMOTE_FIELDS:
        assert sum(r[field] for r in result.replica_rows) == remote[field.removeprefix("remote_")]
    for r in result.replica_rows:
        assert r["prompt_tokens"] == r["hit_gpu_tokens"] + r["loaded_cpu_tokens"] + r["recomputed_tokens"]


def test_remote_written_is_held_plus_in_flight_when_nothing_is_evicted():
    from harness.setup import prepare
    from sim.fleet import run_fleet
    from sim.routers.prefix_aware import block_keys

    cfg = remote_cfg("round_robin", policy="kvflow")
    setup = prepare(cfg)
    _, fleet, _ = run_fleet(cfg, setup, 2)
    remote: RemoteTier = fleet.remote  # type: ignore[assignment]
    distinct = {k for inv in setup.trace.invocations for k in block_keys(setup.trace.prompt_array(inv), 64)}
    written = sum(c.write_bytes for c in remote.counts) // KV_BYTES
    assert written == len(distinct) * 64  # each block written once
    assert remote.held_tokens_total + len(remote.pending) * 64 == written


def test_remote_index_stays_prefix_closed_under_eviction():
    """A small pool evicts all the time; every prompt's held blocks are still a prefix of its chain
    (what the binary search in ``RemoteTier.held_blocks`` relies on)."""
    from harness.setup import prepare
    from sim.fleet import run_fleet
    from sim.remote_tier import prefix_keys

    cfg = remote_cfg("kv_aware", replicas=3, policy="kvflow", capacity_tokens=2048)
    setup = prepare(cfg)
    _, fleet, _ = run_fleet(cfg, setup, 3)
    remote: RemoteTier = fleet.remote  # type: ignore[assignment]
    assert remote.held_tokens_total <= 2048
    held_somewhere = 0
    for inv in setup.trace.invocations:
        held = [k in remote.index.keys for k in prefix_keys(setup.trace.prompt_array(inv), 64)]
        assert held == sorted(held, reverse=True), inv.id  # True... then False...
        held_somewhere += any(held)
    assert held_somewhere > 0


# figures of 3-replica fleets measured before the remote tier existed (commit 997b0d4): the off path
# must keep them (tests/test_fleet.py pins the one-replica path against the golden file)
BEFORE_REMOTE = {
    ("round_robin", "hicache"): (0.32265625, 10.5580430148453, 8173649920, [32, 32, 32]),
    ("kv_aware", "kvflow"): (0.625, 8.877850228487848, 3145728000, [36, 36, 24]),
    ("workflow_aware", "kvflow"): (0.625, 8.877850228487848, 3145728000, [36, 36, 24]),
}


@pytest.mark.parametrize("router,policy", sorted(BEFORE_REMOTE))
def test_fleet_without_remote_tier_keeps_its_numbers(router, policy):
    cfg = thrash_cfg(3, router, policy)
    cfg["cache"] = {"gpu_capacity_tokens": 12000, "cpu_capacity_tokens": 6000}
    result = simulate(cfg)
    s = result.summary
    hit, latency, d2h, requests = BEFORE_REMOTE[(router, policy)]
    assert s["hit_rate_gpu"] == hit and s["workflow_latency_mean_s"] == pytest.approx(latency, rel=1e-12)
    assert s["d2h_bytes"] == d2h and [r["requests"] for r in result.replica_rows] == requests
    assert list(result.replica_rows[0]) == list(REPLICA_FIELDS)


def test_remote_on_changes_a_fleet_and_off_leaves_it_alone():
    """Off: the summary has no remote keys and equals a run without the key (the golden fleet
    numbers in tests/test_fleet.py are unchanged by construction); on: the traffic shows."""
    base = thrash_cfg(2, "round_robin", "kvflow")
    base["cache"] = {"gpu_capacity_tokens": 12000, "cpu_capacity_tokens": 6000}
    null = {**base, "cluster": {**base["cluster"], "remote_tier": None}}
    a, b = simulate(base), simulate(null)
    drop = ("wall_s",)
    assert {k: v for k, v in a.summary.items() if k not in drop} == {
        k: v for k, v in b.summary.items() if k not in drop
    }
    assert a.replica_rows == b.replica_rows and "remote_tier" not in a.summary["details"]
    on = simulate(remote_cfg("round_robin", policy="kvflow"))
    assert on.summary["details"]["remote_tier"]["hit_tokens"] > 0


# ----- kvflow-sim ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "args,needle",
    [
        (["cluster.replicas=2", "+cluster.remote_tier.nope=1"], "cluster.remote_tier.nope=1: unknown key"),
        (
            ["cluster.replicas=2", "cluster.remote_tier={capacity_tokens:4096,bandwidth_gbps:-1}"],
            "cluster.remote_tier.bandwidth_gbps=-1: must be a number > 0",
        ),
        (
            ["cluster.replicas=2", "cluster.remote_tier={capacity_tokens:4096}"],
            "cluster.remote_tier.bandwidth_gbps: missing",
        ),
        (
            ["cluster.remote_tier={capacity_tokens:4096,bandwidth_gbps:1}"],
            "cluster.remote_tier: needs cluster.replicas >= 2",
        ),
        (
            ["cluster.replicas=2", "cluster.remote_tier={capacity_tokens:10,bandwidth_gbps:1}"],
            "cluster.remote_tier.capacity_tokens=10: must be >= cluster.block_tokens=64",
        ),
        (
            ["cluster.replicas=2", "cluster.remote_tier={capacity_tokens:4096,bandwidth_gbps:1,prefetch:true}"],
            "cluster.remote_tier.prefetch=True: needs cluster.router=workflow_aware",
        ),
    ],
)
def test_bad_remote_tier_config_is_one_line_exit_2(tmp_path, args, needle):
    p = run(tmp_path, *SMALL, *args)
    assert p.returncode == 2, p.stderr
    assert needle in p.stderr, p.stderr
    assert "Traceback" not in p.stderr and len(p.stderr.strip().splitlines()) == 1


def test_fleet_run_with_remote_tier_writes_its_columns(tmp_path):
    p = run(
        tmp_path,
        *SMALL,
        "cluster.replicas=2",
        "cluster.router=workflow_aware",
        "cluster.remote_tier={capacity_tokens:100000,bandwidth_gbps:10,latency_s:0.001,prefetch:true}",
    )
    assert p.returncode == 0, p.stderr
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["details"]["remote_tier"]["writes"] > 0
    with open(tmp_path / "run" / "replicas.csv") as f:
        header = next(csv.reader(f))
    assert header == [*REPLICA_FIELDS, *REMOTE_FIELDS]
