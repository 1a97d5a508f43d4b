"""Runs of the shared token table: what the simulator's radix tree keeps instead of copies.

A token stream (``traces.tokens``) is a first id and then a window of one fixed table, so a node of
the tree whose tokens are one stream (a fixed prompt, a dynamic part) can keep just (first id, table
offset, length): a ``TableRun``, ~60 B where a copy of a 1,024-token fixed prompt is 4 KB. At 1,024
workflows x 10 agents the copies were ~1.4 KB of every simulated request (benchmarks/scale.py
--breakdown). ``table_run`` decides, id by id, whether a slice of a prompt is one; the tree calls it
through ``RadixTree.compact_run``, which only the simulator sets (sim/runner.py, sim/fleet.py).
"""

from __future__ import annotations

from array import array
from collections.abc import Iterator, Sequence
from typing import Final

import numpy as np

import kvflow  # noqa: F401  (its import checks a compiled build; this module is compiled with the core)
from kvflow.radix import TokenRun
from traces.tokens import TABLE_SIZE, TOKEN_TYPECODE, token_table, window_ids

_TABLE: Final = token_table()  # filled at import (~5 ms): sim.runner and sim.fleet import this module
RUN_MIN_TOKENS = 64  # a shorter run is kept as an array (a page's key, a small tail after a split)
# where each id is in the table, bucketed by its top bits (ids are uniform in [0, 2**31): ~1 per
# bucket): bucket b's positions are _bucket_at[_bucket_start[b] : _bucket_start[b + 1]] (512 KB in
# all, made on first use; a dict of 65,536 int keys would be ~5 MB)
_BUCKET_SHIFT = 15
_bucket_start = array(TOKEN_TYPECODE)
_bucket_at = array(TOKEN_TYPECODE)


class TableRun(TokenRun):
    """``n`` token ids that are ``first`` and then a window of the shared table from ``offset``:
    what the simulator's radix tree keeps for a node whose tokens are one stream (a fixed prompt,
    a dynamic part) instead of a copy of them. A cached 1,024-token fixed prompt is then ~60 B, not
    4 KB: at 1,024 workflows x 10 agents the copies were ~1.4 KB per simulated request
    (benchmarks/scale.py --breakdown). Reads as the ``array(TOKEN_TYPECODE)`` of its ids does:
    ``len``, indexing, slicing (a long slice is a run again), iteration, ``==`` with an array or a
    run (never with a list, as an array)."""

    __slots__ = ("first", "offset", "n")

    def __init__(self, first: int, offset: int, n: int) -> None:
        self.first = first
        self.offset = offset
        self.n = n

    def __len__(self) -> int:
        return self.n

    def ids(self) -> array:
        """The ids as a new array."""
        return window_ids(self.first, self.offset, self.n) if self.n > 0 else array(TOKEN_TYPECODE)

    def _part(self, start: int, stop: int) -> TableRun | array:
        """Ids ``start:stop`` (0 <= start <= stop <= n): a run when long, else an array."""
        m = stop - start
        if m <= 0:
            return array(TOKEN_TYPECODE)
        if start == 0:
            if m >= RUN_MIN_TOKENS:
                return TableRun(self.first, self.offset, m)
            return window_ids(self.first, self.offset, m)
        at = self.offset + start - 1  # table position of id ``start``
        if m >= RUN_MIN_TOKENS:
            return TableRun(_TABLE[at], at + 1, m)
        return _TABLE[at : at + m]

    def __getitem__(self, index: int | slice) -> object:
        if isinstance(index, slice):
            start, stop, step = index.indices(self.n)
            if step != 1:
                return self.ids()[index]
            return self._part(start, max(start, stop))
        i = index + self.n if index < 0 else index
        if not 0 <= i < self.n:
            raise IndexError("TableRun index out of range")
        return self.first if i == 0 else _TABLE[self.offset + i - 1]

    def __iter__(self) -> Iterator[int]:
        return iter(self.ids())

    def tobytes(self) -> bytes:
        return self.ids().tobytes()

    def __eq__(self, other: object) -> bool:
        if isinstance(other, TableRun):
            if self.n != other.n:
                return False
            if self.first == other.first and self.offset == other.offset:
                return True
            return self.ids() == other.ids()
        if isinstance(other, array):
            return len(other) == self.n and self.ids() == other
        return False  # as an array: unequal to a list, a range, anything else

    def __ne__(self, other: object) -> bool:
        return not self.__eq__(other)

    def __repr__(self) -> str:
        return f"TableRun(first={self.first}, offset={self.offset}, n={self.n})"


def _index_table() -> None:
    """Bucket the table's positions by id once (``_bucket_start`` / ``_bucket_at``)."""
    ids = np.frombuffer(_TABLE, dtype=np.intc)  # (a view: no copy)
    buckets = ids >> _BUCKET_SHIFT
    order = np.argsort(buckets, kind="stable").astype(np.intc)
    starts = np.searchsorted(buckets[order], np.arange(TABLE_SIZE + 1)).astype(np.intc)
    _bucket_at.frombytes(order.tobytes())
    _bucket_start.frombytes(starts.tobytes())


def table_run(tokens: Sequence[int], start: int, end: int) -> TableRun | None:
    """``tokens[start:end]`` as a ``TableRun`` when, id by id, it is one: its first id, then a window
    of the shared table (checked against the table, so any prompt qualifies that happens to be one,
    and none that is not); None otherwise, and for a run shorter than ``RUN_MIN_TOKENS``. The
    simulator's tree stores what this returns instead of a copy (``RadixTree.compact_run``)."""
    n = end - start
    if n < RUN_MIN_TOKENS or type(tokens) is not array or tokens.typecode != TOKEN_TYPECODE:
        return None
    if not _bucket_start:
        _index_table()
    value = tokens[start + 1]
    bucket = value >> _BUCKET_SHIFT
    if not 0 <= bucket < TABLE_SIZE:
        return None  # (a negative id: not in the table)
    table = _TABLE
    for i in range(_bucket_start[bucket], _bucket_start[bucket + 1]):
        at = _bucket_at[i]
        last = at + n - 2  # the table position the last id must have
        if table[at] != value or last >= TABLE_SIZE or table[last] != tokens[end - 1]:
            continue  # (cheap first: a prompt of many streams, e.g. hash-id blocks, fails here)
        # (two array slices and one comparison: a memcmp; comparing memoryviews unpacks id by id)
        if table[at : at + n - 1] == tokens[start + 1 : end]:
            return TableRun(tokens[start], at, n)
    return None
