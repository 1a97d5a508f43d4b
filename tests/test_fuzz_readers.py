"""Hypothesis fuzzing of every reader and importer: random bytes, truncations, random JSON records
and wrong-typed fields give either a clean result or a ValueError (TraceError is one) that names
the file (and, for line-based formats, the line) -- never another exception. A clean import must
also pass the trace reader once written (an importer never writes a trace its own reader rejects).
Runtime: about 16 s (``max_examples`` below; at 400 random examples it found a KeyError in the ChatDev
parser, an unhashable otel operation name and an empty OpenAI session_id written as an empty client)."""

from __future__ import annotations

import atexit
import copy
import gzip
import json
import re
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from sim.replay_cli import load_requests
from traces.generators import generate
from traces.importers import import_trace
from traces.io import dump_lines, load_trace, read_trace, write_trace
from traces.schema import Trace

FUZZ = settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True)
FIXTURE_LOG = Path(__file__).parent / "fixtures" / "traces" / "20230821204606.log.gz"
TMP = Path(tempfile.mkdtemp(prefix="kvflow-fuzz-"))  # one folder for all examples (a fixture per example is slow)
atexit.register(shutil.rmtree, TMP, ignore_errors=True)


# ----- the readers, each a function of one path -------------------------------------------------
def _importer(fmt: str) -> Callable[[str], Trace]:
    return lambda path: import_trace(fmt, [path], warn=lambda _msg: None)


READERS: dict[str, Callable[[str], Any]] = {
    "trace": load_trace,
    "replay": lambda path: load_requests(Path(path), 512),
    **{fmt: _importer(fmt) for fmt in ("chatdev", "mooncake", "openai", "weka", "otel")},
}
LINE_BASED = {"trace", "mooncake", "openai", "chatdev"}  # problems name FILE:LINE (JSON documents: FILE: field)


def _check(kind: str, data: bytes, suffix: str = ".jsonl") -> None:
    """Read ``data`` as a file with ``kind``'s reader: a result, or a ValueError naming the file."""
    path = TMP / f"in{suffix}"
    path.write_bytes(data)
    try:
        result = READERS[kind](str(path))
    except ValueError as exc:  # TraceError, WekaError, OtelError, ReplayInputError are all ValueErrors
        msg = str(exc)
        assert str(path) in msg, f"{kind}: error does not name the file: {msg!r}"
        assert "\n" not in msg.strip(), f"{kind}: error is not one line: {msg!r}"
        if kind in LINE_BASED and "no invocations" not in msg:
            assert re.search(re.escape(str(path)) + r":\d+:", msg), f"{kind}: error names no line: {msg!r}"
        return
    if isinstance(result, Trace) and kind != "trace":  # what an importer returns must pass the reader
        out = TMP / "roundtrip.jsonl"
        write_trace(result, out)
        _, errors = read_trace(out, max_errors=1)
        assert not errors, f"{kind}: imported trace fails its own reader: {errors[0]}"


def _gz(data: bytes) -> bytes:
    return gzip.compress(data, mtime=0)


# ----- valid seeds, one per format ----------------------------------------------------------------
def _trace_bytes() -> bytes:
    lines = list(dump_lines(generate("fanout", width=2, fixed_tokens=8, dynamic_tokens=4, output_tokens=2)))
    return "".join(line + "\n" for line in lines).encode()


MOONCAKE = [
    {"timestamp": 0, "input_length": 700, "output_length": 3, "hash_ids": [1, 2]},
    {"timestamp": 5, "input_length": 512, "output_length": 1, "hash_ids": [1]},
    {"input_length": 1024, "hash_ids": ["a", "b"]},
]
OPENAI = [
    {
        "session_id": "s1",
        "messages": [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": "hello", "name": "helper"},
            {"role": "user", "content": [{"type": "text", "text": "more"}]},
            {"role": "assistant", "content": "ok"},
        ],
        "timestamp": 3,
    },
    [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}],
]
WEKA = {
    "id": "s",
    "block_size": 64,
    "requests": [
        {"t": 0.0, "type": "n", "model": "m", "in": 130, "out": 5, "hash_ids": [1, 2], "api_time": 0.5},
        {
            "t": 2.0,
            "type": "subagent",
            "subagent_type": "explore",
            "duration_ms": 500,
            "requests": [{"t": 0.0, "type": "n", "model": "m", "in": 70, "out": 3, "hash_ids": [7]}],
        },
        {"t": 6.0, "type": "n", "model": "m", "in": 200, "out": 5, "hash_ids": [1, 2, 3], "think_time": 1.0},
    ],
}
_MSGS = json.dumps([{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}])
OTEL = {
    "trace_id": "t",
    "spans": [
        {
            "span_id": "a",
            "start_time": "2026-01-01T00:00:00",
            "end_time": "2026-01-01T00:00:01",
            "attributes": {
                "gen_ai.operation.name": "chat",
                "gen_ai.agent.name": "planner",
                "gen_ai.input.messages": _MSGS,
                "gen_ai.usage.input_tokens": 20,
                "gen_ai.usage.output_tokens": 4,
            },
        },
        {
            "span_id": "b",
            "parent_span_id": "a",
            "startTimeUnixNano": 1767225602000000000,
            "endTimeUnixNano": 1767225603000000000,
            "attributes": {"gen_ai.operation.name": "chat", "gen_ai.usage.input_tokens": 30},
            "resource_attributes": {"service.name": "svc"},
        },
    ],
}


def _jsonl(records: list[Any]) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in records).encode()


SEEDS: dict[str, tuple[bytes, str]] = {
    "trace": (_trace_bytes(), ".jsonl"),
    "replay": (_jsonl(MOONCAKE), ".jsonl"),
    "mooncake": (_jsonl(MOONCAKE), ".jsonl"),
    "openai": (_jsonl(OPENAI), ".jsonl"),
    "weka": (json.dumps(WEKA).encode(), ".json"),
    "otel": (json.dumps(OTEL).encode(), ".json"),
    "chatdev": (gzip.decompress(FIXTURE_LOG.read_bytes()), ".log"),
}


def test_seeds_are_valid() -> None:
    """The seeds themselves import cleanly (so truncations and mutations start from valid input)."""
    for kind, (data, suffix) in SEEDS.items():
        path = TMP / f"seed{suffix}"
        path.write_bytes(data)
        result = READERS[kind](str(path))
        assert result if not isinstance(result, Trace) else result.invocations, kind


KINDS = sorted(READERS)


# ----- random bytes and truncations ---------------------------------------------------------------
@pytest.mark.parametrize("kind", KINDS)
@FUZZ
@given(data=st.binary(max_size=400), gzipped=st.booleans())
@example(data=b"[" * 100_000, gzipped=False)  # nesting deeper than the JSON parser's recursion
@example(data=b"\x1f\x8b\x08\x00garbage", gzipped=False)  # gzip magic, corrupt body
@example(data=b"\xff\xfe{}\n", gzipped=True)  # invalid UTF-8 inside gzip
def test_random_bytes(kind: str, data: bytes, gzipped: bool) -> None:
    _check(kind, _gz(data) if gzipped else data, ".gz" if gzipped else SEEDS[kind][1])


@pytest.mark.parametrize("kind", KINDS)
@FUZZ
@given(cut=st.floats(0.0, 1.0), gzipped=st.booleans())
def test_truncations(kind: str, cut: float, gzipped: bool) -> None:
    data, suffix = SEEDS[kind]
    if gzipped:
        data, suffix = _gz(data), suffix + ".gz"
    _check(kind, data[: int(len(data) * cut)], suffix)


# ----- random JSON records and wrong-typed fields -------------------------------------------------
JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
JSON_KINDS = [k for k in KINDS if k != "chatdev"]


@pytest.mark.parametrize("kind", JSON_KINDS)
@FUZZ
@given(records=st.lists(JSON, min_size=1, max_size=4))
def test_random_json(kind: str, records: list[Any]) -> None:
    doc = json.dumps(records[0] if SEEDS[kind][1] == ".json" else None)
    data = doc.encode() if SEEDS[kind][1] == ".json" else _jsonl(records)
    _check(kind, data, SEEDS[kind][1])


def _paths(obj: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every (key/index path) inside a JSON value, for mutating one field."""
    out = [prefix] if prefix else []
    if isinstance(obj, dict):
        for k, v in obj.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            out += _paths(v, (*prefix, i))
    return out


def _seed_records(kind: str) -> list[Any]:
    data, suffix = SEEDS[kind]
    if suffix == ".json":
        return [json.loads(data)]
    return [json.loads(line) for line in data.decode().splitlines() if line.strip()]


WRONG = st.sampled_from([None, True, -1, 0, 10**30, 1.5, float("nan"), "", "x", [], {}, [1, "a"], {"a": 1}])


@pytest.mark.parametrize("kind", JSON_KINDS)
@FUZZ
@given(data=st.data())
def test_wrong_typed_field(kind: str, data: st.DataObject) -> None:
    records = copy.deepcopy(_seed_records(kind))
    index = data.draw(st.integers(0, len(records) - 1))
    paths = _paths(records[index])
    if not paths:
        return
    where = data.draw(st.sampled_from(paths))
    node = records[index]
    for key in where[:-1]:
        node = node[key]
    node[where[-1]] = data.draw(WRONG | JSON)
    if SEEDS[kind][1] == ".json":
        body = json.dumps(records[0]).encode()
    else:
        body = "".join(json.dumps(r) + "\n" for r in records).encode()
    _check(kind, body, SEEDS[kind][1])


# ----- ChatDev: random logs built from the layouts' pieces ----------------------------------------
STAMP = st.sampled_from(["2023-26-07 12:11:45", "2024-24-06 17:07:09", "2023-99-99 99:99:99", "2023-01-13 00:00:00"])
COUNT = st.sampled_from(["0", "1", "445", "10000000", "10000001", "1" + "0" * 18, "9" * 5000])
PIECE = st.one_of(
    st.builds(
        lambda tag, p, c: f"{tag}\nprompt_tokens: {p}\ncompletion_tokens: {c}\ntotal_tokens: 1\n",
        st.sampled_from(["**[OpenAI_Usage_Info Receive]**", "**[Claude_Usage_Info Receive]**", "[OpenAI_Usage_Info]"]),
        COUNT,
        COUNT,
    ),
    st.just("System: **[chatting]**\n| **phase_name** | Coding |\n| **assistant_role_name** | Programmer |\n"),
    st.just("System: **[RolePlaying]**\n| **assistant_role_prompt** | x |\n"),
    st.just("Programmer: **Programmer<->Chief Technology Officer on : Coding, turn 0**\n\n[sys prompt]\n\ncode"),
    st.just("Chief Executive Officer: **[Start Chat]**\n\n[You are CEO]\n\nDesign a game.\n\nNote."),
    st.just("PhaseType: PhaseType.DEMAND_ANALYSIS"),
    st.just("\x1b[32mAI Assistant (Programmer) sys message:\nSystemMessage(role_name='P', content='You code.')"),
    st.just("\x1b[34mAI User (Chief Executive Officer) sys message:\nSystemMessage(content=)"),
    st.just("\x1b[34mAI User (Chief Executive Officer):\n\nWhat shall we build?"),
    st.just("\x1b[32m[0] AI Assistant (Programmer):\n\nprint('hi')"),
    st.just("\x1b[31m[1] AI User (Chief Executive Officer) terminated the chat."),
    st.text(max_size=40),
)


@FUZZ
@given(entries=st.lists(st.tuples(STAMP, PIECE), max_size=12), crlf=st.booleans())
def test_chatdev_random_logs(entries: list[tuple[str, str]], crlf: bool) -> None:
    text = "".join(f"[{stamp} INFO] {piece}\n\n" for stamp, piece in entries)
    _check("chatdev", (text.replace("\n", "\r\n") if crlf else text).encode(), ".log")
