"""Mooncake block-hash JSONL -> trace: one invocation per request, one block segment per hash id.

The one reader of Mooncake files (``kvflow-trace import mooncake`` and ``kvflow-replay`` both use
it). Equal hash ids (integers or strings, as in the published traces and kvcache-simulator) mean
identical ``block_tokens``-token blocks, so a block segment's tokens are keyed by the id; the last
block is partial when input_length is not a multiple of the block size. ``timestamp`` (ms) and
``output_length`` are optional (a cache-only replay needs neither). No agents, no graph.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterator
from typing import Any

from traces.importers.jsonl import json_lines
from traces.limits import DEFAULT_MAX_PROMPT_TOKENS, check_limit, check_tokens
from traces.schema import FORMAT_NAME, FORMAT_VERSION, Invocation, Segment, Trace

BLOCK_TOKENS = 512
_ID_TYPES = {int, str}  # exact types: a bool is not a hash id


def check_request(
    obj: Any, where: str, block_tokens: int = BLOCK_TOKENS, max_prompt_tokens: int = DEFAULT_MAX_PROMPT_TOKENS
) -> tuple[float | None, int, int, list[int | str]]:
    """(timestamp ms or None, input_length, output_length, hash_ids) of one record, or
    ValueError("FILE:LINE: problem") naming the first bad field (a length over
    ``max_prompt_tokens`` is one: checked before the hash ids are looked at)."""
    if not isinstance(obj, dict):
        raise ValueError(f"{where}: expected a JSON object with hash_ids and input_length")
    for key, what in (("input_length", "prompt"), ("output_length", "output")):
        if type(obj.get(key)) is int:
            check_tokens(obj[key], max_prompt_tokens, f"{where}: {key}", what)
    ids = obj.get("hash_ids")
    if not (type(ids) is list and ids and set(map(type, ids)) <= _ID_TYPES):
        raise ValueError(f"{where}: hash_ids must be a non-empty list of integers or strings")
    n_in = obj.get("input_length")
    if type(n_in) is not int or not block_tokens * (len(ids) - 1) < n_in <= block_tokens * len(ids):
        raise ValueError(
            f"{where}: input_length {n_in!r} does not fit {len(ids)} hash ids (blocks of {block_tokens} tokens)"
        )
    n_out = obj.get("output_length", 0)
    if type(n_out) is not int or n_out < 0:
        raise ValueError(f"{where}: output_length {n_out!r} must be a non-negative integer")
    ts = obj.get("timestamp")
    if ts is not None and (type(ts) not in (int, float) or not math.isfinite(ts) or ts < 0):
        raise ValueError(f"{where}: timestamp {ts!r} must be a non-negative number of milliseconds")
    return (None if ts is None else float(ts)), n_in, n_out, ids


def read_requests(
    path: str | os.PathLike[str], block_tokens: int = BLOCK_TOKENS, max_prompt_tokens: int = DEFAULT_MAX_PROMPT_TOKENS
) -> Iterator[Invocation]:
    """The file's requests in file order, ids ``"0"``, ``"1"``, ...; ValueError("FILE:LINE: problem")."""
    full: dict[int | str, Segment] = {}  # one shared Segment per hash id: frozen, and most ids repeat
    for index, (where, obj) in enumerate(json_lines(path)):
        ts_ms, n_in, n_out, ids = check_request(obj, where, block_tokens, max_prompt_tokens)
        for h in set(ids).difference(full):
            full[h] = Segment("block", h, block_tokens)
        segs = list(map(full.__getitem__, ids))
        last = n_in - block_tokens * (len(ids) - 1)
        if last != block_tokens:
            segs[-1] = Segment("block", ids[-1], last)
        yield Invocation(
            id=str(index),
            client_id="-",
            workflow="",
            agent_id="-",
            step=0,
            segments=segs,
            fixed_segments=0,
            output_tokens=n_out,
            arrival_s=None if ts_ms is None else ts_ms / 1000.0,
        )


def import_files(
    paths: list[str],
    seed: int = 0,
    warn: Callable[[str], None] | None = None,
    block_tokens: int = BLOCK_TOKENS,
    max_prompt_tokens: int = DEFAULT_MAX_PROMPT_TOKENS,
) -> Trace:
    """Import Mooncake traces (several files are concatenated, ids prefixed by the file index),
    in arrival order (stable: file order among equal or missing timestamps)."""
    if type(block_tokens) is not int or block_tokens < 1:
        raise ValueError(f"block_tokens must be a positive integer, got {block_tokens!r}")
    check_limit(max_prompt_tokens)
    invocations: list[Invocation] = []
    for f_idx, path in enumerate(paths):
        prefix = f"{f_idx}:" if len(paths) > 1 else ""
        for inv in read_requests(path, block_tokens, max_prompt_tokens):
            inv.id = f"{prefix}{len(invocations)}"
            invocations.append(inv)
    invocations.sort(key=lambda inv: inv.arrival_s or 0.0)
    meta = {
        "format": FORMAT_NAME,
        "version": FORMAT_VERSION,
        "seed": seed,
        "block_tokens": block_tokens,
        "provenance": {"importer": "mooncake", "sources": [os.path.basename(p) for p in paths]},
    }
    return Trace(meta, {}, invocations)


def is_mooncake_file(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` looks like Mooncake JSONL rather than a kvflow trace (whose every line has a
    ``type`` and none ``hash_ids``), by its first record; anything else is left to the Mooncake
    reader to report. A file that cannot be read says so as ValueError("FILE:LINE: problem")."""
    for _, obj in json_lines(path):
        return not (isinstance(obj, dict) and "type" in obj and "hash_ids" not in obj)
    return True
