"""Client names for imported files, unique across one import (ids are namespaced by source path).

An importer names a client after its log (``20230824113404`` for ``20230824113404.log.gz``), so
invocation ids ``<client>/<n>`` stay short and stable. Two inputs with the same file name (in two
directories, or the same path given twice) would then share ids and the written trace would fail
its own reader ("duplicate invocation id"): those inputs are named by their whole path instead,
and a path given more than once gets ``#2``, ``#3``, ...
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Sequence


def strip_suffixes(name: str, suffixes: Sequence[str]) -> str:
    """``name`` without the trailing ``suffixes`` (tried in order: ``(".gz", ".log")``)."""
    for ext in suffixes:
        name = name[: -len(ext)] if name.endswith(ext) and len(name) > len(ext) else name
    return name


def unique_names(paths: Sequence[str], suffixes: Sequence[str]) -> list[str]:
    """One name per path: its file name without ``suffixes`` when no other input has it, else its
    normalized path without them, with ``#k`` for the k-th repeat of one path."""
    stems = [strip_suffixes(os.path.basename(p), suffixes) for p in paths]
    counts = Counter(stems)
    names = [
        s if counts[s] == 1 else strip_suffixes(os.path.normpath(p), suffixes)
        for s, p in zip(stems, paths, strict=True)
    ]
    seen: Counter[str] = Counter()
    out = []
    for name in names:
        seen[name] += 1
        out.append(name if seen[name] == 1 else f"{name}#{seen[name]}")
    taken = Counter(out)
    if len(taken) != len(out):  # a "#k" name that another input had already: number them all
        out = [f"{name}#{i}" for i, name in enumerate(out, start=1)]
    return out


def fresh(name: str, taken: set[str]) -> str:
    """``name``, or ``name#2``, ``name#3``, ... : the first not in ``taken`` (which it joins)."""
    out, k = name, 1
    while out in taken:
        k += 1
        out = f"{name}#{k}"
    taken.add(out)
    return out
