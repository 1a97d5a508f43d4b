"""A fleet: ``cluster.replicas`` engines in one SimPy environment behind a router (docs/fleet.md).

Each replica is a whole single-engine simulator (its own kvflow core: GPU and CPU tiers, policy,
PCIe links, ``EngineLoop``); the one ``WorkflowDriver`` feeds them through ``Fleet``, which looks
to the driver like one engine: ``submit`` asks the router for a replica, hints and client ends go
to every replica (a client's KV may live on any of them), and ``poke`` wakes only the replicas
whose input changed (waking the others would cut their decode runs short for nothing). With one
replica this path gives the single-engine numbers exactly (tests/test_fleet.py); ``sim.runner``
still takes its own path then.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import simpy

from harness.progress import progress
from harness.rows import workflow_rows
from harness.setup import Setup, build_core, prepare
from harness.summary import RunCounters, RunIdentity, WhyFacts, summarize
from kvflow.radix import common_prefix_len
from kvflow.workflow import NextUseFeed
from sim.driver import WorkflowDriver
from sim.engine_loop import EngineLoop
from sim.metrics import counters
from sim.pcie import PCIeLink
from sim.peer_copy import PEER_FIELDS, PeerCopy, PeerCopyConfig
from sim.remote_tier import RemoteTier, RemoteTierConfig
from sim.routers import Router, make_router
from sim.runner import SimResult, hints_source, run_until_done
from traces.table_run import table_run

__all__ = [
    "PEER_FIELDS",
    "REMOTE_FIELDS",
    "REPLICA_FIELDS",
    "Fleet",
    "Replica",
    "fleet_size",
    "run_fleet",
    "simulate_fleet",
]

REPLICA_FIELDS = (
    "replica",
    "requests",
    "prompt_tokens",
    "hit_gpu_tokens",
    "loaded_cpu_tokens",
    "recomputed_tokens",
    "hit_rate_gpu",
    "hit_rate_cpu",
    "h2d_bytes",
    "d2h_bytes",
    "busy_s",
    "gpu_busy_fraction",
    "iterations",
    "gpu_evicted_tokens",
    "cpu_evicted_tokens",
)
REMOTE_FIELDS = (  # replicas.csv columns added when cluster.remote_tier is on (sim.remote_tier.RemoteCounts)
    "remote_read_bytes",
    "remote_reads",
    "remote_hit_tokens",
    "remote_write_bytes",
    "remote_writes",
)
_SUMMED = (  # RunCounters fields that add up over replicas
    "gpu_capacity_tokens",
    "cpu_capacity_tokens",
    "h2d_bytes",
    "d2h_bytes",
    "h2d_copies",
    "d2h_copies",
    "prefetch_issued",
    "prefetch_used",
    "prefetch_wasted",
    "prefetch_late",
    "gpu_evicted_tokens",
    "cpu_evicted_tokens",
    "iterations",
    "decode_steps",
    "blocking_load_wait_s",
    "blocking_load_exposed_s",
)
_MEANED = ("h2d_busy_s", "d2h_busy_s", "gpu_busy_s")  # per replica: utilizations stay fractions of one link/GPU


def fleet_size(cfg: Mapping[str, Any]) -> int:
    """``cluster.replicas`` (1 when the config has no cluster block)."""
    return int((cfg.get("cluster") or {}).get("replicas", 1))


@dataclass
class Replica:
    """One engine of the fleet and what the router may read of it (``sim.routers.base.ReplicaView``)."""

    index: int
    engine: Any
    pcie: PCIeLink
    loop: EngineLoop
    feed: NextUseFeed | None = None

    def _requests(self) -> list[Any]:
        e = self.engine
        return [*e.waiting, *e.prefilling, *e.loading, *e.decoding]

    def load(self) -> int:
        e = self.engine
        return len(e.waiting) + len(e.prefilling) + len(e.loading) + len(e.decoding)

    def active_tokens(self) -> int:
        return sum(r.prompt_tokens + r.output_tokens for r in self._requests())

    def cached_prefix_tokens(self, tokens: Sequence[int]) -> int:
        """Longest cached prefix (GPU or CPU) by a read-only walk: no split, no access stamp, unlike
        ``RadixTree.match`` (which splits the node a match ends in)."""
        tree = self.engine.cache.tree
        node, pos, page = tree.root, 0, tree.page_size
        limit = tree.page_floor(len(tokens))
        while pos < limit:
            child = node.children.get(tree.child_key(tokens, pos))
            if child is None or not (child.gpu or child.cpu):
                break
            common = common_prefix_len(child.tokens, tokens, pos, limit)
            common -= common % page
            pos += common
            if common < len(child.tokens):
                break
            node = child
        return pos


@dataclass
class Prefetch:
    """A client's prefix on its way to (or placed in) the CPU tier of the replica its next call is
    expected on; ``waiters`` run when it has arrived (a call that came while it was in flight)."""

    replica: int
    tokens: Sequence[int]
    end_tokens: int = 0
    done: bool = False
    waiters: list[Callable[[], None]] = field(default_factory=list)


class Fleet:
    """The driver's engine: routes submits, broadcasts hints, pokes the replicas that changed; with
    a remote tier or peer copies, fetches a routed request's missing prefix first (``_move``); with
    a remote tier, writes finished prompts and (``remote_tier.prefetch``) moves a client's prefix
    during its think time."""

    def __init__(self, router: Router, remote: RemoteTier | None = None, peers: PeerCopy | None = None) -> None:
        self.router = router
        self.remote = remote
        self.peers = peers
        self.replicas: list[Replica] = []
        self.replica_of: dict[str, int] = {}  # request id -> replica index
        self.dirty: set[int] = set()
        self.on_finished: Callable[[list[Any]], None] = lambda reqs: None
        self.calls: dict[str, int] = {}  # client -> its calls submitted and not finished (remote tier only)
        self.last_prompt: dict[str, Sequence[int]] = {}  # client -> its latest finished call's prompt
        self.prefetches: dict[str, Prefetch] = {}  # client -> the prefetch for its next call
        self.prefetch_counts = {"issued": 0, "early": 0, "late": 0, "wasted": 0}

    def submit(self, request: Any, now_s: float) -> None:
        index = self.router.route(request, self.replicas)
        self.replica_of[request.request_id] = index
        if self.remote is None and self.peers is None:
            self._hand_over(request, index, now_s)
            return
        if self.remote is not None:
            client = request.client_id
            self.calls[client] = self.calls.get(client, 0) + 1
            record = self.prefetches.pop(client, None)
            if record is not None and self._prefetch_met(record, request, index, now_s):
                return
        self._fetch_then_hand_over(request, index, now_s, poke=False)

    def _prefetch_met(self, record: Prefetch, request: Any, index: int, now_s: float) -> bool:
        """Count a client's prefetch at its next call: late (still moving: the call waits for it,
        True), early (arrived and still cached there) or wasted (another replica, another prefix,
        or evicted before the call)."""
        fits = record.replica == index and (
            common_prefix_len(record.tokens, request.tokens, 0, record.end_tokens) >= record.end_tokens
        )
        if fits and not record.done:
            self.prefetch_counts["late"] += 1
            record.waiters.append(lambda: self._fetch_then_hand_over(request, index, now_s, poke=True))
            return True
        cached = fits and self.replicas[index].cached_prefix_tokens(request.tokens) >= record.end_tokens
        self.prefetch_counts["early" if cached else "wasted"] += 1
        return False

    def _fetch_then_hand_over(self, request: Any, index: int, now_s: float, poke: bool) -> None:
        """The part of the prompt that replica ``index`` lacks and a source holds goes to its CPU
        tier first (the request waits: its arrival time stays ``now_s``); then the replica gets it."""
        _, started = self._move(
            index, request.tokens, urgent=True, on_done=lambda: self._hand_over(request, index, now_s, poke=True)
        )
        if not started:
            self._hand_over(request, index, now_s, poke=poke)

    def _move(self, index: int, tokens: Sequence[int], urgent: bool, on_done: Callable[[], None]) -> tuple[int, int]:
        """Start moving ``tokens``' missing prefix into replica ``index``'s CPU tier from the remote
        tier or, with peer copies, the source ``sim.peer_copy.choose`` picks; the range moving."""
        if self.peers is not None:
            return self.peers.move(self.replicas, index, tokens, self.remote, urgent, on_done)
        assert self.remote is not None
        replica = self.replicas[index]
        cached = replica.cached_prefix_tokens(tokens)
        return self.remote.fetch(index, replica.engine.cache, tokens, cached, urgent, on_done)

    def _hand_over(self, request: Any, index: int, now_s: float, poke: bool = False) -> None:
        self.replicas[index].engine.submit(request, now_s)
        if poke:  # after a transfer: the driver's poke has passed
            self.replicas[index].loop.poke()
        else:
            self.dirty.add(index)

    def set_hints(self, client_id: str, steps: Mapping[str, float | None], now_s: float) -> None:
        for r in self.replicas:
            r.engine.set_hints(client_id, steps, now_s)

    def finish_client(self, client_id: str, now_s: float) -> None:
        for r in self.replicas:
            r.engine.finish_client(client_id, now_s)
        self.last_prompt.pop(client_id, None)
        if self.prefetches.pop(client_id, None) is not None:  # the client never called again
            self.prefetch_counts["wasted"] += 1

    def on_submit(self, inv: Any) -> None:
        """The clairvoyant policy's next-use feed: a client's future is the same on every replica."""
        for r in self.replicas:
            if r.feed is not None:
                r.feed.on_submit(inv)

    def finished(self, index: int, requests: list[Any]) -> None:
        self.dirty.add(index)
        if self.remote is None:
            self.on_finished(requests)
            return
        idle = []
        for req in requests:  # before the driver, which drops the prompts
            client = req.client_id
            self.calls[client] -= 1
            self.last_prompt[client] = req.tokens
            if not self.remote.write(index, req.tokens, on_done=lambda client=client: self._maybe_prefetch(client)):
                idle.append(client)
        self.on_finished(requests)
        for client in idle:
            self._maybe_prefetch(client)

    def _maybe_prefetch(self, client: str) -> None:
        """A client between calls (its prompt readable on the remote tier): move its prefix to the
        replica the router expects its next call on, and hold the router to that choice."""
        if self.remote is None or not self.remote.config.prefetch or self.calls.get(client, 0):
            return
        tokens = self.last_prompt.get(client)
        target = self.router.predict(client, self.replicas)
        if tokens is None or target is None or client in self.prefetches:
            return
        record = Prefetch(target, tokens)
        _, record.end_tokens = self._move(target, tokens, urgent=False, on_done=lambda: self._prefetched(record))
        self.remote.forget(tokens)
        if record.end_tokens:
            self.prefetches[client] = record
            self.prefetch_counts["issued"] += 1
            self.router.pin(client, target)

    def _prefetched(self, record: Prefetch) -> None:
        record.done = True
        waiters, record.waiters = record.waiters, []
        for run in waiters:
            run()

    def poke(self) -> None:
        """Start queued ops and wake the loop of every replica that got input (or queued ops)."""
        for r in self.replicas:
            if r.index in self.dirty or r.engine.has_ops:
                r.loop.poke()
        self.dirty.clear()


def router_options(cluster: Mapping[str, Any], setup: Setup) -> dict[str, Any]:
    """The router's knobs from ``cluster``; prefix_aware's index holds what one replica could cache."""
    block = int(cluster.get("block_tokens", 64))
    return {
        "cache_threshold": cluster.get("cache_threshold", 0.5),
        "balance_abs_threshold": cluster.get("balance_abs_threshold", 32),
        "overlap_weight": cluster.get("overlap_weight", 1.0),
        "block_tokens": block,
        "capacity_blocks": max(1, (setup.gpu_tokens + setup.cpu_tokens) // block),
    }


def _add_replica(fleet: Fleet, env: simpy.Environment, cfg: Mapping[str, Any], setup: Setup) -> None:
    sim_cfg = cfg.get("sim") or {}
    index = len(fleet.replicas)
    engine = build_core(cfg, setup, free_ops=False)
    engine.cache.tree.compact_run = table_run  # a cached stream is kept as a table window, not a copy
    pcie = PCIeLink(env, setup.cost, bidirectional_penalty=bool(sim_cfg.get("bidirectional_penalty", True)))
    feed = NextUseFeed(setup.trace, engine.cache) if engine.cache.policy.reads_future else None
    loop = EngineLoop(
        env,
        engine,
        setup.cost,
        pcie,
        on_finished=lambda reqs: fleet.finished(index, reqs),
        after_iteration=engine.cache.check_invariants if sim_cfg.get("check_invariants") else None,
    )
    fleet.replicas.append(Replica(index, engine, pcie, loop, feed))


def simulate_fleet(cfg: Mapping[str, Any], trace: Any | None = None, replicas: int | None = None) -> SimResult:
    """Run ``replicas`` (default ``cluster.replicas``) engines behind ``cluster.router``; no timeline."""
    wall0 = time.perf_counter()
    setup = prepare(cfg, trace)
    n = fleet_size(cfg) if replicas is None else replicas
    env, fleet, driver = run_fleet(cfg, setup, n)
    policy_cfg = cfg["policy"]
    rows = driver.rows()
    wf_rows = workflow_rows(rows)
    run = fleet_counters(setup, fleet.replicas, env.now, hints_source(policy_cfg, setup.trace))
    run.wall_s = time.perf_counter() - wall0
    summary = summarize(RunIdentity.from_config("sim", cfg), run, rows, wf_rows)
    summary["replicas"] = n
    if fleet.remote is not None:
        summary["details"]["remote_tier"] = remote_details(fleet)
    if fleet.peers is not None:
        summary["details"]["peer_copy"] = fleet.peers.details()
    result = SimResult(summary, rows, wf_rows, run.wall_s)
    result.replica_rows = replica_rows(fleet, rows, env.now)
    return result


def run_fleet(cfg: Mapping[str, Any], setup: Setup, n: int) -> tuple[simpy.Environment, Fleet, WorkflowDriver]:
    """Build ``n`` replicas, the router and the driver, and run until every invocation finished."""
    cluster = cfg.get("cluster") or {}
    policy_cfg = cfg["policy"]
    env = simpy.Environment()
    config = RemoteTierConfig.from_config(cluster.get("remote_tier"))
    block = int(cluster.get("block_tokens", 64))
    kv_bytes = setup.model.kv_bytes_per_token
    remote = None if config is None else RemoteTier(env, config, block, kv_bytes, n)
    peer_config = PeerCopyConfig.from_config(cluster.get("peer_copy"))
    peers = None if peer_config is None else PeerCopy(env, peer_config, block, kv_bytes, n)
    router = make_router(str(cluster.get("router", "round_robin")), router_options(cluster, setup))
    fleet = Fleet(router, remote, peers)
    for _ in range(n):
        _add_replica(fleet, env, cfg, setup)
    reads_future = fleet.replicas[0].feed is not None
    driver = WorkflowDriver(
        env,
        setup.trace,
        fleet,
        hints=bool(policy_cfg.get("hints", True)),
        on_submit=fleet.on_submit if reads_future else None,
        rule=setup.release,
    )
    bar = progress(total=len(setup.trace.invocations), desc=str(policy_cfg.get("name", "sim")), unit="req")

    def finished(reqs: list[Any]) -> None:
        bar.update(len(reqs))
        driver.on_finished(reqs)

    fleet.on_finished = finished
    driver.start(fleet.poke)
    for r in fleet.replicas:
        env.process(r.loop.run())
    run_until_done(env, driver, bar)
    return env, fleet, driver


def fleet_counters(setup: Setup, replicas: Sequence[Replica], makespan_s: float, hints: str) -> RunCounters:
    """The fleet's counters: bytes, tokens, copies and evictions summed; busy times averaged per replica."""
    parts = [counters(setup, r.loop, r.pcie, r.engine.cache, makespan_s, hints) for r in replicas]
    run = RunCounters(makespan_s=makespan_s)
    for name in _SUMMED:
        setattr(run, name, sum(getattr(p, name) for p in parts))
    for name in _MEANED:
        setattr(run, name, sum(getattr(p, name) for p in parts) / len(parts))
    whys = [p.why for p in parts if p.why is not None]
    if whys:
        first = whys[0]
        kinds = {k: sum(w.busy_kind_s.get(k, 0.0) for w in whys) / len(whys) for k in first.busy_kind_s}
        demand = sum(w.gpu_demand_tokens for w in whys)
        run.why = WhyFacts(first.replay, first.start, first.hints, demand, kinds, first.agents_per_client)
    return run


def replica_rows(fleet: Fleet, rows: Sequence[Mapping[str, Any]], makespan_s: float) -> list[dict[str, Any]]:
    """One ``REPLICA_FIELDS`` row per replica (``replicas.csv``); token figures over measured requests."""
    out = []
    for r in fleet.replicas:
        mine = [row for row in rows if fleet.replica_of[row["request_id"]] == r.index]
        measured = [row for row in mine if not row["warmup"]]
        tokens = {k: sum(row[k] for row in measured) for k in REPLICA_FIELDS[2:6]}
        stats = r.engine.cache.stats
        out.append(
            {
                "replica": r.index,
                "requests": len(mine),
                **tokens,
                "hit_rate_gpu": tokens["hit_gpu_tokens"] / tokens["prompt_tokens"] if tokens["prompt_tokens"] else 0.0,
                "hit_rate_cpu": tokens["loaded_cpu_tokens"] / tokens["prompt_tokens"]
                if tokens["prompt_tokens"]
                else 0.0,
                "h2d_bytes": r.pcie.bytes_moved["h2d"],
                "d2h_bytes": r.pcie.bytes_moved["d2h"],
                "busy_s": r.loop.busy_s,
                "gpu_busy_fraction": r.loop.busy_s / makespan_s if makespan_s else 0.0,
                "iterations": r.loop.iterations,
                "gpu_evicted_tokens": stats.gpu_evicted_tokens,
                "cpu_evicted_tokens": stats.cpu_evicted_tokens,
                **(remote_columns(fleet.remote, r.index) if fleet.remote is not None else {}),
                **(fleet.peers.columns(r.index) if fleet.peers is not None else {}),
            }
        )
    return out


def remote_columns(remote: RemoteTier, index: int) -> dict[str, int]:
    """A replica's ``REMOTE_FIELDS`` (replicas.csv, remote tier on only)."""
    c = remote.counts[index]
    values = (c.read_bytes, c.reads, c.hit_tokens, c.write_bytes, c.writes)
    return dict(zip(REMOTE_FIELDS, values, strict=True))


def remote_details(fleet: Fleet) -> dict[str, Any]:
    """``details.remote_tier`` of a fleet with a remote tier: traffic summed over replicas, what the
    pool holds at the end, the link's busy time and the workflow-aware prefetch counts."""
    remote = fleet.remote
    assert remote is not None
    counts = remote.counts
    return {
        "capacity_tokens": remote.config.capacity_tokens,
        "held_tokens": remote.held_tokens_total,
        "read_bytes": sum(c.read_bytes for c in counts),
        "reads": sum(c.reads for c in counts),
        "hit_tokens": sum(c.hit_tokens for c in counts),
        "write_bytes": sum(c.write_bytes for c in counts),
        "writes": sum(c.writes for c in counts),
        "link_busy_s": remote.link.busy_s,
        "prefetch": {**fleet.prefetch_counts, "tokens": sum(c.prefetch_tokens for c in counts)},
    }
