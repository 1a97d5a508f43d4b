"""Importers turn real logs into traces: chatdev (ChatDev run logs), mooncake (block-hash JSONL),
openai (chat sessions), weka (coding-agent sessions with sub-agents), otel (OpenTelemetry GenAI
spans). Each exposes `import_files(paths, seed=0, warn=print_to_stderr) -> Trace`."""

from __future__ import annotations

import importlib
from collections.abc import Callable

from traces.schema import Trace

# format name -> module with ``import_files``: a new importer is one module + one line here
_MODULES = {
    "chatdev": "traces.importers.chatdev",
    "mooncake": "traces.importers.mooncake",
    "openai": "traces.importers.openai",
    "weka": "traces.importers.weka",
    "otel": "traces.importers.otel",
}
IMPORTERS = tuple(_MODULES)


def importer(fmt: str) -> Callable[..., Trace]:
    """The ``import_files`` of format ``fmt`` (imported on first use: importers are independent)."""
    return importlib.import_module(_MODULES[fmt]).import_files  # type: ignore[no-any-return]


def import_trace(fmt: str, paths: list[str], **kwargs: object) -> Trace:
    """Import `paths` in format `fmt`; ValueError for an unknown format, unreadable input, or an
    import that yields no invocation."""
    if fmt not in IMPORTERS:
        raise ValueError(f"unknown import format {fmt!r} (known: {', '.join(IMPORTERS)})")
    trace = importer(fmt)(paths, **kwargs)
    if not trace.invocations:
        raise ValueError(f"import {fmt}: no invocations in {len(paths)} input(s)")
    return trace
