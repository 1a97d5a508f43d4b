"""pause_aware ranking rules on hand-built trees, the cache's session hooks, and the prefetch
before resume (kvflow/prefetch/resume.py)."""

from __future__ import annotations

import pytest

from kvflow.cache import CacheConfig, KVCacheManager
from kvflow.engine import Engine, EngineConfig, Request
from kvflow.policies import make_policy
from kvflow.policies.pause_aware import NO_USER, PAUSED, RUNNING
from kvflow.prefetch import ResumePrefetcher
from kvflow.radix import InFlight
from tests.test_policies import evictable_leaves, order, put, seq


def make(gpu: int = 1000, cpu: int = 0, write_policy: str = "none", **kwargs) -> KVCacheManager:
    config = CacheConfig(gpu_capacity_tokens=gpu, cpu_capacity_tokens=cpu, write_policy=write_policy)
    return KVCacheManager(config, make_policy("pause_aware", **kwargs))


def call(cache: KVCacheManager, client: str, tokens: list[int], start_s: float, end_s: float | None) -> None:
    """One call of ``client``'s main agent: submitted at ``start_s``, finished at ``end_s`` (None: runs on)."""
    user = (client, "main")
    cache.session_submit(client, user, start_s)
    put(cache, tokens, 0, user)
    if end_s is not None:
        cache.session_finish(client, "main", len(tokens), end_s)


def test_no_user_first_then_latest_call_first_then_running():
    cache = make()
    put(cache, seq(900))  # no session uses it
    call(cache, "slow", seq(100), 0.0, 1.0)
    call(cache, "slow", seq(100) + seq(110), 101.0, 102.0)  # learned pause: 100 s
    call(cache, "fast", seq(200), 0.0, 1.0)
    call(cache, "fast", seq(200) + seq(210), 3.0, 104.0)  # learned pause: 2 s -> calls again sooner
    call(cache, "busy", seq(300), 50.0, None)  # a call in the engine
    policy = cache.policy
    assert policy.key(cache.match(seq(900), touch=False).last_node)[0] == NO_USER
    assert policy.key(cache.match(seq(300), touch=False).last_node)[0] == RUNNING
    assert policy.resume_s["slow"] > policy.resume_s["fast"]
    assert order(cache) == [seq(900), seq(110), seq(100), seq(210), seq(200), seq(300)]


def test_pause_refiles_and_resume_protects():
    """A pause lowers a session's keys (the hook reports it, so the heap order is right at once);
    a resume raises them."""
    cache = make()
    call(cache, "a", seq(100), 0.0, None)
    call(cache, "b", seq(200), 0.0, 1.0)
    cache.session_finish("a", "main", 4, 2.0)  # a pauses after b: predicted to call later
    cache.session_submit("b", ("b", "main"), 3.0)  # b calls again
    assert [cache.policy.key(cache.match(s, touch=False).last_node)[0] for s in (seq(100), seq(200))] == [
        PAUSED,
        RUNNING,
    ]
    assert order(cache) == [seq(100), seq(200)]


def test_overdue_session_is_repredicted_later():
    cache = make()
    for client in ("a", "b"):
        call(cache, client, seq(100 if client == "a" else 200), 0.0, 1.0)
        call(cache, client, seq(100 if client == "a" else 200), 11.0, 12.0)  # both learn 10 s
    # both paused at 12 s, predicted ~22 s
    policy = cache.policy
    first = policy.resume_s["a"]
    call(cache, "c", seq(300), 50.0, 51.0)  # an event long after the prediction: both re-predicted
    assert policy.resume_s["a"] > first and policy.resume_s["a"] > 51.0
    assert policy.resume_s["a"] == pytest.approx(policy.resume_s["b"])
    assert order(cache)[-1] == seq(300)  # c paused now with the learned pause: calls soonest


def test_ended_session_goes_first_among_sessions():
    cache = make()
    call(cache, "a", seq(100), 0.0, 1.0)
    call(cache, "b", seq(200), 0.0, 1.0)
    cache.session_end("b", 1.0)
    assert order(cache) == [seq(200), seq(100)]


def test_shared_node_takes_the_soonest_session():
    cache = make()
    call(cache, "a", seq(100) + seq(110), 0.0, 1.0)
    call(cache, "b", seq(100) + seq(120), 0.0, None)  # b shares a's first 4 tokens and runs
    node = cache.match(seq(100), touch=False).last_node
    assert cache.policy.key(node)[0] == RUNNING
    assert cache.policy.key(cache.match(seq(100) + seq(110), touch=False).last_node)[0] == PAUSED


def test_backup_on_pause_starts_offloads_of_the_sessions_nodes():
    cache = make(cpu=1000)  # write_policy none: nothing is backed up on insert
    call(cache, "a", seq(100) + seq(110), 0.0, None)
    assert not cache.take_ops()
    cache.session_finish("a", "main", 8, 1.0)
    ops = cache.take_ops()
    assert sorted(op.tokens for op in ops) == [8] and all(op.node.inflight is InFlight.OFFLOAD for op in ops)
    off = make(cpu=1000, backup_on_pause=False)
    call(off, "a", seq(100), 0.0, 1.0)
    assert not off.take_ops()


def test_prefetch_limit_only_evicts_later_sessions():
    cache = make()
    call(cache, "a", seq(100), 0.0, 1.0)
    call(cache, "b", seq(200), 0.0, 5.0)
    a = cache.match(seq(100), touch=False).last_node
    b = cache.match(seq(200), touch=False).last_node
    policy = cache.policy
    assert policy.key(b) < policy.prefetch_limit(a)  # b calls later: fair game for a's prefetch
    assert not policy.key(a) < policy.prefetch_limit(b)


# ----- prefetch before resume --------------------------------------------------------------------
BYTES = 1000  # per token: a 100-token prompt copies in 100 * 1000 / 1e9 s at 1 GB/s = 0.1 ms


def engine(gpu: int = 400, cpu: int = 2000) -> Engine:
    config = CacheConfig(gpu_capacity_tokens=gpu, cpu_capacity_tokens=cpu, kv_bytes_per_token=BYTES, free_ops=False)
    cache = KVCacheManager(config, make_policy("pause_aware"))
    return Engine(cache, EngineConfig(chunk_tokens=10_000, prefetch=True, prefetch_mode="resume", h2d_gbps=1.0))


def run_call(eng: Engine, req: Request, now_s: float) -> float:
    """Submit ``req`` and run the engine (ops complete at once) until it finishes; returns the time."""
    eng.submit(req, now_s)
    while eng.has_work():
        for op in eng.take_ops():
            eng.complete_op(op, now_s)
        it = eng.step(now_s)
        if it is None:
            continue
        now_s += 0.01
        eng.finish(it, now_s)
    for op in eng.take_ops():
        eng.complete_op(op, now_s)
    return now_s


def evict_to_cpu(eng: Engine) -> None:
    eng.cache.evict_gpu(eng.cache.config.gpu_capacity_tokens)


def test_resume_prefetch_loads_before_the_predicted_call():
    eng = engine()
    assert isinstance(eng.prefetcher, ResumePrefetcher)
    prompt = list(range(1000, 1300))
    t = run_call(eng, Request("r0", "s", "main", prompt, 0, 4), 0.0)
    t = run_call(eng, Request("r1", "s", "main", prompt + [7] * 4, 0, 4), t + 20.0)  # learned: 20 s
    evict_to_cpu(eng)
    wake = eng.next_wake_s()
    assert wake is not None and t + 5.0 < wake < t + 20.0  # the prior and the session's 20 s, less the copy
    eng.step(wake - 0.001)
    assert not eng.take_ops()  # not due yet
    eng.step(wake)
    ops = eng.take_ops()
    assert ops and all(op.prefetch for op in ops)
    for op in ops:
        eng.complete_op(op, wake)
    run_call(eng, Request("r2", "s", "main", prompt + [7] * 8, 0, 4), wake + 1.0)
    stats = eng.cache.stats
    assert (stats.resume_early, stats.resume_late, stats.resume_wasted) == (1, 0, 0)
    assert stats.prefetch_used >= 1


def test_resume_prefetch_never_runs_while_a_request_waits():
    """A request waiting for memory keeps the GPU and the H2D channel: a due prefetch holds off."""
    eng = engine(gpu=400)
    a = list(range(1000, 1300))
    run_call(eng, Request("a0", "a", "main", a, 0, 4), 0.0)
    evict_to_cpu(eng)
    wake = eng.next_wake_s()
    assert wake is not None
    b = list(range(5000, 5390))  # needs 394 of the 400 GPU tokens
    eng.submit(Request("b0", "b", "main", b, 0, 4), wake)
    it = eng.step(wake)  # b is admitted first: the prefetch saw it waiting
    assert it is not None and it.prefill[0].request.request_id == "b0"
    assert not any(op.prefetch for op in eng.take_ops())
    assert eng.cache.stats.prefetch_issued == 0


def test_resume_prefetch_counts_late_and_wasted():
    eng = engine()
    prompt = list(range(1000, 1300))
    run_call(eng, Request("r0", "s", "main", prompt, 0, 4), 0.0)
    evict_to_cpu(eng)
    wake = eng.next_wake_s()
    eng.step(wake)
    ops = eng.take_ops()
    assert ops
    eng.submit(Request("r1", "s", "main", prompt + [3], 0, 4), wake)  # the call comes mid-copy
    assert eng.cache.stats.resume_late == 1
    for op in ops:
        eng.complete_op(op, wake)
    run_call(eng, Request("r1b", "s", "main", prompt + [3], 0, 4), wake)
    evict_to_cpu(eng)
    wake = eng.next_wake_s()
    eng.step(wake)
    for op in eng.take_ops():
        eng.complete_op(op, wake)
    evict_to_cpu(eng)  # evicted again before the call
    eng.finish_client("s", wake)
    assert eng.cache.stats.resume_wasted == 1


# ----- end to end: two real coding-agent sessions ------------------------------------------------
def test_session_policies_run_on_two_weka_sessions(tmp_path):
    import json
    import os
    import subprocess
    import sys

    from conftest import SHARED_DATA

    from harness.run_dir import validate_run_dir

    files = [SHARED_DATA / "weka" / n for n in ("trace_0254.json.gz", "trace_0277.json.gz")]
    if not all(f.exists() for f in files):
        pytest.skip("shared weka data not found")
    policies = ["hicache", "pause_aware", "pause_aware_prefetch", "ttl_pin"]
    args = [
        "experiment=coding_agents",
        f"workload.import_from='{','.join(map(str, files))}'",
        "workload.sessions=all",
        "workload.start=together",
        "cache.gpu_capacity_tokens=200000",  # below the two sessions' contexts: evictions happen
        "sim.check_invariants=true",
        "output.report=false",
        f"compare=[{','.join(policies)}]",
        f"hydra.run.dir={tmp_path}/run",
    ]
    p = subprocess.run(
        [sys.executable, "-c", "from sim.cli import main; main()", *args],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={**os.environ, "HYDRA_FULL_ERROR": "0"},
        timeout=300,
    )
    assert p.returncode == 0, p.stderr[-2000:]
    summaries = {}
    for policy in policies:
        run = tmp_path / "run" / policy
        validate_run_dir(run)
        summaries[policy] = json.loads((run / "summary.json").read_text())
    assert len({s["requests"] for s in summaries.values()}) == 1
    assert all(s["details"]["evicted_tokens"]["gpu"] > 0 for s in summaries.values())
    assert summaries["pause_aware_prefetch"]["prefetch_issued"] > 0
    resume = summaries["pause_aware_prefetch"]["details"]["resume_prefetch"]
    assert set(resume) == {"early", "late", "wasted"}


@pytest.mark.parametrize("policy_name", ["pause_aware", "ttl_pin"])
def test_key_order_rule_holds_under_random_session_events(policy_name):
    """After any sequence of pauses, resumes, re-predictions, expiries and ends, the heap's top is
    the evictable leaf with the lowest *current* key: every hook that lowers keys reported it."""
    import random

    rng = random.Random(11)
    config = CacheConfig(gpu_capacity_tokens=100_000, write_policy="none")
    kwargs = {"budget_tokens": 40} if policy_name == "ttl_pin" else {}
    cache = KVCacheManager(config, make_policy(policy_name, **kwargs))
    clients = [f"c{i}" for i in range(6)]
    running: set[str] = set()
    prompts = {c: seq(1000 * (i + 1), 4) for i, c in enumerate(clients)}
    ended: set[str] = set()
    now = 0.0
    for _ in range(300):
        now += rng.expovariate(0.2)
        client = rng.choice(clients)
        if client in ended:
            continue
        if client in running:
            prompts[client] = prompts[client] + seq(rng.randrange(10**6, 2 * 10**6), 4)
            put(cache, prompts[client], 0, (client, "main"))
            cache.session_finish(client, "main", len(prompts[client]), now)
            running.discard(client)
        elif rng.random() < 0.05:
            cache.session_end(client, now)
            ended.add(client)
        else:
            cache.session_submit(client, (client, "main"), now)
            running.add(client)
        leaves = evictable_leaves(cache)
        if not leaves:
            continue
        top = cache.tree.gpu_heap.top()
        assert top is not None
        assert cache.policy.key(top) == min(cache.policy.key(n) for n in leaves)


def test_backup_on_pause_never_copies_a_dynamic_suffix_when_backup_dynamic_is_off():
    """``backup_now`` (a pausing session's backups) follows ``backup_dynamic=false`` like the
    write-through rule: a suffix nobody's fixed prompt uses gets no CPU copy. Without this, a
    suffix was copied while its suffix parent was not, and the CPU tier lost prefix closure
    (kvflow_sessions on ChatDev: a GPU eviction dropped a node with CPU children)."""
    config = CacheConfig(gpu_capacity_tokens=1000, cpu_capacity_tokens=1000, write_policy="none", backup_dynamic=False)
    cache = KVCacheManager(config, make_policy("pause_aware"))
    user = ("s", "main")
    cache.session_submit("s", user, 0.0)
    put(cache, seq(100) + seq(500), 4, user)  # fixed prompt: the first 4 tokens; the rest a suffix
    node = cache.match(seq(100) + seq(500), touch=False).last_node
    assert node.suffix and not node.users
    assert cache.writes.backup_now(node.parent)  # the fixed prompt: copied (the child is now anchored)
    assert not cache.writes.backup_now(node)


def test_a_backup_that_would_evict_its_parents_cpu_copy_is_not_made():
    """Making CPU room for a child's copy may evict the parent's copy (a CPU leaf until the child's
    copy starts): the child would then sit on the CPU below a parent without a copy, so no copy is
    made and the reservation is given back (the CPU tier stays prefix-closed)."""
    config = CacheConfig(gpu_capacity_tokens=1000, cpu_capacity_tokens=6, write_policy="none")
    cache = KVCacheManager(config, make_policy("pause_aware"))
    put(cache, seq(100), 4, ("s", "main"))
    put(cache, seq(100) + seq(500), 4, ("s", "main"))
    child = cache.match(seq(100) + seq(500), touch=False).last_node
    parent = child.parent
    assert cache.writes.backup_now(parent)
    for op in cache.take_ops():
        cache.complete(op)
    assert parent.cpu and cache.cpu.used_tokens == 4
    assert not cache.writes.backup_now(child)  # room only by dropping the parent's copy
    assert not parent.cpu and cache.cpu.used_tokens == 0  # the evicted copy is gone, the reservation given back
    assert not child.on_cpu_or_offloading
    cache.check_invariants()
