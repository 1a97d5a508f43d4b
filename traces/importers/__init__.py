"""Importers turn real logs into traces: chatdev (ChatDev run logs), mooncake (block-hash JSONL),
openai (chat sessions), weka (coding-agent sessions with sub-agents), otel (OpenTelemetry GenAI
spans). Each exposes `import_files(paths, seed=0, warn=print_to_stderr, max_prompt_tokens=10M) -> Trace`:
a call over the limit is an error naming its file and line or record (traces.limits), and client
names are namespaced by source path where two inputs share a file name (traces.importers.naming)."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable
from typing import Any

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


def import_trace(fmt: str, paths: list[str], **kwargs: Any) -> Trace:
    """Import `paths` in format `fmt`; ValueError for an unknown format, unreadable input, or an
    import that yields no invocation (saying why: the inputs' skip reasons, or that they hold no
    records). ``warn`` (default: stderr) still sees every skip as it happens."""
    if fmt not in IMPORTERS:
        raise ValueError(f"unknown import format {fmt!r} (known: {', '.join(IMPORTERS)})")
    if not paths:
        raise ValueError(f"import {fmt}: no input files given")
    warn = kwargs.pop("warn", None) or (lambda msg: print(msg, file=sys.stderr))
    reasons: list[str] = []

    def collect(msg: str) -> None:
        reasons.append(msg)
        warn(msg)

    trace = importer(fmt)(paths, warn=collect, **kwargs)
    if not trace.invocations:
        why = reasons[0] if reasons else (f"{paths[0]}: no records" if len(paths) == 1 else "no input holds a record")
        more = f" (and {len(reasons) - 1} more skipped)" if len(reasons) > 1 else ""
        raise ValueError(f"import {fmt}: no invocations in {len(paths)} input(s): {why}{more}")
    return trace
