"""Read and write the JSONL trace format (docs/trace_format.md).

The reader checks every line and reports problems as "FILE:LINE: problem"; `load_trace` stops
at the first one, `traces.validate` collects several. The writer is byte-deterministic (fixed key
order, compact separators, gzip without timestamp) so write -> read -> write is a fixed point.
"""

from __future__ import annotations

import gzip
import io
import json
import math
import os
import zlib
from collections.abc import Iterator
from typing import IO, Any, cast

from traces.graph import graph_problems
from traces.limits import DEFAULT_MAX_PROMPT_TOKENS, check_limit, too_many_tokens
from traces.schema import (
    DEFAULT_BLOCK_TOKENS,
    FORMAT_NAME,
    FORMAT_VERSION,
    Invocation,
    Segment,
    Trace,
    TraceError,
    WorkflowDef,
)

WF_KEYS = {"type", "id", "agents", "graph"}
INV_KEYS = {
    "type",
    "id",
    "client",
    "workflow",
    "agent",
    "step",
    "segments",
    "fixed",
    "output",
    "deps",
    "arrival",
    "delay",
    "model",
    "service",
}
_LINE_ERRORS = (ValueError, TypeError, KeyError, AttributeError, RecursionError, OverflowError)
GZIP_MAGIC = b"\x1f\x8b"
#: what reading a missing, unreadable, truncated or corrupt (gzip) file raises
READ_ERRORS = (OSError, EOFError, zlib.error)


class _Bad(Exception):
    """A problem on the current line (turned into a TraceError with the line number)."""


# ---------------------------------------------------------------- writing
def write_trace(trace: Trace, path: str | os.PathLike[str]) -> None:
    """Write `trace` as JSONL (gzipped when the name ends in .gz); identical input -> identical bytes."""
    data = "".join(line + "\n" for line in dump_lines(trace)).encode("utf-8")
    if str(path).endswith(".gz"):
        buf = io.BytesIO()
        with gzip.GzipFile(filename="", mode="wb", fileobj=buf, mtime=0) as gz:
            gz.write(data)
        data = buf.getvalue()
    with open(path, "wb") as f:
        f.write(data)


def dump_lines(trace: Trace) -> Iterator[str]:
    header: dict[str, Any] = {"type": "header", "format": FORMAT_NAME, "version": FORMAT_VERSION}
    header.update((k, v) for k, v in trace.meta.items() if k not in header)
    yield _dumps(header)
    for wf in trace.workflows.values():
        yield _dumps({"type": "workflow", "id": wf.id, "agents": wf.agents, "graph": wf.graph})
    for inv in trace.invocations:
        yield _dumps(_inv_obj(inv))


def _dumps(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"), allow_nan=False)


def _inv_obj(inv: Invocation) -> dict[str, Any]:
    obj: dict[str, Any] = {
        "type": "inv",
        "id": inv.id,
        "client": inv.client_id,
        "workflow": inv.workflow,
        "agent": inv.agent_id,
        "step": inv.step,
        "fixed": inv.fixed_segments,
        "segments": [_seg_obj(s) for s in inv.segments],
        "output": inv.output_tokens,
    }
    if inv.deps:
        obj["deps"] = inv.deps
    if inv.arrival_s is not None:
        obj["arrival"] = round(float(inv.arrival_s), 6)
    if inv.delay_s:
        obj["delay"] = round(float(inv.delay_s), 6)
    if inv.model:
        obj["model"] = inv.model
    if inv.service_s is not None:
        obj["service"] = round(float(inv.service_s), 6)
    return obj


def _seg_obj(seg: Segment) -> dict[str, Any]:
    if seg.kind == "shared":
        return {"shared": seg.key, "n": seg.n_tokens}
    if seg.kind == "unique":
        return {"unique": seg.n_tokens, "key": seg.key} if seg.key != "" else {"unique": seg.n_tokens}
    if seg.kind == "block":
        return {"block": seg.key, "n": seg.n_tokens}
    return {"tokens": list(seg.ids or ())}


# ---------------------------------------------------------------- reading
def load_trace(path: str | os.PathLike[str], max_prompt_tokens: int = DEFAULT_MAX_PROMPT_TOKENS) -> Trace:
    """Read a .jsonl / .jsonl.gz trace; raise TraceError("FILE:LINE: problem") on the first problem
    (a call over ``max_prompt_tokens`` prompt or output tokens is one)."""
    trace, errors = read_trace(path, max_errors=1, max_prompt_tokens=max_prompt_tokens)
    if errors:
        raise errors[0]
    assert trace is not None
    return trace


def read_trace(
    path: str | os.PathLike[str], max_errors: int = 20, max_prompt_tokens: int = DEFAULT_MAX_PROMPT_TOKENS
) -> tuple[Trace | None, list[TraceError]]:
    """Parse and check a trace, collecting up to `max_errors` problems (the trace is None if any)."""
    reader = _Reader(str(path), check_limit(max_prompt_tokens))
    try:
        for lineno, raw in _lines(str(path)):
            if len(reader.errors) >= max_errors:
                break
            reader.feed(lineno, raw)
        else:
            reader.finish()
    except READ_ERRORS as exc:
        reader.errors.append(TraceError(str(path), reader.last_line + 1, f"cannot read file: {read_problem(exc)}"))
    errors = reader.errors[:max_errors]
    if errors:
        return None, errors
    try:
        return reader.trace(), errors
    except TraceError as exc:
        return None, [exc]


def _lines(path: str) -> Iterator[tuple[int, bytes]]:
    with open_bytes(path) as f:
        yield from enumerate(f, start=1)


def open_bytes(path: str | os.PathLike[str]) -> IO[bytes]:
    """Open for reading bytes, gunzipping when the file starts with the gzip magic or ends in .gz
    (a renamed or suffix-less gzip file reads the same; a corrupt one fails in gzip, not in UTF-8)."""
    with open(path, "rb") as f:
        gzipped = f.read(2) == GZIP_MAGIC
    if gzipped or str(path).endswith(".gz"):
        return cast(IO[bytes], gzip.open(path, "rb"))
    return open(path, "rb")


def read_problem(exc: BaseException) -> str:
    """One-line reason for a READ_ERRORS exception, without the path (the caller names it)."""
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


class _Reader:
    """Line-by-line state: header seen, workflows and invocation ids declared so far."""

    def __init__(self, path: str, max_prompt_tokens: int = DEFAULT_MAX_PROMPT_TOKENS) -> None:
        self.path = path
        self.max_prompt_tokens = max_prompt_tokens
        self.meta: dict[str, Any] | None = None
        self.workflows: dict[str, WorkflowDef] = {}
        self.invocations: list[Invocation] = []
        self.inv_ids: set[str] = set()
        self.errors: list[TraceError] = []
        self.last_line = 0

    def feed(self, lineno: int, raw: bytes) -> None:
        self.last_line = lineno
        try:
            text = raw.decode("utf-8").strip()
            if not text:
                return
            try:
                obj = json.loads(text)
            except _LINE_ERRORS as exc:
                raise _Bad(f"invalid JSON: {str(exc).splitlines()[0][:120]}") from None
            self._record(obj)
        except _Bad as exc:
            self.errors.append(TraceError(self.path, lineno, str(exc)))
        except UnicodeDecodeError:
            self.errors.append(TraceError(self.path, lineno, "line is not valid UTF-8"))
        except _LINE_ERRORS as exc:  # safety net: a malformed line never escapes as a traceback
            self.errors.append(TraceError(self.path, lineno, f"malformed line ({type(exc).__name__})"))

    def finish(self) -> None:
        if self.meta is None and not self.errors:
            self.errors.append(TraceError(self.path, self.last_line + 1, "no header line: empty trace"))

    def trace(self) -> Trace:
        try:
            return Trace(self.meta or {}, self.workflows, self.invocations)
        except ValueError as exc:  # a malformed legacy header.inv_extra table
            raise TraceError(self.path, 1, str(exc)) from None

    def _record(self, obj: Any) -> None:
        if not isinstance(obj, dict):
            raise _Bad("line must be a JSON object")
        kind = obj.get("type")
        if self.meta is None:
            if kind != "header":
                raise _Bad('first line must be the header ({"type": "header", ...})')
            self.meta = _header(obj)
        elif kind == "header":
            raise _Bad("duplicate header")
        elif kind == "workflow":
            wf = _workflow(obj)
            if wf.id in self.workflows:
                raise _Bad(f"duplicate workflow id {wf.id!r}")
            self.workflows[wf.id] = wf
        elif kind == "inv":
            self._invocation(obj)
        else:
            raise _Bad(f"unknown line type {kind!r} (expected header, workflow or inv)")

    def _invocation(self, obj: dict[str, Any]) -> None:
        inv_id = _str(obj, "id")
        if inv_id in self.inv_ids:
            raise _Bad(f"duplicate invocation id {inv_id!r}")
        self.inv_ids.add(inv_id)  # before the other checks, so one bad line does not cascade
        block_tokens = int((self.meta or {}).get("block_tokens", DEFAULT_BLOCK_TOKENS))
        inv = _inv(obj, block_tokens)
        for what, n in (("prompt", sum(s.n_tokens for s in inv.segments)), ("output", inv.output_tokens)):
            problem = too_many_tokens(n, self.max_prompt_tokens, what)
            if problem:
                raise _Bad(problem)
        if inv.workflow:
            wf = self.workflows.get(inv.workflow)
            if wf is None:
                raise _Bad(f"unknown workflow {inv.workflow!r} (declare it on an earlier line)")
            if inv.agent_id not in wf.agents:
                raise _Bad(f"agent {inv.agent_id!r} is not an agent of workflow {inv.workflow!r}")
        for dep in inv.deps:
            if dep not in self.inv_ids or dep == inv.id:
                raise _Bad(f"dependency {dep!r} is not an earlier invocation")
        self.invocations.append(inv)


def _header(obj: dict[str, Any]) -> dict[str, Any]:
    if obj.get("format") != FORMAT_NAME:
        raise _Bad(f"header.format must be {FORMAT_NAME!r}")
    if obj.get("version") != FORMAT_VERSION:
        raise _Bad(f"unsupported version {obj.get('version')!r} (this reader knows {FORMAT_VERSION})")
    seed = obj.get("seed", 0)
    if not _is_int(seed):
        raise _Bad("header.seed must be an integer")
    block = obj.get("block_tokens", DEFAULT_BLOCK_TOKENS)
    if not _is_int(block) or block < 1:
        raise _Bad("header.block_tokens must be a positive integer")
    return {k: v for k, v in obj.items() if k != "type"}


def _workflow(obj: dict[str, Any]) -> WorkflowDef:
    _no_unknown(obj, WF_KEYS, "workflow")
    wf_id = _str(obj, "id")
    agents = obj.get("agents")
    if not isinstance(agents, list) or not all(isinstance(a, str) for a in agents):
        raise _Bad("workflow.agents must be a list of strings")
    if len(set(agents)) != len(agents):
        raise _Bad(f"workflow {wf_id!r} lists an agent twice")
    graph = obj.get("graph")
    if graph is not None:
        problems = graph_problems(graph, agents)
        if problems:
            raise _Bad(f"workflow {wf_id!r}: {problems[0]}")
    return WorkflowDef(wf_id, agents, graph)


def _inv(obj: dict[str, Any], block_tokens: int) -> Invocation:
    _no_unknown(obj, INV_KEYS, "inv")
    segs_raw = obj.get("segments")
    if not isinstance(segs_raw, list):
        raise _Bad("inv.segments must be a list")
    segments = [_segment(s, block_tokens) for s in segs_raw]
    if sum(s.n_tokens for s in segments) < 1:
        raise _Bad("empty prompt: segments hold no tokens")
    fixed = _int(obj, "fixed", minimum=0)
    if fixed > len(segments):
        raise _Bad(f"fixed={fixed} exceeds the number of segments ({len(segments)})")
    deps = obj.get("deps", [])
    if not isinstance(deps, list) or not all(isinstance(d, str) for d in deps):
        raise _Bad("inv.deps must be a list of invocation ids")
    if len(set(deps)) != len(deps):
        raise _Bad("inv.deps lists a dependency twice")
    arrival = obj.get("arrival")
    if arrival is not None:
        arrival = _float(obj, "arrival")
    model = obj.get("model", "")
    if not isinstance(model, str):
        raise _Bad("model must be a string")
    return Invocation(
        id=_str(obj, "id"),
        client_id=_str(obj, "client"),
        workflow=_str(obj, "workflow", empty=True),
        agent_id=_str(obj, "agent", empty=True),
        step=_int(obj, "step", minimum=0),
        segments=segments,
        fixed_segments=fixed,
        output_tokens=_int(obj, "output", minimum=0),
        deps=deps,
        arrival_s=arrival,
        delay_s=_float(obj, "delay") if "delay" in obj else 0.0,
        model=model,
        service_s=_float(obj, "service") if obj.get("service") is not None else None,
    )


def _segment(obj: Any, block_tokens: int) -> Segment:
    if not isinstance(obj, dict):
        raise _Bad("a segment must be an object")
    if "shared" in obj:
        _no_unknown(obj, {"shared", "n"}, "shared segment")
        if not isinstance(obj["shared"], str) or not obj["shared"]:
            raise _Bad("shared segment name must be a non-empty string")
        return Segment("shared", obj["shared"], _int(obj, "n", minimum=0, what="segment length"))
    if "unique" in obj:
        _no_unknown(obj, {"unique", "key"}, "unique segment")
        key = obj.get("key", "")
        if not isinstance(key, str):
            raise _Bad("unique segment key must be a string")
        return Segment("unique", key, _int(obj, "unique", minimum=0, what="segment length"))
    if "block" in obj:
        _no_unknown(obj, {"block", "n"}, "block segment")
        key = obj["block"]
        if not (_is_int(key) or isinstance(key, str)):
            raise _Bad("block hash id must be an integer or string")
        n = _int(obj, "n", minimum=0, what="segment length") if "n" in obj else block_tokens
        if n > block_tokens:
            raise _Bad(f"block segment n={n} exceeds block_tokens={block_tokens}")
        return Segment("block", key, n)
    if "tokens" in obj:
        _no_unknown(obj, {"tokens"}, "tokens segment")
        ids = obj["tokens"]
        if not isinstance(ids, list) or not all(_is_int(t) and 0 <= t < 2**31 for t in ids):
            raise _Bad("tokens segment must be a list of token ids in [0, 2**31)")
        return Segment("tokens", "", len(ids), tuple(ids))
    raise _Bad("segment must have one of shared/unique/tokens/block")


# ---------------------------------------------------------------- field helpers
def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _no_unknown(obj: dict[str, Any], allowed: set[str], what: str) -> None:
    extra = sorted(set(obj) - allowed)
    if extra:
        raise _Bad(f"{what} has unknown field(s) {extra}")


def _str(obj: dict[str, Any], key: str, empty: bool = False) -> str:
    v = obj.get(key)
    if not isinstance(v, str) or (not empty and not v):
        raise _Bad(f"{key} must be a {'' if empty else 'non-empty '}string")
    return v


def _int(obj: dict[str, Any], key: str, minimum: int | None = None, what: str | None = None) -> int:
    v: Any = obj.get(key)
    if not _is_int(v):
        raise _Bad(f"{what or key} must be an integer")
    if minimum is not None and v < minimum:
        raise _Bad(f"negative {what or key}: {v}" if v < 0 else f"{what or key} must be >= {minimum}")
    return v


def _float(obj: dict[str, Any], key: str) -> float:
    v: Any = obj.get(key)
    if not (_is_int(v) or isinstance(v, float)) or not math.isfinite(v):
        raise _Bad(f"{key} must be a finite number")
    if v < 0:
        raise _Bad(f"negative {key}: {v}")
    return float(v)
