"""Atomic file writes for traces/ outputs (traces must not import harness, which has its own).

Write to a temp file in the target's directory, then ``os.replace``: a failed write (disk full,
a read-only directory) leaves the previous file intact, and the error names the target path.
"""

from __future__ import annotations

import os
from pathlib import Path


def write_bytes_atomic(path: str | os.PathLike[str], data: bytes) -> None:
    """Replace ``path`` by ``data`` or leave it as it was; OSError(filename=path) on failure."""
    target = Path(path)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, target)
    except OSError as exc:
        reason = exc.strerror or str(exc) or type(exc).__name__
        raise OSError(
            exc.errno, f"cannot write ({reason}); the previous file, if any, is unchanged", str(target)
        ) from None
    finally:
        tmp.unlink(missing_ok=True)
