"""Importers turn real logs into traces: chatdev (ChatDev run logs), mooncake (block-hash JSONL),
openai (chat sessions), weka (coding-agent sessions with sub-agents), otel (OpenTelemetry GenAI
spans). Each exposes `import_files(paths, seed=0, warn=print_to_stderr) -> Trace`."""

from __future__ import annotations

from collections.abc import Callable

from traces.schema import Trace


def _registry() -> dict[str, Callable[..., Trace]]:
    from traces.importers import chatdev, mooncake, openai, otel, weka

    return {
        "chatdev": chatdev.import_files,
        "mooncake": mooncake.import_files,
        "openai": openai.import_files,
        "weka": weka.import_files,
        "otel": otel.import_files,
    }


IMPORTERS = ("chatdev", "mooncake", "openai", "weka", "otel")


def import_trace(fmt: str, paths: list[str], **kwargs: object) -> Trace:
    """Import `paths` in format `fmt`; ValueError for an unknown format, unreadable input, or an
    import that yields no invocation."""
    if fmt not in IMPORTERS:
        raise ValueError(f"unknown import format {fmt!r} (known: {', '.join(IMPORTERS)})")
    trace = _registry()[fmt](paths, **kwargs)
    if not trace.invocations:
        raise ValueError(f"import {fmt}: no invocations in {len(paths)} input(s)")
    return trace
