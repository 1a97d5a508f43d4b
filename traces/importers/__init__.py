"""Importers turn real logs into traces: chatdev (ChatDev run logs), mooncake (block-hash JSONL),
openai (chat sessions). Each exposes `import_files(paths, seed=0, warn=print_to_stderr) -> Trace`."""
from __future__ import annotations

from typing import Callable

from traces.schema import Trace


def _registry() -> dict[str, Callable[..., Trace]]:
    from traces.importers import chatdev, mooncake, openai

    return {"chatdev": chatdev.import_files, "mooncake": mooncake.import_files,
            "openai": openai.import_files}


IMPORTERS = ("chatdev", "mooncake", "openai")


def import_trace(fmt: str, paths: list[str], **kwargs: object) -> Trace:
    """Import `paths` in format `fmt`; ValueError for an unknown format or unreadable input."""
    if fmt not in IMPORTERS:
        raise ValueError(f"unknown import format {fmt!r} (known: {', '.join(IMPORTERS)})")
    return _registry()[fmt](paths, **kwargs)
