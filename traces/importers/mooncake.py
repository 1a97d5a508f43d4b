"""Mooncake block-hash JSONL -> trace: one invocation per request, one block segment per hash id.

Equal hash ids mean identical 512-token blocks, so a block segment's tokens are keyed by the id;
the last block is partial when input_length is not a multiple of 512. No agents, no graph.
"""
from __future__ import annotations

import os
from typing import Any, Callable

from traces.importers.jsonl import json_lines
from traces.schema import FORMAT_NAME, FORMAT_VERSION, Invocation, Segment, Trace

BLOCK_TOKENS = 512


def _request(obj: Any, where: str) -> tuple[float, int, int, list[int]]:
    try:
        ts, n_in, n_out, ids = obj["timestamp"], obj["input_length"], obj["output_length"], obj["hash_ids"]
    except (KeyError, TypeError):
        raise ValueError(f"{where}: expected timestamp, input_length, output_length, hash_ids") from None
    if not (isinstance(ids, list) and ids and all(isinstance(h, int) for h in ids)):
        raise ValueError(f"{where}: hash_ids must be a non-empty list of integers")
    if not (isinstance(n_in, int) and BLOCK_TOKENS * (len(ids) - 1) < n_in <= BLOCK_TOKENS * len(ids)):
        raise ValueError(f"{where}: input_length {n_in!r} does not fit {len(ids)} blocks of {BLOCK_TOKENS}")
    if not isinstance(n_out, int) or n_out < 0 or not isinstance(ts, (int, float)) or ts < 0:
        raise ValueError(f"{where}: bad output_length or timestamp")
    return float(ts), n_in, n_out, ids


def import_files(paths: list[str], seed: int = 0, warn: Callable[[str], None] | None = None) -> Trace:
    """Import Mooncake traces (several files are concatenated, ids prefixed by the file index)."""
    invocations: list[Invocation] = []
    for f_idx, path in enumerate(paths):
        prefix = f"{f_idx}:" if len(paths) > 1 else ""
        for where, obj in json_lines(path):
            ts_ms, n_in, n_out, ids = _request(obj, where)
            last = n_in - BLOCK_TOKENS * (len(ids) - 1)
            segs = [Segment("block", h, BLOCK_TOKENS) for h in ids[:-1]] + [Segment("block", ids[-1], last)]
            invocations.append(Invocation(
                id=f"{prefix}{len(invocations)}", client_id="-", workflow="", agent_id="-",
                step=0, segments=segs, fixed_segments=0, output_tokens=n_out,
                arrival_s=ts_ms / 1000.0))
    invocations.sort(key=lambda inv: inv.arrival_s or 0.0)  # stable: file order among equal times
    meta = {"format": FORMAT_NAME, "version": FORMAT_VERSION, "seed": seed, "block_tokens": BLOCK_TOKENS,
            "provenance": {"importer": "mooncake", "sources": [os.path.basename(p) for p in paths]}}
    return Trace(meta, {}, invocations)
