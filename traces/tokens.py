"""Deterministic segment -> token-id expansion.

Every segment's ids are a *stream* named by a stable hash (blake2b, never Python's hash()) of
(kind, key, trace seed) (for unique segments also the invocation id and segment index), so every
process sees the same prompt:
- the first id is the hash's top 31 bits: two different streams differ at their first token, which
  is where two prompts diverge (prompts are concatenations of segments), so the radix tree
  branches exactly where the segments do;
- the others are a window, at a hash-chosen offset, of one fixed table of ``TABLE_SIZE`` splitmix64
  ids. Streams are prefix-stable (the first n ids of a longer draw equal a draw of n), so a shorter
  use of a name or a partial block takes a prefix of the same stream.
Why a table: every id is then one of 65,536 existing int objects, a couple of MiB that stay in the
CPU cache. With a fresh int per token (a splitmix64 id each), copying and comparing prompts touched
tens of MiB of scattered ints and allocated hundreds per request: about a sixth of the simulator's
time (benchmarks/sim_speed.py).
"""

from __future__ import annotations

import hashlib
from array import array
from collections import OrderedDict
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

import kvflow  # noqa: F401  (its import checks a compiled build; this module is compiled with the core)

if TYPE_CHECKING:
    from traces.schema import Segment

TOKEN_ID_LIMIT = 2**31  # ids are in [0, TOKEN_ID_LIMIT)
TOKEN_TYPECODE = "i"  # C int: 32-bit signed everywhere we run, holds every id in 4 bytes


def stable_hash(*parts: object) -> int:
    """64-bit hash of the parts' reprs, stable across processes and Python versions."""
    text = "\x1f".join([f"{type(p).__name__}:{p}" for p in parts])
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest(), "little")


_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)


def _random_ids(n: int, *parts: object) -> np.ndarray:
    """``random_tokens`` as a numpy array (uint64)."""
    z = np.arange(1, n + 1, dtype=np.uint64) * _GOLDEN + np.uint64(stable_hash(*parts))  # wraps mod 2**64
    z ^= z >> np.uint64(30)
    z *= _MIX1
    z ^= z >> np.uint64(27)
    z *= _MIX2
    z ^= z >> np.uint64(31)
    return z & np.uint64(TOKEN_ID_LIMIT - 1)


def random_tokens(n: int, *parts: object) -> list[int]:
    """``n`` pseudo-random ids in [0, TOKEN_ID_LIMIT): splitmix64 of a counter from the parts' hash."""
    return _random_ids(n, *parts).tolist()


TABLE_SIZE = 1 << 16
BLOCK_CACHE_LIMIT = 1 << 16  # block stream starts kept: a tiled 1M-request trace has ~11M distinct
#                              blocks (22 GB when each one's 512-token array stayed cached)
_ITEM = array(TOKEN_TYPECODE).itemsize
_table_view: list[memoryview] = []  # the table's bytes, once it exists (no copy per block)


def _table_bytes() -> memoryview:
    """A read-only byte view of the shared table (made on first use, after the table is filled)."""
    if not _table_view:
        _stream_start(("table",))  # fills the table if nothing has yet
        _table_view.append(memoryview(_table_array).cast("B").toreadonly())
    return _table_view[0]


_table: list[int] = []  # the table as int objects: made only for list expansion (``stream_tokens``)
_table_array = array(TOKEN_TYPECODE)


def _fill_table() -> None:
    """Fill the shared table, machine ints straight from numpy: the simulator expands into arrays
    only, and a list of 65,536 int objects was 2.3 MB of every run (~1.2 KB per request at 64
    workflows, benchmarks/scale.py --breakdown)."""
    if not _table_array:
        ids = _random_ids(TABLE_SIZE, "token-table").astype(np.intc)  # C int: the array's "i" (< 2**31)
        _table_array.frombytes(ids.tobytes())


def _table_list() -> list[int]:
    """The table as a list of ints, made on first use (the same ids as ``_table_array``)."""
    if not _table:
        _fill_table()
        _table.extend(_table_array)
    return _table


def token_table() -> array:
    """The shared table of ``TABLE_SIZE`` ids, filled on first use: always the same array, which
    no caller may change (``traces.table_run`` finds windows of it)."""
    _fill_table()
    return _table_array


def window_ids(first: int, offset: int, n: int) -> array:
    """``first``, then the table's ``offset : offset + n - 1``, as a new array (``n`` >= 1, the window
    inside the table): one slice with its first id replaced where the table allows."""
    if offset >= 1:
        out = _table_array[offset - 1 : offset - 1 + n]
        out[0] = first
        return out
    out = array(TOKEN_TYPECODE, [first])
    out += _table_array[: n - 1]
    return out


def _stream_start(parts: tuple[object, ...]) -> tuple[int, int]:
    """(first id, table offset of the second) of the stream named by ``parts``."""
    _fill_table()
    h = stable_hash(*parts)
    return h >> 33, h % TABLE_SIZE


def _block_stream_start(key: str | int, seed: int) -> tuple[int, int]:
    """``_stream_start(("block", key, seed))`` with the hashed text built directly (same bytes as
    ``stable_hash``'s): a tiled Mooncake trace hashes ~11M blocks."""
    if type(key) not in (int, str) or type(seed) is not int:
        return _stream_start(("block", key, seed))
    if not _table_array:
        _fill_table()
    text = f"str:block\x1f{type(key).__name__}:{key}\x1fint:{seed}"
    h = int.from_bytes(hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest(), "little")
    return h >> 33, h % TABLE_SIZE


def _unique_stream_start(inv_id: str, index: int, key: str | int, seed: int) -> tuple[int, int]:
    """``_stream_start(("unique", inv_id, index, key, seed))`` with the text built directly (the
    same bytes as ``stable_hash``'s): one per generated invocation's dynamic segment."""
    if not (type(inv_id) is str and type(index) is int and type(key) in (int, str) and type(seed) is int):
        return _stream_start(("unique", inv_id, index, key, seed))
    if not _table_array:
        _fill_table()
    text = f"str:unique\x1fstr:{inv_id}\x1fint:{index}\x1f{type(key).__name__}:{key}\x1fint:{seed}"
    h = int.from_bytes(hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest(), "little")
    return h >> 33, h % TABLE_SIZE


def stream_tokens(n: int, *parts: object) -> list[int]:
    """The first ``n`` ids of the stream named by ``parts``: the top 31 bits of their hash, then a
    window of the shared table starting at the hash modulo ``TABLE_SIZE`` (wrapping around)."""
    if n <= 0:
        return []
    first, start = _stream_start(parts)
    out = [first]
    rest, table = n - 1, _table_list()
    while rest > 0:
        take = min(rest, TABLE_SIZE - start)
        out.extend(table[start : start + take])
        rest, start = rest - take, 0
    return out


def stream_array(n: int, *parts: object) -> array:
    """``stream_tokens`` as a machine-integer array (same ids): no int objects at all."""
    out = array(TOKEN_TYPECODE)
    if n <= 0:
        return out
    first, start = _stream_start(parts)
    out.append(first)
    rest = n - 1
    while rest > 0:
        take = min(rest, TABLE_SIZE - start)
        out += _table_array[start : start + take]
        rest, start = rest - take, 0
    return out


class TokenSource:
    """Expands segments to token ids, caching one list (and one array) per shared name, and where the
    streams of the ``BLOCK_CACHE_LIMIT`` most recently added block hashes start (a block's array is
    one slice of the table; keeping all of a long hash-id trace's arrays would not fit in memory)."""

    def __init__(self, seed: int, block_tokens: int) -> None:
        self.seed = seed
        self.block_tokens = block_tokens
        self._cache: dict[tuple[str, str | int], list[int]] = {}
        # shared name -> where its stream starts: a shared segment's array is one slice of the table,
        # made per prompt (each prompt copies it anyway), so no array per name stays cached (at
        # 1,024 workflows x 10 agents those were 1.4 KB per simulated request, benchmarks/scale.py)
        self._shared_starts: dict[str | int, int] = {}  # (packed as the unique starts below)
        self._block_starts: OrderedDict[str | int, tuple[int, int]] = OrderedDict()  # oldest first
        # segment index -> invocation -> where its unique stream starts, packed in one int (first id
        # * TABLE_SIZE + table offset): hashed once per trace, not once per expansion (a sweep expands the
        # same prompts for every policy); keyed by the trace's own id strings and packed, an entry is
        # ~70 B instead of ~210 B with a (id, index) key and a (first, offset) value
        self._unique_starts: dict[int, dict[str, int]] = {}

    def _unique_start(self, seg: Segment, inv_id: str, index: int) -> tuple[int, int]:
        starts = self._unique_starts.get(index)
        if starts is None:
            starts = self._unique_starts[index] = {}
        packed = starts.get(inv_id)
        if packed is None:
            first, offset = _unique_stream_start(inv_id, index, seg.key, self.seed)
            packed = starts[inv_id] = first * TABLE_SIZE + offset
        return divmod(packed, TABLE_SIZE)

    def _stream(self, kind: str, key: str | int, n: int) -> list[int]:
        """The first ``n`` ids of a named stream as a list, from the cache (made if too short)."""
        cached = self._cache.get((kind, key))
        if cached is None or len(cached) < n:
            size = max(n, self.block_tokens) if kind == "block" else n
            cached = self._cache[(kind, key)] = stream_tokens(size, kind, key, self.seed)
        return cached if len(cached) == n else cached[:n]

    def segment(self, seg: Segment, inv_id: str, index: int) -> list[int]:
        if seg.kind == "shared" or seg.kind == "block":
            return self._stream(seg.kind, seg.key, seg.n_tokens)
        if seg.kind == "unique":
            return stream_tokens(seg.n_tokens, "unique", inv_id, index, seg.key, self.seed)
        return list(seg.ids or ())

    def _shared_start(self, key: str | int) -> tuple[int, int]:
        packed = self._shared_starts.get(key)
        if packed is None:
            first, offset = _stream_start(("shared", key, self.seed))
            packed = self._shared_starts[key] = first * TABLE_SIZE + offset
        return divmod(packed, TABLE_SIZE)

    def _block_start(self, key: str | int) -> tuple[int, int]:
        """(first id, table offset) of block ``key``'s stream, from the bounded cache (first in, first
        out: a hit costs one dict lookup, no reordering; a tiled trace's reuse is mostly recent)."""
        cache = self._block_starts
        start = cache.get(key)
        if start is None:
            start = cache[key] = _block_stream_start(key, self.seed)
            if len(cache) > BLOCK_CACHE_LIMIT:
                cache.popitem(last=False)
        return start

    def segment_array(self, seg: Segment, inv_id: str, index: int) -> array:
        """``segment`` as a new ``array(TOKEN_TYPECODE)``: for a named stream, one slice of the table
        with the first id replaced (or the wrapped-around stream, built in pieces)."""
        kind = seg.kind
        if kind == "shared" or kind == "unique" or kind == "block":
            if kind == "shared":
                first, start = self._shared_start(seg.key)
            elif kind == "unique":
                first, start = self._unique_start(seg, inv_id, index)
            else:
                first, start = self._block_start(seg.key)
            n = seg.n_tokens
            if n > 0 and start + n - 1 <= TABLE_SIZE:  # the window fits: no wrap-around
                return window_ids(first, start, n)
            if kind == "unique":
                return stream_array(n, "unique", inv_id, index, seg.key, self.seed)  # wraps around
            return stream_array(n, kind, seg.key, self.seed)
        return array(TOKEN_TYPECODE, seg.ids or ())

    def prompt_array(self, segments: Sequence[Segment], inv_id: str) -> array:
        """The segments' ids in one new array: block segments are copied straight from the table
        (one copy each, no intermediate array: a Mooncake prompt is ~30 of them)."""
        if not any(seg.kind == "block" for seg in segments):
            parts = [self.segment_array(seg, inv_id, i) for i, seg in enumerate(segments)]
            if len(parts) < 2:
                return parts[0] if parts else array(TOKEN_TYPECODE)  # (each part is a new array)
            joined = parts[0] + parts[1]  # one allocation of the usual fixed + dynamic prompt
            for part in parts[2:]:
                joined += part
            return joined
        # one join of table slices (views, no copy) and other parts, one copy into the array, then
        # each block's first id: a per-block append cost more than the rest of a Mooncake request's
        # expansion
        table, block_start = _table_bytes(), self._block_start
        pieces: list[memoryview | array] = []
        firsts: list[tuple[int, int]] = []  # (position, first id) of each table slice
        pos = 0
        for i, seg in enumerate(segments):
            n = seg.n_tokens
            if seg.kind == "block" and n > 0:
                first, start = block_start(seg.key)
                if 1 <= start and start + n - 1 <= TABLE_SIZE:
                    pieces.append(table[(start - 1) * _ITEM : (start - 1 + n) * _ITEM])
                    firsts.append((pos, first))
                    pos += n
                    continue
            part = self.segment_array(seg, inv_id, i)
            pieces.append(part)
            pos += len(part)
        out = array(TOKEN_TYPECODE)
        out.frombytes(b"".join(pieces))
        for at, first in firsts:
            out[at] = first
        return out
