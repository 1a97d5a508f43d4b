"""``kvflow-replay``: cache-only replay (no timing) of a trace through the radix tree.

Compares policies on hit rate and cross-checks the tree against independent simulators.
Semantics (Mooncake JSONL): one key per 512-token block hash; capacity in whole blocks =
floor(budget / bytes per block); a request hits the longest cached contiguous prefix of its
blocks, then all its blocks are inserted (as many as fit after eviction); hits count over the
requests after the warm-up fraction; a block's tokens come from ``input_length`` (last may be
partial). Traces in the kvflow format replay at token level (or block level when every prompt
segment is a block hash, as the Mooncake importer writes them).
"""

from __future__ import annotations

import argparse
import gzip
import json
import math
import sys
import time
from collections.abc import Hashable
from dataclasses import dataclass
from typing import Any
from pathlib import Path

from kvflow.cache import CacheConfig, KVCacheManager
from kvflow.policies import POLICY_NAMES, make_policy
from kvflow.step_graph import INF, StepGraph

GIB = 1 << 30


class ReplayInputError(ValueError):
    """Bad input; ``str()`` is the one line shown to the user."""


@dataclass
class ReplayRequest:
    keys: list[Hashable]  # one key per cache unit (block hash, or token id)
    unit_tokens: list[int] | None  # tokens per unit; None = 1 token per unit
    user: tuple[str, str] | None = None  # (client, agent) for workflow-aware policies
    fixed_units: int = 0  # units of the fixed prompt
    hints: dict[str, float] | None = None  # steps-to-execution of the client's agents, as it runs
    last_of_client: bool = False  # the workflow ends with it: empty frontier, every agent INF


def block_tokens(input_length: int, block_size: int, index: int) -> int:
    """Tokens in block ``index`` of a prompt of ``input_length`` tokens (the last may be partial)."""
    remaining = input_length - index * block_size
    return max(1, min(block_size, remaining)) if remaining > 0 else 1


def _open(path: Path):
    return gzip.open(path, "rt", encoding="utf-8") if path.suffix == ".gz" else path.open(encoding="utf-8")


def read_mooncake(path: Path, block_size: int) -> list[ReplayRequest]:
    """Parse Mooncake JSONL; any malformed line raises ReplayInputError('FILE:LINE: problem')."""
    requests = []
    with _open(path) as handle:
        for lineno, line in enumerate(handle, 1):
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ReplayInputError(f"{where}: invalid JSON ({exc.msg})") from None
            if not isinstance(record, dict):
                raise ReplayInputError(f"{where}: expected a JSON object")
            ids = record.get("hash_ids")
            if not isinstance(ids, list) or not ids:
                raise ReplayInputError(f"{where}: 'hash_ids' must be a non-empty list")
            if any(isinstance(h, bool) or not isinstance(h, (int, str)) for h in ids):
                raise ReplayInputError(f"{where}: 'hash_ids' must hold integers or strings")
            length = record.get("input_length")
            if isinstance(length, bool) or not isinstance(length, int) or length <= 0:
                raise ReplayInputError(f"{where}: 'input_length' must be a positive integer, got {length!r}")
            requests.append(ReplayRequest(ids, [block_tokens(length, block_size, j) for j in range(len(ids))]))
    if not requests:
        raise ReplayInputError(f"{path}: no requests")
    return requests


def read_kvflow_trace(path: Path) -> tuple[list[ReplayRequest], bool]:
    """Requests of a kvflow-format trace in trace order; True when keyed by block hashes."""
    from traces import TraceError, load_trace  # traces imports kvflow, not the other way round

    try:
        trace = load_trace(path)
    except TraceError as exc:
        raise ReplayInputError(str(exc)) from None
    return requests_from_trace(trace)


def requests_from_trace(trace: Any) -> tuple[list[ReplayRequest], bool]:
    """Replay requests of a loaded ``traces.Trace``, with its declared step-graph hints."""
    invocations = trace.invocations
    graphs = {name: StepGraph.from_dict(w.graph) for name, w in trace.workflows.items() if w.graph}
    if all(seg.kind == "block" for inv in invocations for seg in inv.segments):
        return [ReplayRequest([s.key for s in inv.segments], [s.n_tokens for s in inv.segments])
                for inv in invocations], True
    requests = []
    for inv in invocations:
        graph = graphs.get(inv.workflow)
        hints = graph.steps_to_execution([inv.agent_id]) if graph and inv.agent_id in graph.aggregation else None
        user = (inv.client_id, inv.agent_id) if inv.agent_id else None
        requests.append(ReplayRequest(trace.prompt_tokens(inv), None, user, trace.fixed_tokens(inv), hints))
    last_index = {inv.client_id: i for i, inv in enumerate(invocations)}
    for i in last_index.values():
        requests[i].last_of_client = True
    return requests, False


def is_mooncake(path: Path) -> bool:
    with _open(path) as handle:
        for line in handle:
            if line.strip():
                try:
                    return isinstance(first := json.loads(line), dict) and "hash_ids" in first
                except json.JSONDecodeError:
                    return True  # let the Mooncake reader report the line
    return True


def annotate_next_use(requests: list[ReplayRequest]) -> list[list[int]]:
    """For each request and unit position: index of the next request that uses the same prefix
    (path in the trie) — what the oracle knows about the future."""
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


def replay(requests: list[ReplayRequest], policy_name: str, capacity_units: int,
           warmup_fraction: float = 0.5) -> dict:
    """Run the requests through a GPU-only cache; returns hit statistics."""
    if capacity_units <= 0:
        raise ReplayInputError(f"cache capacity is {capacity_units} units: budget too small for one block")
    cache = KVCacheManager(CacheConfig(gpu_capacity_tokens=capacity_units, write_policy="none"),
                           make_policy(policy_name))
    next_use = annotate_next_use(requests) if policy_name == "oracle" else None
    warmup = math.floor(len(requests) * warmup_fraction)
    hit_tokens = total_tokens = 0
    filled_before_measurement = False
    for index, req in enumerate(requests):
        weights = req.unit_tokens
        cache.observe_prompt(req.user, req.keys, req.fixed_units)
        if req.hints is not None and req.user is not None:
            cache.set_hints(req.user[0], req.hints)
        result = cache.match(req.keys)
        hit_units = result.gpu_tokens
        if index >= warmup:
            if weights is None:
                hit_tokens += hit_units
                total_tokens += len(req.keys)
            else:
                hit_tokens += sum(weights[:hit_units])
                total_tokens += sum(weights)
        cache.lock(result.gpu_node)
        if next_use is None:
            granted = cache.alloc_gpu(len(req.keys) - hit_units, partial=True)
        else:
            granted = _alloc_with_bypass(cache, next_use[index], hit_units)
        cache.unlock(result.gpu_node)
        cache.insert(req.keys[: hit_units + granted], granted, req.fixed_units, req.user)
        if next_use is not None:
            _annotate_path(cache, req.keys[: hit_units + granted], next_use[index])
        if req.last_of_client and req.hints is not None and req.user is not None:
            cache.set_hints(req.user[0], {agent: INF for agent in req.hints})
        if index < warmup and cache.gpu_free_tokens == 0:
            filled_before_measurement = True
    return {
        "policy": policy_name,
        "requests": len(requests),
        "measured_requests": len(requests) - warmup,
        "hit_tokens": hit_tokens,
        "total_tokens": total_tokens,
        "hit_rate": hit_tokens / total_tokens if total_tokens else 0.0,
        "capacity_units": capacity_units,
        "filled_before_measurement": filled_before_measurement,
        "evicted_units": cache.stats.gpu_evicted_tokens,
    }


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
    node whose units disagree is split where the value changes: the oracle stays exact per unit."""
    tree, node, pos = cache.tree, cache.tree.root, 0
    while pos < len(keys):
        node = node.children[tree._child_key(keys, pos)]
        end = pos + len(node)
        first = next_use[pos]
        cut = next((j for j in range(pos + 1, end) if next_use[j] != first), end)
        if cut < end:
            node = tree.split(node, cut - pos)
        node.next_use = first
        tree.refresh(node)
        pos += len(node)


def build_parser() -> argparse.ArgumentParser:
    from kvflow.model_spec import MODEL_NAMES

    parser = argparse.ArgumentParser(
        prog="kvflow-replay",
        description="Cache-only replay of a trace (Mooncake JSONL or kvflow trace) through the radix "
        "tree under one eviction policy. The last line of stdout is one JSON object.",
    )
    parser.add_argument("--trace", required=True, type=Path, help="Mooncake JSONL (.jsonl[.gz]) or kvflow trace")
    parser.add_argument("--policy", default="lru", help=f"eviction policy: {', '.join(POLICY_NAMES)} (default lru)")
    parser.add_argument("--model", default="llama-3.1-8b", help=f"model for KV bytes/token: {', '.join(MODEL_NAMES)}")
    parser.add_argument("--budget-gib", type=float, default=16.0, help="GPU KV budget in GiB (default 16)")
    parser.add_argument("--block-tokens", type=int, default=512, help="tokens per hash block (default 512)")
    parser.add_argument("--warmup-fraction", type=float, default=0.5,
                        help="fraction of requests replayed before hits are counted (default 0.5)")
    return parser


def run(argv: list[str] | None = None) -> dict:
    from kvflow.model_spec import load_model_spec

    args = build_parser().parse_args(argv)
    if args.policy not in POLICY_NAMES:
        raise ReplayInputError(f"unknown policy '{args.policy}'; valid: {', '.join(POLICY_NAMES)}")
    try:
        model = load_model_spec(args.model)
    except ValueError as exc:
        raise ReplayInputError(str(exc)) from None
    if not 0 <= args.warmup_fraction < 1:
        raise ReplayInputError(f"--warmup-fraction must be in [0, 1), got {args.warmup_fraction}")
    if args.block_tokens <= 0 or args.budget_gib <= 0:
        raise ReplayInputError("--block-tokens and --budget-gib must be positive")
    if not args.trace.is_file():
        raise ReplayInputError(f"{args.trace}: no such file")
    started = time.perf_counter()
    if is_mooncake(args.trace):
        requests, block_mode = read_mooncake(args.trace, args.block_tokens), True
    else:
        requests, block_mode = read_kvflow_trace(args.trace)
    unit_bytes = model.kv_bytes_per_token * (args.block_tokens if block_mode else 1)
    capacity = math.floor(args.budget_gib * GIB / unit_bytes)
    result = replay(requests, args.policy, capacity, args.warmup_fraction)
    result.update(budget_gib=args.budget_gib, model=model.name, block_tokens=args.block_tokens,
                  unit="block" if block_mode else "token", trace=str(args.trace),
                  wall_s=round(time.perf_counter() - started, 3))
    return result


def main(argv: list[str] | None = None) -> int:
    try:
        result = run(argv)
    except ReplayInputError as exc:
        print(f"kvflow-replay: error: {exc}", file=sys.stderr)
        return 2
    try:
        print(f"{result['policy']}: hit rate {100 * result['hit_rate']:.2f}% "
              f"({result['hit_tokens']:,} of {result['total_tokens']:,} tokens, {result['requests']} requests)")
        print(json.dumps(result, sort_keys=True))
    except BrokenPipeError:  # e.g. piped into `head`: the reader has what it wanted
        sys.stderr.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
