"""Weka / kv-cache-tester coding-agent sessions (`trace_*.json.gz`) -> trace.

One client per session file; its calls chain through `deps` (the main agent's previous call, or a
sub-agent's previous call), with the recorded think time as `delay`. A sub-agent record becomes
the calls of agent `subagent_type`, spawned by the call before it and joined by the first later
call that starts after the sub-agent ended (see docs/trace_format.md for what the data says).

Prompts: the files give one hash id per full 64-token block, and an id fixes its whole prefix (it
appears at one position after one predecessor). The importer keeps the session's block trie as
*chains*: a chain is a run of blocks first seen together, stored as one shared segment named
`<session>/h<first hash>`; a prompt is the chains along its path plus a unique tail for the
`in % 64` tokens no id covers. Equal block prefixes thus give equal tokens, exactly as one block
segment per id would, but with ~3 segments per call instead of ~1,900 (85M block segments for the
642 files would not fit in memory). Files are read one at a time.
"""

from __future__ import annotations

import json
import math
import os
import sys
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from traces.graph import loops
from traces.importers.naming import fresh, unique_names
from traces.io import open_bytes
from traces.limits import DEFAULT_MAX_PROMPT_TOKENS, check_limit, too_many_tokens
from traces.schema import FORMAT_NAME, FORMAT_VERSION, Invocation, Segment, Trace, WorkflowDef

BLOCK_TOKENS = 64
WORKFLOW = "coding-agent"
MAIN_AGENT = "main"


class WekaError(ValueError):
    """A malformed session file; str() is "FILE: record.field: problem"."""


def read_session(path: str) -> dict[str, Any]:
    """The parsed JSON of one session file (gzipped or not); WekaError when unreadable."""
    try:
        with open_bytes(path) as f:
            obj = json.loads(f.read())
    except (OSError, EOFError, zlib.error, UnicodeDecodeError) as exc:
        raise WekaError(f"{path}: cannot read: {exc}") from None
    except (ValueError, RecursionError) as exc:
        raise WekaError(f"{path}: invalid JSON: {(str(exc) or type(exc).__name__).splitlines()[0][:100]}") from None
    if not isinstance(obj, dict) or not isinstance(obj.get("requests"), list):
        raise WekaError(f"{path}: session: expected an object with a 'requests' list")
    return obj


# ---------------------------------------------------------------- field checks
def _num(rec: dict[str, Any], key: str, where: str, required: bool = True) -> float | None:
    v = rec.get(key)
    if v is None and not required and key not in rec:
        return None
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise WekaError(f"{where}.{key}: expected a number, got {v!r}" if key in rec else f"{where}: missing '{key}'")
    if v < 0:
        raise WekaError(f"{where}.{key}: negative time {v!r}")
    return float(v)


def _int(rec: dict[str, Any], key: str, where: str, minimum: int) -> int:
    v = rec.get(key)
    if key not in rec:
        raise WekaError(f"{where}: missing '{key}'")
    if isinstance(v, bool) or not isinstance(v, int):
        raise WekaError(f"{where}.{key}: expected an integer, got {v!r}")
    if v < minimum:
        raise WekaError(f"{where}.{key}: must be >= {minimum}, got {v}")
    return v


def _hash_ids(rec: dict[str, Any], n_in: int, block: int, where: str) -> list[int]:
    ids = rec.get("hash_ids")
    if not isinstance(ids, list) or not set(map(type, ids)) <= {int}:  # C-speed check (bool is not int)
        raise WekaError(
            f"{where}.hash_ids: expected a list of integers" if "hash_ids" in rec else f"{where}: missing 'hash_ids'"
        )
    if len(ids) != n_in // block:
        raise WekaError(
            f"{where}.hash_ids: {len(ids)} ids, but in={n_in} has {n_in // block} full {block}-token blocks"
        )
    return ids


@dataclass(slots=True)
class Call:
    """One recorded LLM call (a request of type "n"/"s"), times in seconds since its thread began."""

    t_s: float
    model: str
    in_tokens: int
    out_tokens: int
    hash_ids: list[int]
    api_s: float | None
    think_s: float | None


def parse_call(rec: Any, block: int, where: str, max_prompt_tokens: int = DEFAULT_MAX_PROMPT_TOKENS) -> Call:
    if not isinstance(rec, dict):
        raise WekaError(f"{where}: expected an object")
    n_in = _int(rec, "in", where, 1)
    for key, what in (("in", "prompt"), ("out", "output")):
        problem = too_many_tokens(rec[key], max_prompt_tokens, what) if type(rec.get(key)) is int else None
        if problem:
            raise WekaError(f"{where}.{key}: {problem}")
    model = rec.get("model", "")
    if not isinstance(model, str):
        raise WekaError(f"{where}.model: expected a string, got {model!r}")
    return Call(
        _num(rec, "t", where) or 0.0,
        model,
        n_in,
        _int(rec, "out", where, 0),
        _hash_ids(rec, n_in, block, where),
        _num(rec, "api_time", where, False),
        _num(rec, "think_time", where, False),
    )


# ---------------------------------------------------------------- prompts: the block trie as chains
class _Chains:
    """A session's block trie, kept as chains of hash ids (each a shared segment)."""

    def __init__(self, client: str) -> None:
        self.client = client
        self.where: dict[int, tuple[int, int]] = {}  # hash -> (chain, offset)
        self.blocks: list[list[int]] = []
        self.parent: list[tuple[int, int] | None] = []  # (chain, blocks) the chain branches after
        self.names: list[str] = []

    def path(self, ids: list[int], where: str) -> list[tuple[int, int]]:
        """(chain, blocks used) along the prompt's path, adding its new blocks to the trie."""
        out: list[tuple[int, int]] = []
        j = 0
        while j < len(ids):
            loc = self.where.get(ids[j])
            if loc is None:
                j = self._add(ids, j, out, where)
                continue
            chain, offset = loc
            if offset != 0 or self.parent[chain] != (out[-1] if out else None):
                raise WekaError(
                    f"{where}.hash_ids[{j}]: id {ids[j]} appears after a different prefix "
                    "elsewhere in the file (ids must identify a block and its prefix)"
                )
            m = _common_run(ids, j, self.blocks[chain])
            out.append((chain, m))
            j += m
        return out

    def _add(self, ids: list[int], j: int, out: list[tuple[int, int]], where: str) -> int:
        start = j
        while j < len(ids) and ids[j] not in self.where:
            j += 1
        if j < len(ids):
            raise WekaError(
                f"{where}.hash_ids[{j}]: id {ids[j]} follows new blocks here but was seen "
                "before (ids must identify a block and its prefix)"
            )
        if out and out[-1][1] == len(self.blocks[out[-1][0]]):
            chain = out.pop()[0]  # the path ends at the chain's tip: the new blocks extend it
        else:
            chain = len(self.blocks)
            self.blocks.append([])
            self.parent.append(out[-1] if out else None)
            self.names.append(f"{self.client}/h{ids[start]}")
        blocks = self.blocks[chain]
        for h in ids[start:j]:
            self.where[h] = (chain, len(blocks))
            blocks.append(h)
        out.append((chain, len(blocks)))
        return j

    def segments(self, ids: list[int], n_in: int, block: int, where: str) -> list[Segment]:
        segs = [Segment("shared", self.names[c], m * block) for c, m in self.path(ids, where)]
        tail = n_in - block * len(ids)
        return segs + [Segment("unique", "", tail)] if tail else segs


class _Blocks(_Chains):
    """`blocks=True`: one block segment per hash id, keyed "<session>:<id>" (the same Segment
    object for every use of an id), and the unhashed tail as a block of its own key."""

    def __init__(self, client: str) -> None:
        super().__init__(client)
        self.interned: dict[int, Segment] = {}
        self.calls = 0

    def segments(self, ids: list[int], n_in: int, block: int, where: str) -> list[Segment]:
        self.path(ids, where)  # the same checks of the ids as for chains
        get, segs = self.interned.get, []
        for h in ids:
            seg = get(h)
            if seg is None:
                seg = self.interned[h] = Segment("block", f"{self.client}:{h}", block)
            segs.append(seg)
        self.calls += 1
        tail = n_in - block * len(ids)
        return segs + [Segment("block", f"{self.client}:tail{self.calls}", tail)] if tail else segs


def _common_run(ids: list[int], j: int, blocks: list[int]) -> int:
    """Length of the common run of ids[j:] and blocks[0:] (slice compares run in C)."""
    n = min(len(ids) - j, len(blocks))
    if ids[j : j + n] == blocks[:n]:
        return n
    lo, hi = 0, n  # ids[j:j+lo] == blocks[:lo]; they differ within the first hi
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if ids[j + lo : j + mid] == blocks[lo:mid]:
            lo = mid
        else:
            hi = mid
    return lo


# ---------------------------------------------------------------- calls, sub-agents and timing
@dataclass(slots=True)
class _Done:
    """An emitted call and its recorded finish (session seconds), for later dependencies."""

    inv_id: str
    finish_s: float


class _Session:
    """Turns one session's request list (and its sub-agents', recursively) into invocations."""

    def __init__(
        self,
        path: str,
        obj: dict[str, Any],
        client: str,
        block: int,
        blocks: bool,
        max_prompt_tokens: int = DEFAULT_MAX_PROMPT_TOKENS,
    ) -> None:
        self.path, self.client, self.block, self.max_prompt_tokens = path, client, block, max_prompt_tokens
        self.chains = _Blocks(client) if blocks else _Chains(client)
        self.invocations: list[Invocation] = []
        self.subagents = 0
        self.thread(obj["requests"], MAIN_AGENT, "requests", 0.0, None)

    def thread(self, reqs: Any, agent: str, where: str, origin_s: float, spawner: _Done | None) -> _Done | None:
        """Emit one agent's calls in order; returns its last call (None when it made none)."""
        if not isinstance(reqs, list):
            raise WekaError(f"{self.path}: {where}: expected a list of requests")
        prev: _Done | None = None
        waiting: list[tuple[float, _Done]] = []  # sub-agents not joined yet: (end_s, last call)
        for k, rec in enumerate(reqs):
            rec_path = f"{where}[{k}]"
            if isinstance(rec, dict) and rec.get("type") == "subagent":
                ended = self.subagent(rec, rec_path, origin_s, prev or spawner)
                if ended is not None:
                    waiting.append(ended)
                continue
            call = parse_call(rec, self.block, f"{self.path}: {rec_path}", self.max_prompt_tokens)
            start_s = origin_s + call.t_s
            joined = [done for end_s, done in waiting if end_s <= start_s + 1e-6]
            waiting = [(e, d) for e, d in waiting if e > start_s + 1e-6]
            prev = self.emit(
                call, agent, start_s, prev, spawner if prev is None else None, joined, f"{self.path}: {rec_path}"
            )
        return prev

    def subagent(
        self, rec: dict[str, Any], rec_path: str, origin_s: float, spawner: _Done | None
    ) -> tuple[float, _Done] | None:
        """A sub-agent: `t` is when it ended (seconds), `duration_ms` how long it ran."""
        where = f"{self.path}: {rec_path}"
        end_s = origin_s + (_num(rec, "t", where) or 0.0)
        start_s = max(origin_s, end_s - (_num(rec, "duration_ms", where) or 0.0) / 1000.0)
        kind = rec.get("subagent_type", "subagent")
        if not isinstance(kind, str) or not kind:
            raise WekaError(f"{where}.subagent_type: expected a non-empty string, got {kind!r}")
        self.subagents += 1
        last = self.thread(rec.get("requests"), kind, f"{rec_path}.requests", start_s, spawner)
        return (end_s, last) if last else None

    def emit(
        self,
        call: Call,
        agent: str,
        start_s: float,
        prev: _Done | None,
        spawner: _Done | None,
        joined: list[_Done],
        where: str,
    ) -> _Done:
        deps = ([prev] if prev else [spawner] if spawner else []) + joined
        if not deps:
            arrival, delay = start_s, 0.0
        elif prev is not None and not joined and call.think_s is not None:
            arrival, delay = None, call.think_s
        else:
            arrival, delay = None, max(0.0, start_s - max(d.finish_s for d in deps))
        step = len(self.invocations)
        inv = Invocation(
            id=f"{self.client}/{step}",
            client_id=self.client,
            workflow=WORKFLOW,
            agent_id=agent,
            step=step,
            segments=self.chains.segments(call.hash_ids, call.in_tokens, self.block, where),
            fixed_segments=0,
            output_tokens=call.out_tokens,
            deps=[d.inv_id for d in deps],
            arrival_s=arrival,
            delay_s=delay,
            model=call.model,
            service_s=call.api_s,
        )
        self.invocations.append(inv)
        return _Done(inv.id, start_s + (call.api_s or 0.0))


# ---------------------------------------------------------------- the trace
def transition_graph(invocations: list[Invocation]) -> tuple[list[str], dict[str, Any]]:
    """Observed agent-transition graph (an edge per dependency); joins of several agents are OR."""
    by_id = {inv.id: inv.agent_id for inv in invocations}
    agents = sorted({inv.agent_id for inv in invocations})
    edges = sorted({(by_id[d], inv.agent_id) for inv in invocations for d in inv.deps})
    preds: dict[str, set[str]] = {}
    for a, b in edges:
        preds.setdefault(b, set()).add(a)
    nodes = {a: ({"aggregation": "OR"} if len(preds.get(a, ())) > 1 else {}) for a in agents}
    graph: dict[str, Any] = {"agents": nodes, "edges": [list(e) for e in edges]}
    if loops(graph):
        graph["horizon"] = 2 * len(agents)
    return agents, graph


def _block_size(obj: dict[str, Any], path: str) -> int:
    block = obj.get("block_size", BLOCK_TOKENS)
    if isinstance(block, bool) or not isinstance(block, int) or block < 1:
        raise WekaError(f"{path}: session.block_size: expected a positive integer, got {block!r}")
    return block


def import_files(
    paths: list[str],
    seed: int = 0,
    warn: Callable[[str], None] | None = None,
    blocks: bool = False,
    max_prompt_tokens: int = DEFAULT_MAX_PROMPT_TOKENS,
) -> Trace:
    """Import session files, one at a time; WekaError (one line) on the first malformed record.
    `blocks`: one block segment per hash id instead of chains (~1,900 segments per call: for a few
    sessions, e.g. a block-level `kvflow-replay`). A client is the session's id (else its file
    name); a second file with the same one gets ``<id>@<path>`` (ids are namespaced by source)."""
    warn = warn or (lambda msg: print(msg, file=sys.stderr))
    check_limit(max_prompt_tokens)
    invocations: list[Invocation] = []
    sources, skipped, clients = [], [], set()
    block: int | None = None
    for path, by_path in zip(paths, unique_names(paths, (".gz", ".json")), strict=True):
        obj = read_session(path)
        size = _block_size(obj, path)
        if block is not None and size != block:
            raise WekaError(f"{path}: session.block_size: {size}, but earlier files use {block}")
        block = size
        client = obj.get("id") if isinstance(obj.get("id"), str) and obj.get("id") else _stem(path)
        client = fresh(client if client not in clients else f"{client}@{by_path}", clients)
        session = _Session(path, obj, client, size, blocks, max_prompt_tokens)
        if not session.invocations:
            warn(f"{path}: skipped: the session has no calls")
            skipped.append(os.path.basename(path))
            continue
        invocations += session.invocations
        sources.append(os.path.basename(path))
    agents, graph = _graph_or_none(invocations)
    meta = {
        "format": FORMAT_NAME,
        "version": FORMAT_VERSION,
        "seed": seed,
        "block_tokens": block or BLOCK_TOKENS,
        "provenance": {
            "importer": "weka",
            "sources": sources,
            "skipped": skipped,
            "gaps": "recorded: think time (delay); after a spawn or join: start - latest dependency's start + api_time",
        },
    }
    return Trace(meta, {WORKFLOW: WorkflowDef(WORKFLOW, agents, graph)} if invocations else {}, invocations)


def _graph_or_none(invocations: list[Invocation]) -> tuple[list[str], dict[str, Any] | None]:
    return transition_graph(invocations) if invocations else ([], None)


def _stem(path: str) -> str:
    name = os.path.basename(path)
    for ext in (".gz", ".json"):
        name = name[: -len(ext)] if name.endswith(ext) else name
    return name
