"""Deterministic segment -> token-id expansion.

Token ids are splitmix64 outputs (a counter-based generator: token i = mix(base + i x golden))
where the base is a stable hash (blake2b, never Python's hash()) of (kind, key, trace seed), so
every process sees the same prompt. Counter-based streams are prefix-stable (the first n of a
longer draw equal a draw of n), which lets a shorter use of a name or a partial block take a prefix
of the same stream, and cost one vectorised numpy expression (no generator set-up per segment,
which dominated simulator time).
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


def random_tokens_many(lengths: list[int], parts: list[tuple[object, ...]]) -> list[np.ndarray]:
    """``random_tokens(lengths[k], *parts[k])`` for every k in one vectorised pass (the per-call
    numpy overhead, not the arithmetic, dominated expanding many short segments one by one).
    Returns uint64 arrays; ``.tolist()`` gives exactly what ``random_tokens`` returns."""
    if not lengths:
        return []
    counts = np.asarray(lengths, dtype=np.int64)
    ends = np.cumsum(counts)
    starts = ends - counts
    counter = np.arange(1, int(ends[-1]) + 1, dtype=np.uint64) - np.repeat(starts.astype(np.uint64), counts)
    bases = np.array([stable_hash(*p) for p in parts], dtype=np.uint64)
    z = _splitmix(counter * _GOLDEN + np.repeat(bases, counts))
    return np.split(z, ends[:-1])


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
            return random_tokens(seg.n_tokens, *self.unique_parts(seg, inv_id, index))
        return list(seg.ids or ())

    def unique_parts(self, seg: Segment, inv_id: str, index: int) -> tuple[object, ...]:
        """What a unique segment's ids are derived from (its stream's hash input)."""
        return ("unique", inv_id, index, seg.key, self.seed)

    def unique_many(self, items: list[tuple[Segment, str, int]]) -> list[np.ndarray]:
        """The ids of many unique segments ``(segment, invocation id, index)`` at once."""
        return random_tokens_many([seg.n_tokens for seg, _, _ in items],
                                  [self.unique_parts(seg, inv_id, i) for seg, inv_id, i in items])
