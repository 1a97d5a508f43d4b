"""Cache-only replay: the simulator without a clock (no SimPy, no timing), for hit rates.

Runs a ``traces.Trace`` through a GPU-only ``KVCacheManager`` under one eviction policy, to compare
policies and cross-check the radix tree against independent simulators (kvcache-simulator).
Semantics: a request hits the longest cached contiguous prefix of its units, then all its units are
inserted (as many as fit after eviction); hits count over the requests after the warm-up fraction.
A block-segment trace (the Mooncake importer's) replays one unit per block hash, weighted by the
block's tokens (the last may be partial); any other trace replays at token level with its declared
step-graph hints. Input is read only through ``traces/``; the CLI is ``sim/replay_cli.py``.
"""

from __future__ import annotations

import math
import os
from collections.abc import Hashable, Sequence
from dataclasses import dataclass

from kvflow.cache import CacheConfig, KVCacheManager
from kvflow.policies import POLICY_NAMES, make_policy
from kvflow.step_graph import INF, StepGraph
from traces.importers import mooncake
from traces.limits import DEFAULT_MAX_PROMPT_TOKENS
from traces.schema import Trace

#: the exact Belady replay: the clairvoyant policy given every node's next use (``annotate_next_use``)
BELADY = "belady"
CLAIRVOYANT = "clairvoyant"
ALIASES = {"oracle": BELADY}  # the name before the simulator's clairvoyant policy was told apart from it


def replay_policy_names() -> tuple[str, ...]:
    """What ``replay`` accepts: every policy but the clairvoyant one, which only ``belady`` (it given
    exact next uses) makes sense of here; ``oracle`` is an alias of ``belady``."""
    return (*(n for n in POLICY_NAMES if n != CLAIRVOYANT), BELADY)


def resolve_policy(name: str) -> str:
    """The replay policy ``name`` stands for (an alias resolved); ReplayInputError when unknown."""
    resolved = ALIASES.get(name, name)
    if resolved not in replay_policy_names():
        raise ReplayInputError(f"unknown policy '{name}'; valid: {', '.join(replay_policy_names())}")
    return resolved


#: what ``replay`` returns: hit counts and rates, capacity, eviction count (JSON-ready values)
ReplayResult = dict[str, int | float | str | bool]


class ReplayInputError(ValueError):
    """Bad input; ``str()`` is the one line shown to the user."""


@dataclass
class ReplayRequest:
    keys: Sequence[Hashable]  # one key per cache unit (block hash, or token id: a machine-int array)
    unit_tokens: list[int] | None  # tokens per unit; None = 1 token per unit
    user: tuple[str, str] | None = None  # (client, agent) for workflow-aware policies
    fixed_units: int = 0  # units of the fixed prompt
    hints: dict[str, float] | None = None  # steps-to-execution of the client's agents, as it runs
    last_of_client: bool = False  # the workflow ends with it: empty frontier, every agent INF


def read_mooncake(
    path: str | os.PathLike[str],
    block_tokens: int = mooncake.BLOCK_TOKENS,
    max_prompt_tokens: int = DEFAULT_MAX_PROMPT_TOKENS,
) -> list[ReplayRequest]:
    """Block-level requests of a Mooncake JSONL file (plain or gzipped), via the traces importer;
    ValueError("FILE:LINE: problem") on bad input (a request over ``max_prompt_tokens`` is one)."""
    trace = mooncake.import_files([str(path)], block_tokens=block_tokens, max_prompt_tokens=max_prompt_tokens)
    requests, _ = requests_from_trace(trace)
    return requests


def requests_from_trace(trace: Trace) -> tuple[list[ReplayRequest], bool]:
    """Replay requests of a trace in trace order, with its declared step-graph hints; True when
    keyed by block hashes (every segment is a block: one key per block, never per token). Token
    keys are ``Trace.prompt_array`` (4 bytes a token, no int object per token)."""
    invocations = trace.invocations
    if {seg.kind for inv in invocations for seg in inv.segments} <= {"block"}:
        return [
            ReplayRequest([s.key for s in inv.segments], [s.n_tokens for s in inv.segments]) for inv in invocations
        ], True
    graphs = {name: StepGraph.from_dict(w.graph) for name, w in trace.workflows.items() if w.graph}
    requests = []
    for inv in invocations:
        graph = graphs.get(inv.workflow)
        hints = graph.steps_to_execution([inv.agent_id]) if graph and inv.agent_id in graph.aggregation else None
        user = (inv.client_id, inv.agent_id) if inv.agent_id else None
        requests.append(ReplayRequest(trace.prompt_array(inv), None, user, trace.fixed_tokens(inv), hints))
    last_index = {inv.client_id: i for i, inv in enumerate(invocations)}
    for i in last_index.values():
        requests[i].last_of_client = True
    return requests, False


def annotate_next_use(requests: list[ReplayRequest]) -> list[list[int]]:
    """For each request and unit position: index of the next request that uses the same prefix
    (path in the trie) — what ``belady`` knows about the future."""
    node_of: dict[tuple[int, Hashable], int] = {}
    paths = []
    for req in requests:
        parent, path = 0, []
        for key in req.keys:
            parent = node_of.setdefault((parent, key), len(node_of) + 1)
            path.append(parent)
        paths.append(path)
    never = len(requests) + 1
    last_use: dict[int, int] = {}
    next_use: list[list[int]] = [[] for _ in requests]
    for index in range(len(requests) - 1, -1, -1):
        next_use[index] = [last_use.get(n, never) for n in paths[index]]
        for n in paths[index]:
            last_use[n] = index
    return next_use


def replay(
    requests: list[ReplayRequest],
    policy_name: str,
    capacity_units: int,
    warmup_fraction: float = 0.5,
    measured: list[bool] | None = None,
) -> ReplayResult:
    """Run the requests through a GPU-only cache; returns hit statistics over the requests after
    the warm-up fraction, or over those ``measured`` marks (a simulated run's own warm-up rule)."""
    if capacity_units <= 0:
        raise ReplayInputError(f"cache capacity is {capacity_units} units: budget too small for one block")
    policy_name = resolve_policy(policy_name)
    exact = policy_name == BELADY
    cache = KVCacheManager(
        CacheConfig(gpu_capacity_tokens=capacity_units, write_policy="none"),
        make_policy(CLAIRVOYANT if exact else policy_name),
    )
    next_use = annotate_next_use(requests) if exact else None
    warmup = math.floor(len(requests) * warmup_fraction)
    counted = measured if measured is not None else [index >= warmup for index in range(len(requests))]
    if len(counted) != len(requests):
        raise ValueError(f"measured marks {len(counted)} requests of {len(requests)}")
    first_measured = next((i for i, m in enumerate(counted) if m), len(requests))
    hit_tokens = total_tokens = 0
    filled_before_measurement = False
    for index, req in enumerate(requests):
        hit_units = _replay_one(cache, req, None if next_use is None else next_use[index])
        if counted[index]:
            weights = req.unit_tokens
            hit_tokens += hit_units if weights is None else sum(weights[:hit_units])
            total_tokens += len(req.keys) if weights is None else sum(weights)
        if index < first_measured and cache.gpu_free_tokens == 0:
            filled_before_measurement = True
    return {
        "policy": policy_name,
        "requests": len(requests),
        "measured_requests": sum(counted),
        "hit_tokens": hit_tokens,
        "total_tokens": total_tokens,
        "hit_rate": hit_tokens / total_tokens if total_tokens else 0.0,
        "capacity_units": capacity_units,
        "filled_before_measurement": filled_before_measurement,
        "evicted_units": cache.stats.gpu_evicted_tokens,
    }


def _replay_one(cache: KVCacheManager, req: ReplayRequest, next_use: list[int] | None) -> int:
    """Match, allocate and insert one request (``belady``: with Belady admission); its hit units."""
    cache.observe_prompt(req.user, req.keys, req.fixed_units)
    if req.hints is not None and req.user is not None:
        cache.set_hints(req.user[0], req.hints)
    result = cache.match(req.keys)
    hit_units = result.gpu_tokens
    cache.lock(result.gpu_node)
    if next_use is None:
        granted = cache.alloc_gpu(len(req.keys) - hit_units, partial=True)
    else:
        granted = _alloc_with_bypass(cache, next_use, hit_units)
    cache.unlock(result.gpu_node)
    cache.insert(req.keys[: hit_units + granted], granted, req.fixed_units, req.user)
    if next_use is not None:
        _annotate_path(cache, req.keys[: hit_units + granted], next_use)
    if req.last_of_client and req.hints is not None and req.user is not None:
        cache.set_hints(req.user[0], {agent: INF for agent in req.hints})
    return hit_units


def _alloc_with_bypass(cache: KVCacheManager, next_use: list[int], start: int) -> int:
    """Belady admission: a new unit may only evict a victim used later than itself (otherwise
    caching it would lose a sooner hit), as the reference's optimal policy does."""
    granted, pos = 0, start
    while pos < len(next_use):
        end = pos
        while end < len(next_use) and next_use[end] == next_use[pos]:
            end += 1
        got = cache.alloc_gpu(end - pos, limit_key=(-next_use[pos],), partial=True)
        granted += got
        if got < end - pos:
            break
        pos = end
    return granted


def _annotate_path(cache: KVCacheManager, keys: list[Hashable], next_use: list[int]) -> None:
    """Write each node's next use (that of its first unit). Next use only grows with depth, so a
    node whose units disagree is split where the value changes: ``belady`` stays exact per unit."""
    tree, node, pos = cache.tree, cache.tree.root, 0
    while pos < len(keys):
        node = node.children[tree.child_key(keys, pos)]
        end = pos + len(node)
        first = next_use[pos]
        cut = next((j for j in range(pos + 1, end) if next_use[j] != first), end)
        if cut < end:
            node = tree.split(node, cut - pos)
        node.next_use = first
        tree.refresh(node)
        pos += len(node)


if __name__ == "__main__":  # ``python -m sim.replay`` = ``kvflow-replay``
    import sys

    from sim.replay_cli import main

    sys.exit(main())
