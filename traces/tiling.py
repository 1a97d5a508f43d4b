"""A Mooncake trace of any length: one recorded file repeated ("tiled") with fresh hash ids.

Scale benchmarks need a million-request Mooncake-style trace; the published and synthetic files
have a few thousand. Tile ``k`` replays the file with every hash id moved into its own namespace
(integers: ``id + k * stride``, ``stride`` above the file's largest id; strings: ``"k:id"``), so a
tile shares no block with another (the file's own reuse statistics hold inside each tile), and with
timestamps shifted by ``k`` times the file's span plus one mean gap, so tiles follow each other at
the file's request rate. Invocation ids are ``"0"``, ``"1"``, ... in arrival order.

Memory: one frozen ``Segment`` per (tile, hash id) and one segment list per request; no tokens.
Token ids are drawn when a request is submitted (``Trace.prompt_array``) and dropped when it ends.
"""

from __future__ import annotations

import gc
import os
from collections.abc import Callable
from operator import itemgetter

from traces.importers.mooncake import BLOCK_TOKENS, read_requests
from traces.schema import FORMAT_NAME, FORMAT_VERSION, Invocation, Segment, Trace

__all__ = ["tile_mooncake"]


def tile_mooncake(
    path: str | os.PathLike[str], n_requests: int, block_tokens: int = BLOCK_TOKENS, seed: int = 0
) -> Trace:
    """The first ``n_requests`` requests of ``path`` tiled as described above; ValueError("FILE:LINE:
    problem") for a bad file, ValueError for a non-positive count."""
    if type(n_requests) is not int or n_requests < 1:
        raise ValueError(f"n_requests must be a positive integer, got {n_requests!r}")
    was_enabled = gc.isenabled()
    gc.disable()  # the cyclic collector rescanned the growing lists of new objects: half the build time
    try:
        return _tile(path, n_requests, block_tokens, seed)
    finally:
        if was_enabled:
            gc.enable()


def _tile(path: str | os.PathLike[str], n_requests: int, block_tokens: int, seed: int) -> Trace:
    base = sorted(read_requests(path, block_tokens), key=lambda inv: inv.arrival_s or 0.0)
    if not base:
        raise ValueError(f"{path}: no requests")
    keys = {seg.key for inv in base for seg in inv.segments}
    stride = 1 + max((k for k in keys if type(k) is int), default=0)
    times = [inv.arrival_s or 0.0 for inv in base]
    period_s = times[-1] - times[0] + (times[-1] - times[0]) / max(1, len(base) - 1)
    distinct = list({id(seg): seg for inv in base for seg in inv.segments}.values())  # the reader shares them
    position = {id(seg): i for i, seg in enumerate(distinct)}
    picks = [_picker([position[id(seg)] for seg in inv.segments]) for inv in base]
    invocations: list[Invocation] = []
    for tile in range(-(-n_requests // len(base))):
        moved = _moved_segments(distinct, tile, tile * stride, block_tokens)
        shift_s = tile * period_s
        for inv, pick in zip(base[: n_requests - len(invocations)], picks, strict=False):
            invocations.append(
                Invocation(
                    id=str(len(invocations)),
                    client_id="-",
                    workflow="",
                    agent_id="-",
                    step=0,
                    segments=pick(moved),
                    fixed_segments=0,
                    output_tokens=inv.output_tokens,
                    arrival_s=None if inv.arrival_s is None else inv.arrival_s + shift_s,
                )
            )
    meta = {
        "format": FORMAT_NAME,
        "version": FORMAT_VERSION,
        "seed": seed,
        "block_tokens": block_tokens,
        "provenance": {"importer": "mooncake", "sources": [os.path.basename(path)], "tiled_requests": n_requests},
    }
    return Trace(meta, {}, invocations)


def _picker(positions: list[int]) -> Callable[[list[Segment]], list[Segment]]:
    """A request's segment list out of one tile's moved segments (``itemgetter``: one C call per
    request instead of a Python loop over its blocks; 1M requests of ~30 blocks add up)."""
    if len(positions) < 2:  # itemgetter needs one index at least, and returns a bare item for one
        return lambda moved: [moved[i] for i in positions]
    get = itemgetter(*positions)
    return lambda moved: list(get(moved))


def _moved_segments(distinct: list[Segment], tile: int, id_shift: int, block_tokens: int) -> list[Segment]:
    """Each of the file's distinct segment objects, in ``distinct``'s order, as its copy in tile
    ``tile``'s namespace (full blocks of one hash id stay one shared object)."""
    moved: list[Segment] = []
    full: dict[str | int, Segment] = {}
    for seg in distinct:
        key = seg.key + id_shift if type(seg.key) is int else f"{tile}:{seg.key}" if tile else seg.key
        if seg.n_tokens != block_tokens:
            moved.append(Segment("block", key, seg.n_tokens))
            continue
        shared = full.get(key)
        if shared is None:
            shared = full[key] = Segment("block", key, block_tokens)
        moved.append(shared)
    return moved
