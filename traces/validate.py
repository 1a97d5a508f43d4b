"""`kvflow-trace validate`: every problem of a trace file as "FILE:LINE: problem" (up to a limit)."""

from __future__ import annotations

from traces.io import read_trace
from traces.limits import DEFAULT_MAX_PROMPT_TOKENS
from traces.schema import Trace, TraceError

MAX_ERRORS = 20


def validate_file(
    path: str, max_errors: int = MAX_ERRORS, max_prompt_tokens: int = DEFAULT_MAX_PROMPT_TOKENS
) -> tuple[Trace | None, list[TraceError]]:
    """Parse `path` fully, collecting schema, reference, graph and length problems."""
    return read_trace(path, max_errors=max_errors, max_prompt_tokens=max_prompt_tokens)


def summary(path: str, trace: Trace) -> str:
    clients = {inv.client_id for inv in trace.invocations}
    return (
        f"{path}: OK: format v{trace.meta.get('version')}, {len(trace.workflows)} workflow(s), "
        f"{len(clients)} client(s), {len(trace.invocations)} invocation(s)"
    )
