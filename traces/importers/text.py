"""Offline, deterministic text -> segment mapping used by the text-log importers.

There is no real tokenizer offline, so a text piece becomes a shared segment named by a hash of
its exact text, with a length estimated from a GPT-style pre-tokenization. Identical text thus
maps to identical tokens (shared prefixes survive across calls and logs); importers then scale the
last dynamic segments so each prompt's length equals the logged token count.
"""

from __future__ import annotations

import hashlib
import re

from traces.schema import Segment

# GPT-2-like pre-tokenizer pieces. Calibrated on the 55 ChatDev logs against their logged
# prompt_tokens: pieces up to 10 characters count as one token, longer ones one per 8 characters,
# and the sum is scaled by 0.85 (median estimate/logged ~0.95, so the fit mostly pads).
_PIECE = re.compile(r"'(?:s|t|re|ve|m|ll|d)| ?[A-Za-z]+| ?\d{1,3}| ?[^\sA-Za-z\d]+|\s+")
_SCALE = 0.85


def estimate_tokens(text: str) -> int:
    """Approximate BPE token count of `text` (deterministic, no network, no vocabulary)."""
    pieces = sum(1 if len(p) <= 10 else 1 + (len(p) - 1) // 8 for p in _PIECE.findall(text))
    return max(1, round(pieces * _SCALE)) if pieces else 0


def text_key(text: str) -> str:
    return "txt:" + hashlib.blake2b(text.encode("utf-8"), digest_size=8).hexdigest()


def text_segment(text: str) -> Segment | None:
    """A shared segment for `text` (None for text that estimates to zero tokens)."""
    n = estimate_tokens(text)
    return Segment("shared", text_key(text), n) if n > 0 else None


def text_segments(pieces: list[str]) -> list[Segment]:
    return [s for s in (text_segment(p) for p in pieces) if s is not None]


def fit_length(segments: list[Segment], fixed: int, target: int, pad_key: str) -> tuple[list[Segment], int]:
    """Make the prompt exactly `target` tokens: pad with a unique segment, or cut from the end.

    Cutting keeps a prefix of the last segments (a shared name's shorter use is its prefix), so
    consecutive calls still share their common prefix. Returns (segments, fixed segment count).
    """
    segs, target = list(segments), max(target, 1)
    total = sum(s.n_tokens for s in segs)
    if total < target:
        segs.append(Segment("unique", pad_key, target - total))
        return segs, fixed
    excess = total - target
    while excess > 0 and segs:
        last = segs[-1]
        if last.n_tokens > excess:
            n = last.n_tokens - excess
            segs[-1] = Segment(last.kind, last.key, n, last.ids[:n] if last.ids else None)
            excess = 0
        else:
            excess -= last.n_tokens
            segs.pop()
    return segs, min(fixed, len(segs))
