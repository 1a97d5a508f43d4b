"""Deterministic segment -> token-id expansion.

Token ids are splitmix64 outputs (a counter-based generator: token i = mix(base + i x golden))
where the base is a stable hash (blake2b, never Python's hash()) of (kind, key, trace seed), so
every process sees the same prompt. Counter-based streams are prefix-stable (the first n of a
longer draw equal a draw of n), which lets a shorter use of a name or a partial block take a prefix
of the same stream, and cost one vectorised numpy expression (no generator set-up per segment,
which dominated simulator time). Unique (per-invocation) segments are made even cheaper: a hashed
first id and a window of a shared id table (``unique_tokens``).
"""
from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from traces.schema import Segment

TOKEN_ID_LIMIT = 2**31  # ids are in [0, TOKEN_ID_LIMIT)


def stable_hash(*parts: object) -> int:
    """64-bit hash of the parts' reprs, stable across processes and Python versions."""
    text = "\x1f".join(f"{type(p).__name__}:{p}" for p in parts)
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest(), "little")


_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)


def _splitmix(z: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser in place (wrapping uint64 arithmetic), masked to token ids."""
    t = z >> np.uint64(30)
    z ^= t
    z *= _MIX1
    np.right_shift(z, np.uint64(27), out=t)
    z ^= t
    z *= _MIX2
    np.right_shift(z, np.uint64(31), out=t)
    z ^= t
    z &= np.uint64(TOKEN_ID_LIMIT - 1)
    return z


def random_tokens(n: int, *parts: object) -> list[int]:
    """``n`` pseudo-random ids in [0, TOKEN_ID_LIMIT): splitmix64 of a counter from the parts' hash."""
    z = np.arange(1, n + 1, dtype=np.uint64) * _GOLDEN + np.uint64(stable_hash(*parts))  # wraps mod 2**64
    return _splitmix(z).tolist()


UNIQUE_TABLE_SIZE = 1 << 16
_unique_table: list[int] = []


def unique_tokens(n: int, *parts: object) -> list[int]:
    """``n`` ids private to one invocation, cheap to make: the first is the top 31 bits of the
    parts' hash (so two unique segments already differ at their first token, where the radix
    tree branches), the rest a window, at a hash-chosen offset, of one process-wide table of
    splitmix64 ids (``random_tokens(UNIQUE_TABLE_SIZE, "unique-table")``). The rest are existing
    int objects: a simulation expands a fresh dynamic part for every request, and allocating
    hundreds of new ints per request was a tenth of the simulator's time."""
    if n <= 0:
        return []
    if not _unique_table:
        _unique_table.extend(random_tokens(UNIQUE_TABLE_SIZE, "unique-table"))
    h = stable_hash(*parts)
    out = [h >> 33]
    start, rest = h % UNIQUE_TABLE_SIZE, n - 1
    while rest > 0:
        take = min(rest, UNIQUE_TABLE_SIZE - start)
        out.extend(_unique_table[start:start + take])
        rest, start = rest - take, 0
    return out


class TokenSource:
    """Expands segments to token ids, caching one array per shared name / block hash."""

    def __init__(self, seed: int, block_tokens: int) -> None:
        self.seed = seed
        self.block_tokens = block_tokens
        self._cache: dict[tuple[str, str | int], list[int]] = {}

    def _stream(self, kind: str, key: str | int, n: int) -> list[int]:
        cached = self._cache.get((kind, key))
        if cached is None or len(cached) < n:
            size = max(n, self.block_tokens) if kind == "block" else n
            cached = random_tokens(size, kind, key, self.seed)
            self._cache[(kind, key)] = cached
        return cached if len(cached) == n else cached[:n]

    def segment(self, seg: Segment, inv_id: str, index: int) -> list[int]:
        if seg.kind == "shared" or seg.kind == "block":
            return self._stream(seg.kind, seg.key, seg.n_tokens)
        if seg.kind == "unique":
            return unique_tokens(seg.n_tokens, "unique", inv_id, index, seg.key, self.seed)
        return list(seg.ids or ())
