"""JSON-lines input shared by the importers: one object per non-blank line, errors as FILE:LINE.

Plain or gzipped (told by the magic bytes, so a renamed .gz still reads); every way a file can be
unreadable (missing, a directory, corrupt or truncated gzip, invalid UTF-8, invalid JSON) becomes
one ``ValueError("FILE:LINE: problem")`` so command-line tools can print it as is.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from typing import Any

from traces.io import READ_ERRORS, open_bytes, read_problem

_DECODER = json.JSONDecoder()


def json_lines(path: str | os.PathLike[str]) -> Iterator[tuple[str, Any]]:
    """Yield ``("FILE:LINE", object)`` for each non-blank line; any problem raises ValueError there."""
    lineno, decode = 0, _DECODER.raw_decode  # json.loads minus its wrappers: large traces parse faster
    try:
        with open_bytes(path) as f:
            for lineno, raw in enumerate(f, start=1):
                try:
                    line = raw.decode("utf-8").strip()
                except UnicodeDecodeError:
                    raise ValueError(f"{path}:{lineno}: line is not valid UTF-8") from None
                if not line:
                    continue
                try:
                    obj, end = decode(line)
                except (ValueError, RecursionError):
                    end = -1
                if end != len(line):
                    raise ValueError(f"{path}:{lineno}: invalid JSON")
                yield f"{path}:{lineno}", obj
    except READ_ERRORS as exc:
        raise ValueError(f"{path}:{lineno + 1}: cannot read file: {read_problem(exc)}") from None
