"""Export a trace as block-hash records other tools read: Mooncake JSONL or Weka session files.

Block ids come from the segments, never from expanded tokens: block b of a prompt is the token
range [b*B, (b+1)*B), described by the (segment, offset, length) pieces it covers; its id is
numbered by first appearance of (previous block's id, pieces), so equal ids mean equal prefixes
(prefix hashing, as in Mooncake and the Weka files) and the last, partial block gets its own id.
Times come from the recorded timeline: a call starts at max(arrival, latest dependency finish +
delay) and takes its recorded `service_s` (0 when none is recorded).
"""

from __future__ import annotations

import gzip
import io
import json
import os
from collections.abc import Hashable
from typing import Any

from traces.atomic import write_bytes_atomic
from traces.schema import Invocation, Segment, Trace

EXPORTERS = ("mooncake", "weka")


class BlockIds:
    """Prefix-determined block ids for a trace's prompts, numbered 1, 2, ... by first appearance."""

    def __init__(self, block_tokens: int) -> None:
        self.block_tokens = block_tokens
        self.ids: dict[tuple[int, Hashable], int] = {}
        self._runs: dict[tuple[int, Hashable], list[int]] = {}  # (parent, segment) -> ids of its full blocks

    def of(self, inv: Invocation) -> list[int]:
        out: list[int] = []
        size, parent, pieces, filled = self.block_tokens, 0, [], 0
        for index, seg in enumerate(inv.segments):
            ident, offset = _identity(inv, index, seg), 0
            if filled == 0 and seg.kind != "tokens" and seg.n_tokens >= size:
                run = self._run(parent, ident, seg.n_tokens // size)  # prompts repeat prefixes: reuse
                out += run
                parent, offset = run[-1], len(run) * size
            while offset < seg.n_tokens:
                take = min(size - filled, seg.n_tokens - offset)
                pieces.append(
                    (ident, offset, take)
                    if seg.kind != "tokens"
                    else (ident, tuple((seg.ids or ())[offset : offset + take]))
                )
                offset += take
                filled += take
                if filled == size:
                    parent = self._id(parent, pieces[0] if len(pieces) == 1 else tuple(pieces))
                    out.append(parent)
                    pieces, filled = [], 0
        if pieces:
            out.append(self._id(parent, tuple(pieces) + ("partial",)))
        return out

    def _id(self, parent: int, pieces: Hashable) -> int:
        key = (parent, pieces)
        found = self.ids.get(key)
        if found is None:
            found = self.ids[key] = len(self.ids) + 1
        return found

    def _run(self, parent: int, ident: Hashable, blocks: int) -> list[int]:
        """Ids of the first `blocks` full blocks of a block-aligned segment that follows `parent`."""
        run = self._runs.setdefault((parent, ident), [])
        size = self.block_tokens
        while len(run) < blocks:
            run.append(self._id(run[-1] if run else parent, (ident, len(run) * size, size)))
        return run[:blocks]


def _identity(inv: Invocation, index: int, seg: Segment) -> Hashable:
    if seg.kind == "unique":
        return ("unique", inv.id, index)  # fresh tokens: never equal to another invocation's
    if seg.kind == "tokens":
        return "tokens"
    return (seg.kind, seg.key)


def schedule(trace: Trace) -> dict[str, tuple[float, float]]:
    """(start_s, finish_s) of every invocation on the recorded timeline (trace order is topological)."""
    times: dict[str, tuple[float, float]] = {}
    for inv in trace.invocations:
        start = max([inv.arrival_s or 0.0] + [times[d][1] + inv.delay_s for d in inv.deps])
        times[inv.id] = (start, start + (inv.service_s or 0.0))
    return times


def export_mooncake(trace: Trace, out_path: str, block_tokens: int | None = None) -> int:
    """Mooncake JSONL (timestamp ms, input_length, output_length, hash_ids), in timestamp order."""
    ids, times = BlockIds(block_tokens or trace.block_tokens), schedule(trace)
    order = sorted(range(len(trace.invocations)), key=lambda i: times[trace.invocations[i].id][0])
    hashes = [ids.of(inv) for inv in trace.invocations]  # numbered in trace order, written by time
    lines = []
    for i in order:
        inv = trace.invocations[i]
        lines.append(
            json.dumps(
                {
                    "timestamp": round(times[inv.id][0] * 1000.0),
                    "input_length": trace.prompt_len(inv),
                    "output_length": inv.output_tokens,
                    "hash_ids": hashes[i],
                },
                separators=(",", ":"),
            )
        )
    _write(out_path, "".join(line + "\n" for line in lines))
    return len(lines)


def _write(path: str, text: str) -> None:
    data = text.encode("utf-8")
    if path.endswith(".gz"):
        buf = io.BytesIO()
        with gzip.GzipFile(filename="", mode="wb", fileobj=buf, mtime=0) as gz:
            gz.write(data)
        data = buf.getvalue()
    write_bytes_atomic(path, data)  # a failed write leaves the previous file and names the path


# ---------------------------------------------------------------- Weka session files
def _threads(invs: list[Invocation]) -> dict[str, list[Invocation]]:
    """Calls grouped into agent threads: a call continues the thread of its first same-agent
    dependency; any other call starts a thread (the client's first one is the main agent)."""
    thread_of: dict[str, str] = {}
    threads: dict[str, list[Invocation]] = {}
    by_id = {inv.id: inv for inv in invs}
    for inv in invs:
        same = next((d for d in inv.deps if d in by_id and by_id[d].agent_id == inv.agent_id), None)
        head = thread_of[same] if same else inv.id
        thread_of[inv.id] = head
        threads.setdefault(head, []).append(inv)
    return threads


def _session(
    client: str, invs: list[Invocation], trace: Trace, ids: BlockIds, times: dict[str, tuple[float, float]]
) -> dict[str, Any]:
    block = ids.block_tokens
    threads = _threads(invs)
    spawned: dict[str, list[str]] = {}  # call id -> heads of the threads it spawned
    for head in list(threads)[1:]:
        spawner = threads[head][0].deps[0] if threads[head][0].deps else None
        spawned.setdefault(spawner or next(iter(threads)), []).append(head)

    def requests(head: str, origin_s: float) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        prev_finish: float | None = None
        for inv in threads[head]:
            start, finish = times[inv.id]
            rec: dict[str, Any] = {
                "t": round(start - origin_s, 6),
                "type": "n",
                "model": inv.model,
                "in": trace.prompt_len(inv),
                "out": inv.output_tokens,
                "hash_ids": ids.of(inv)[: trace.prompt_len(inv) // block],
            }
            if inv.service_s is not None:
                rec["api_time"] = round(inv.service_s, 6)
            rec["think_time"] = round(max(0.0, start - prev_finish), 6) if prev_finish is not None else 0.0
            out.append(rec)
            prev_finish = finish
            for k, sub in enumerate(spawned.get(inv.id, [])):
                calls = threads[sub]
                sub_start, sub_end = times[calls[0].id][0], max(times[c.id][1] for c in calls)
                out.append(
                    {
                        "t": round(sub_end - origin_s, 6),
                        "type": "subagent",
                        "agent_id": f"agent_{len(out):03d}_{k}",
                        "subagent_type": calls[0].agent_id,
                        "duration_ms": round((sub_end - sub_start) * 1000.0, 3),
                        "models": sorted({c.model for c in calls if c.model}),
                        "requests": requests(sub, sub_start),
                    }
                )
        return out

    main = next(iter(threads))
    return {
        "id": client,
        "block_size": block,
        "hash_id_scope": "local",
        "models": sorted({inv.model for inv in invs if inv.model}),
        "requests": requests(main, times[threads[main][0].id][0]),
    }


def export_weka(trace: Trace, out_dir: str, block_tokens: int | None = None) -> int:
    """One `<client>.json.gz` per client in `out_dir` (created); returns the number of sessions."""
    ids, times = BlockIds(block_tokens or trace.block_tokens), schedule(trace)
    clients: dict[str, list[Invocation]] = {}
    for inv in trace.invocations:
        clients.setdefault(inv.client_id, []).append(inv)
    os.makedirs(out_dir, exist_ok=True)
    for client, invs in clients.items():
        name = client.replace(os.sep, "_") or "client"
        _write(
            os.path.join(out_dir, f"{name}.json.gz"),
            json.dumps(_session(client, invs, trace, ids, times), separators=(",", ":")),
        )
    return len(clients)


def export_trace(fmt: str, trace: Trace, out: str, block_tokens: int | None = None) -> int:
    """Export in format `fmt` (mooncake: a JSONL file; weka: a directory); ValueError if unknown."""
    if fmt == "mooncake":
        return export_mooncake(trace, out, block_tokens)
    if fmt == "weka":
        return export_weka(trace, out, block_tokens)
    raise ValueError(f"unknown export format {fmt!r} (known: {', '.join(EXPORTERS)})")
