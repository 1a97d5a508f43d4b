"""Real (torch) backend on CPU: greedy outputs with prefix reuse equal a cache-free reference, KV
survives offload/load bit for bit and follows radix splits, ops are acknowledged only after their
copy finished, and the run directory has the shared format."""

from __future__ import annotations

import csv
import time

import pytest

from harness.run_dir import validate_run_dir

torch = pytest.importorskip("torch")

from kvflow.cache import CacheConfig, KVCacheManager  # noqa: E402
from kvflow.model_spec import load_model_spec  # noqa: E402
from kvflow.ops import Load, Offload  # noqa: E402
from kvflow.policies import make_policy  # noqa: E402
from real.config import compose  # noqa: E402
from real.executor import CopyExecutor  # noqa: E402
from real.kv_store import KVStore  # noqa: E402
from real.model import Seq, Transformer  # noqa: E402
from real.runner import RealOptions, build_trace, run_real  # noqa: E402

torch.set_num_threads(1)
SPEC = load_model_spec("tiny")


@pytest.fixture(scope="module")
def net() -> Transformer:
    return Transformer(SPEC, "cpu", torch.float32, seed=0)


def reference(net: Transformer, tokens: list[int], output_tokens: int) -> list[int]:
    """Greedy generation from scratch: whole prompt in one prefill, no cache of any kind."""
    kv = net.new_kv(len(tokens) + output_tokens)
    out = net.greedy(net.forward(tokens, [Seq(kv, 0, len(tokens))]))
    while len(out) < output_tokens:
        out += net.greedy(net.forward([out[-1]], [Seq(kv, len(tokens) + len(out) - 1, 1)]))
    return out


def _run(net, overrides, **opts):
    cfg = compose(["model=tiny", *overrides])
    trace = build_trace(cfg["workload"], 0)
    res = run_real(cfg, trace, opts=RealOptions(device="cpu", check_invariants=True, **opts), net=net)
    return trace, res


def _check_outputs(net, trace, res):
    for inv in trace.invocations:
        req = res.driver.requests[inv.id]
        assert req.generated == reference(net, trace.prompt_tokens(inv), inv.output_tokens), inv.id


SEQ = [
    "workload=sequential",
    "workload.params.agents=3",
    "workload.params.runs=2",
    "workload.params.fixed_tokens=48",
    "workload.params.dynamic_tokens=8",
    "workload.params.output_tokens=6",
]


def test_gpu_hits_match_uncached(net):
    trace, res = _run(net, ["policy=sglang", *SEQ, "cache.gpu_capacity_tokens=400"])
    rows = res.rows
    assert sum(r["hit_gpu_tokens"] for r in rows) > 0
    _check_outputs(net, trace, res)


def test_cpu_reload_after_offload_matches_uncached(net):
    # 3 agents x 48 fixed tokens do not fit next to a running request: fixed prompts go to CPU and back
    trace, res = _run(net, ["policy=hicache", *SEQ, "cache.gpu_capacity_tokens=110"])
    assert sum(r["loaded_cpu_tokens"] for r in res.rows) > 0
    assert res.summary["h2d_bytes"] > 0 and res.summary["d2h_bytes"] > 0
    _check_outputs(net, trace, res)


def test_partial_hits_and_prefetch_match_uncached(net):
    # branches: the two candidates of a stage share half their fixed prompt -> partial hits (splits)
    trace, res = _run(
        net,
        [
            "policy=kvflow",
            "workload=branches",
            "workload.params.agents=3",
            "workload.params.runs=3",
            "workload.params.fixed_tokens=40",
            "workload.params.dynamic_tokens=8",
            "workload.params.output_tokens=5",
            "cache.gpu_capacity_tokens=150",
        ],
    )
    partial = [r for r in res.rows if 0 < r["hit_gpu_tokens"] + r["loaded_cpu_tokens"] < r["fixed_tokens"]]
    assert partial, "expected at least one partial prefix hit"
    assert res.loop.store.splits > 0
    _check_outputs(net, trace, res)


def test_batched_concurrent_workflows_match_uncached(net):
    trace, res = _run(
        net,
        [
            "policy=kvflow",
            "workload=fanout",
            "workload.params.workflows=2",
            "workload.params.width=3",
            "workload.params.fixed_tokens=32",
            "workload.params.dynamic_tokens=8",
            "workload.params.output_tokens=6",
            "engine.chunk_tokens=64",
            "cache.gpu_capacity_tokens=400",
        ],
    )
    assert res.loop.iteration_log and max(len(s) for k, s, _, _ in res.loop.iteration_log if k == "decode") > 1
    _check_outputs(net, trace, res)


def _store_and_cache(cpu_tokens=1000):
    cache = KVCacheManager(
        CacheConfig(
            gpu_capacity_tokens=1000, cpu_capacity_tokens=cpu_tokens, kv_bytes_per_token=SPEC.kv_bytes_per_token
        ),
        make_policy("lru"),
    )
    store = KVStore(SPEC.layers, SPEC.kv_heads, SPEC.head_dim, torch.device("cpu"), torch.float32, cpu_arena_tokens=256)
    cache.tree.on_split = store.on_split
    return cache, store


def test_offload_load_roundtrip_is_bit_identical():
    cache, store = _store_and_cache()
    node = cache.tree.insert_below(cache.tree.root, list(range(100, 140)))
    original = torch.randn((40, *store.token_shape))
    store.new_gpu(node).copy_(original)
    ex = CopyExecutor(store, time.perf_counter, copy_delay_s=0.02)
    off = Offload(node, 40, 40 * SPEC.kv_bytes_per_token)
    assert ex.start(off) is False
    assert ex.poll() == []  # the copy is still sleeping: nothing may complete yet
    assert off.op_id not in ex.acked
    while not ex.poll():
        time.sleep(0.005)
    assert off.op_id in ex.acked
    store.free_gpu(node.node_id)
    assert node.node_id not in store.gpu
    load = Load(node, 40, 40 * SPEC.kv_bytes_per_token)
    ex.start(load)
    assert ex.poll() == []
    for op in ex.drain() or []:
        assert op is load
    assert torch.equal(store.gpu[node.node_id], original)
    assert torch.equal(store.cpu_view(node.node_id), original)
    ex.close()


def test_kv_follows_splits_on_both_tiers():
    cache, store = _store_and_cache()
    tokens = list(range(500, 530))
    node = cache.tree.insert_below(cache.tree.root, tokens)
    data = torch.randn((30, *store.token_shape))
    store.new_gpu(node).copy_(data)
    store.new_cpu(node).copy_(data)
    head = cache.tree.split(node, 12)
    assert torch.equal(store.gpu[head.node_id], data[:12]) and torch.equal(store.gpu[node.node_id], data[12:])
    assert torch.equal(store.cpu_view(head.node_id), data[:12])
    assert torch.equal(store.cpu_view(node.node_id), data[12:])
    assert store.gpu_tokens == 30 and store.cpu_tokens == 30
    store.free_cpu(node.node_id)
    store.free_cpu(head.node_id)
    assert store.cpu_tokens == 0 and store.cpu_pool.arenas[0].free == [(0, 256)]  # ranges coalesce


def test_no_op_acknowledged_before_its_copy(net):
    # slow copies: acks must wait for them; the loop asserts each acked op's copy finished
    trace, res = _run(net, ["policy=kvflow", *SEQ, "cache.gpu_capacity_tokens=110"], copy_delay_s=0.003)
    ex = res.loop.executor
    assert res.loop.acks, "expected acknowledged ops"
    assert all(op_id in ex.acked for op_id, _ in res.loop.acks)
    assert ex.copies["h2d"] > 0 and ex.copies["d2h"] > 0
    assert len(ex.timeline) == ex.copies["h2d"] + ex.copies["d2h"]
    _check_outputs(net, trace, res)


def test_run_directory_format(net, tmp_path):
    cfg = compose(["model=tiny", "policy=hicache", *SEQ, "cache.gpu_capacity_tokens=110"])
    res = run_real(cfg, out=tmp_path / "run", opts=RealOptions(device="cpu"), net=net)
    out = res.out
    summary = validate_run_dir(out)  # the one schema every backend's run directory passes
    assert summary["backend"] == "real" and summary["policy"] == "hicache"
    with (out / "requests.csv").open() as f:
        header = next(csv.reader(f))
    for col in (
        "request_id",
        "client_id",
        "agent_id",
        "arrival_s",
        "admit_s",
        "first_token_s",
        "finish_s",
        "queue_s",
        "ttft_s",
        "latency_s",
        "prompt_tokens",
        "output_tokens",
        "hit_gpu_tokens",
        "loaded_cpu_tokens",
        "recomputed_tokens",
        "loaded_bytes",
        "stalled_s",
    ):
        assert col in header
    assert (out / "workflows.csv").read_text().startswith("client_id,start_s,end_s,latency_s")
    assert (out / "config.yaml").exists() and (out / ".hydra" / "config.yaml").exists()
    assert (out / "timeline.csv").exists()
