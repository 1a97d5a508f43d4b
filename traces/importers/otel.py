"""OpenTelemetry GenAI spans (exported JSON) -> trace.

A file holds `{"trace_id", "spans": [...]}` (or a bare span list); each span with a GenAI chat /
completion operation (or input messages) is one call. Client = the trace id; agent = the span's
`gen_ai.agent.name` (or an ancestor span's), else the resource `service.name`. Prompt = system
instructions + `gen_ai.input.messages` as text segments (leading system messages are the fixed
part), fitted to `gen_ai.usage.input_tokens` (older: `prompt_tokens`) when present; output =
`gen_ai.usage.output_tokens` (older: `completion_tokens`), else the output text's estimated length.
Dependencies: a call depends on its parent span when that is a call that ended before it
started; otherwise on the calls that had ended when it started and that no other of those
already depends on (the frontier). `delay` = start - latest dependency end, `service_s` = the
span's duration, `model` = the response (else request) model.
"""

from __future__ import annotations

import json
import math
import os
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from traces.importers.naming import fresh, unique_names
from traces.importers.text import estimate_tokens, fit_length, text_segments
from traces.importers.weka import transition_graph
from traces.io import READ_ERRORS, open_bytes, read_problem
from traces.limits import DEFAULT_MAX_PROMPT_TOKENS, check_limit, too_many_tokens
from traces.schema import FORMAT_NAME, FORMAT_VERSION, Invocation, Trace, WorkflowDef

WORKFLOW = "otel"
CALL_OPERATIONS = {"chat", "text_completion", "generate_content", "completion"}
_EPS_S = 1e-6


class OtelError(ValueError):
    """A malformed span file; str() is "FILE: spans[i].field: problem"."""


def _read(path: str) -> tuple[str, list[Any]]:
    try:
        with open_bytes(path) as f:
            obj = json.loads(f.read().decode("utf-8"))
    except READ_ERRORS as exc:
        raise OtelError(f"{path}: cannot read: {read_problem(exc)}") from None
    except UnicodeDecodeError:
        raise OtelError(f"{path}: cannot read: not valid UTF-8") from None
    except (ValueError, RecursionError) as exc:
        raise OtelError(f"{path}: invalid JSON: {(str(exc) or type(exc).__name__).splitlines()[0][:100]}") from None
    spans = obj.get("spans") if isinstance(obj, dict) else obj
    if not isinstance(spans, list):
        raise OtelError(f"{path}: expected an object with a 'spans' list (or a list of spans)")
    trace_id = obj.get("trace_id") if isinstance(obj, dict) else None
    return (trace_id if isinstance(trace_id, str) and trace_id else _stem(path)), spans


def _time_s(span: dict[str, Any], key: str, where: str) -> float:
    v = span.get(key)
    if v is None:
        raise OtelError(f"{where}: missing '{key}'")
    if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
        if v < 0:
            raise OtelError(f"{where}.{key}: negative time {v!r}")
        return float(v) / 1e9  # OTLP: nanoseconds since the epoch
    if isinstance(v, str):
        try:
            t = datetime.fromisoformat(v.replace("Z", "+00:00"))
        except ValueError:
            raise OtelError(f"{where}.{key}: not an ISO 8601 time: {v!r}") from None
        return (t if t.tzinfo else t.replace(tzinfo=UTC)).timestamp()
    raise OtelError(f"{where}.{key}: expected an ISO 8601 string or nanoseconds, got {v!r}")


def _json_attr(attrs: dict[str, Any], key: str, where: str) -> Any:
    v = attrs.get(key)
    if isinstance(v, str) and v[:1] in "[{":
        try:
            return json.loads(v)
        except ValueError:
            raise OtelError(f"{where}.attributes.{key}: invalid JSON in the attribute") from None
    return v


def _part_text(part: Any) -> str:
    if isinstance(part, str):
        return part
    if isinstance(part, dict):
        for key in ("content", "text"):
            if isinstance(part.get(key), str):
                return part[key]
        return json.dumps(part, sort_keys=True)  # tool calls / results: their JSON stands for them
    return ""


def _messages(attrs: dict[str, Any], where: str) -> tuple[list[str], int]:
    """Prompt texts ("<|role|>content") and how many lead as system text (the fixed part)."""
    texts: list[str] = []
    system = _json_attr(attrs, "gen_ai.system_instructions", where)
    if system:
        parts = system if isinstance(system, list) else [system]
        texts.append("<|system|>" + "".join(_part_text(p) for p in parts))
    msgs = _json_attr(attrs, "gen_ai.input.messages", where)
    if msgs is None:
        msgs = _json_attr(attrs, "gen_ai.prompt", where)
    if isinstance(msgs, str):
        msgs = [{"role": "user", "content": msgs}]
    if msgs is not None and not (isinstance(msgs, list) and all(isinstance(m, dict) for m in msgs)):
        raise OtelError(f"{where}.attributes.gen_ai.input.messages: expected a list of messages")
    for m in msgs or []:
        body = m.get("content") if "content" in m else m.get("parts", "")
        body = "".join(_part_text(p) for p in body) if isinstance(body, list) else _part_text(body)
        texts.append(f"<|{m.get('role', '')}|>{body}")
    n_system = next((i for i, t in enumerate(texts) if not t.startswith("<|system|>")), len(texts))
    return texts, n_system


def _usage(attrs: dict[str, Any], names: tuple[str, ...], where: str, limit: int, what: str) -> int | None:
    for name in names:
        v = attrs.get(name)
        if v is None:
            continue
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise OtelError(f"{where}.attributes.{name}: expected a token count, got {v!r}")
        problem = too_many_tokens(v, limit, what)
        if problem:
            raise OtelError(f"{where}.attributes.{name}: {problem}")
        return v
    return None


class _Span:
    """The fields of one span that the import needs."""

    def __init__(self, raw: Any, index: int) -> None:
        self.where = f"spans[{index}]"
        if not isinstance(raw, dict):
            raise ValueError(f"{self.where}: expected an object")
        span_id = raw.get("span_id", raw.get("spanId"))
        if not isinstance(span_id, str) or not span_id:
            raise ValueError(f"{self.where}.span_id: expected a non-empty string, got {span_id!r}")
        attrs, res = raw.get("attributes", {}), raw.get("resource_attributes", {})
        if not isinstance(attrs, dict) or not isinstance(res, dict):
            raise ValueError(f"{self.where}.attributes: expected an object")
        self.id, self.index, self.attrs, self.resource = span_id, index, attrs, res
        parent = raw.get("parent_span_id", raw.get("parentSpanId"))
        self.parent = parent if isinstance(parent, str) and parent else None
        self.start_s = _time_s(raw, "startTimeUnixNano" if "startTimeUnixNano" in raw else "start_time", self.where)
        self.end_s = _time_s(raw, "endTimeUnixNano" if "endTimeUnixNano" in raw else "end_time", self.where)
        if self.end_s < self.start_s:
            raise ValueError(f"{self.where}.end_time: before start_time (negative duration)")
        op = attrs.get("gen_ai.operation.name")
        self.is_call = (isinstance(op, str) and op in CALL_OPERATIONS) or (
            op is None and "gen_ai.input.messages" in attrs
        )


def _agent(span: _Span, by_id: dict[str, _Span]) -> str:
    node: _Span | None = span
    while node is not None:
        name = node.attrs.get("gen_ai.agent.name")
        if isinstance(name, str) and name:
            return name
        node = by_id.get(node.parent) if node.parent else None
    name = span.resource.get("service.name")
    return name if isinstance(name, str) and name else "-"


def _deps(span: _Span, done: list[_Span], closure: dict[str, set[str]]) -> list[_Span]:
    """The explicit parent call when it ended before `span`; else the frontier of ended calls."""
    ended = [d for d in done if d.end_s <= span.start_s + _EPS_S]
    parent = next((d for d in ended if d.id == span.parent), None)
    if parent is not None:
        return [parent]
    covered = set().union(*(closure[d.id] - {d.id} for d in ended)) if ended else set()
    return [d for d in ended if d.id not in covered]


def _invocation(
    span: _Span, client: str, step: int, agent: str, deps: list[_Span], t0_s: float, where: str, limit: int
) -> Invocation:
    texts, n_system = _messages(span.attrs, where)
    fixed = text_segments(texts[:n_system])
    segs = fixed + text_segments(texts[n_system:])
    n_in = _usage(span.attrs, ("gen_ai.usage.input_tokens", "gen_ai.usage.prompt_tokens"), where, limit, "prompt")
    inv_id = f"{client}/{span.id}"
    if n_in is not None or not segs:
        segs, n_fixed = fit_length(segs, len(fixed), n_in or 1, f"{inv_id}/pad")
    else:
        n_fixed = len(fixed)
    n_out = _usage(span.attrs, ("gen_ai.usage.output_tokens", "gen_ai.usage.completion_tokens"), where, limit, "output")
    if n_out is None:
        out = _json_attr(span.attrs, "gen_ai.output.messages", where) or span.attrs.get("gen_ai.output.text", "")
        n_out = estimate_tokens(out if isinstance(out, str) else json.dumps(out))
    model = span.attrs.get("gen_ai.response.model") or span.attrs.get("gen_ai.request.model") or ""
    return Invocation(
        id=inv_id,
        client_id=client,
        workflow=WORKFLOW,
        agent_id=agent,
        step=step,
        segments=segs,
        fixed_segments=n_fixed,
        output_tokens=n_out,
        deps=[f"{client}/{d.id}" for d in deps],
        arrival_s=None if deps else span.start_s - t0_s,
        delay_s=max(0.0, span.start_s - max(d.end_s for d in deps)) if deps else 0.0,
        model=str(model),
        service_s=span.end_s - span.start_s,
    )


def _file_invocations(path: str, client: str, raw_spans: list[Any], limit: int) -> list[Invocation]:
    try:
        spans = [_Span(raw, i) for i, raw in enumerate(raw_spans)]
    except ValueError as exc:
        raise OtelError(f"{path}: {exc}") from None
    by_id = {s.id: s for s in spans}
    calls = sorted((s for s in spans if s.is_call), key=lambda s: (s.start_s, s.end_s, s.index))
    if not calls:
        return []
    t0_s = min(s.start_s for s in spans)
    done: list[_Span] = []
    closure: dict[str, set[str]] = {}
    out: list[Invocation] = []
    for step, span in enumerate(calls):
        deps = _deps(span, done, closure)
        closure[span.id] = {span.id}.union(*(closure[d.id] for d in deps))
        out.append(_invocation(span, client, step, _agent(span, by_id), deps, t0_s, f"{path}: {span.where}", limit))
        done.append(span)
    return out


def import_files(
    paths: list[str],
    seed: int = 0,
    warn: Callable[[str], None] | None = None,
    max_prompt_tokens: int = DEFAULT_MAX_PROMPT_TOKENS,
) -> Trace:
    """Import span files; a file without GenAI call spans is skipped with a line on stderr. A
    client is the file's trace id; a second file with the same one gets ``<id>@<path>``."""
    warn = warn or (lambda msg: print(msg, file=sys.stderr))
    check_limit(max_prompt_tokens)
    invocations: list[Invocation] = []
    sources, skipped, clients = [], [], set()
    for path, by_path in zip(paths, unique_names(paths, (".json",)), strict=True):
        trace_id, spans = _read(path)
        client = fresh(trace_id if trace_id not in clients else f"{trace_id}@{by_path}", clients)
        invs = _file_invocations(path, client, spans, max_prompt_tokens)
        if not invs:
            warn(f"{path}: skipped: no GenAI call spans (gen_ai.operation.name chat/completion)")
            skipped.append(os.path.basename(path))
            continue
        invocations += invs
        sources.append(os.path.basename(path))
    workflows = {}
    if invocations:
        agents, graph = transition_graph(invocations)
        workflows[WORKFLOW] = WorkflowDef(WORKFLOW, agents, graph)
    meta = {
        "format": FORMAT_NAME,
        "version": FORMAT_VERSION,
        "seed": seed,
        "provenance": {
            "importer": "otel",
            "sources": sources,
            "skipped": skipped,
            "gaps": (
                "derived from span times: a call's start - the latest end among its dependencies (its "
                "parent call when that ended first, else the calls that ended before it), floored at 0; "
                "service time = the span's duration; first calls start at their recorded time"
            ),
        },
    }
    return Trace(meta, workflows, invocations)


def _stem(path: str) -> str:
    name = os.path.basename(path)
    return name[: -len(".json")] if name.endswith(".json") else name
