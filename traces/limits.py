"""Size limits every reader, importer and generator applies before it builds anything big.

A prompt of 1e18 tokens (a corrupt log, a typo) used to be accepted and then expanded token by
token until the process ran out of memory. A reader checks each call's prompt and output token
counts against ``max_prompt_tokens`` (default 10M, ``--max-prompt-tokens`` on kvflow-trace and
kvflow-replay) and reports the first one over it as "FILE:LINE: problem"; a generator refuses a
trace of more than ``MAX_INVOCATIONS`` calls before it draws any.
"""

from __future__ import annotations

DEFAULT_MAX_PROMPT_TOKENS = 10_000_000
MAX_INVOCATIONS = 10_000_000


def check_limit(value: int) -> int:
    """``value`` if it is a usable limit (a positive integer), else ValueError."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"max_prompt_tokens must be a positive integer, got {value!r}")
    return value


def too_many_tokens(n_tokens: int, limit: int, what: str = "prompt") -> str | None:
    """The problem text when a call's ``what`` (prompt or output) exceeds ``limit`` tokens, else None."""
    if n_tokens > limit:
        return f"{what} of {n_tokens:,} tokens exceeds the limit of {limit:,} tokens per call (--max-prompt-tokens)"
    return None


def check_tokens(n_tokens: int, limit: int, where: str, what: str = "prompt") -> None:
    """ValueError("WHERE: problem") when ``n_tokens`` exceeds ``limit``."""
    problem = too_many_tokens(n_tokens, limit, what)
    if problem:
        raise ValueError(f"{where}: {problem}")
