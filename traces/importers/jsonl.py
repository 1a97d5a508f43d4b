"""JSON-lines input shared by the importers: one object per non-blank line, errors as FILE:LINE."""
from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any


def json_lines(path: str) -> Iterator[tuple[str, Any]]:
    """Yield ``("FILE:LINE", object)`` for each non-blank line; invalid JSON raises ValueError there."""
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                yield where, json.loads(line)
            except ValueError:
                raise ValueError(f"{where}: invalid JSON") from None
