"""Trace format: deterministic round trip, token derivation, reader errors, fuzzed corruption."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from traces import Invocation, Segment, Trace, TraceError, generate, load_trace, write_trace
from traces.io import read_trace

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "traces" / "data" / "sample_sequential.jsonl"


@pytest.mark.parametrize("suffix", [".jsonl", ".jsonl.gz"])
@pytest.mark.parametrize("workload", ["sequential", "branches", "concurrent", "peer_loop", "fanout"])
def test_generate_write_read_write_is_byte_identical(tmp_path: Path, workload: str, suffix: str) -> None:
    trace = generate(workload, seed=3, workflows=2, delay_s="uniform:0.1:0.5", arrival="poisson:2")
    a, b = tmp_path / f"a{suffix}", tmp_path / f"b{suffix}"
    write_trace(trace, a)
    back = load_trace(a)
    write_trace(back, b)
    assert a.read_bytes() == b.read_bytes()
    assert [back.prompt_tokens(i) for i in back.invocations[:5]] == [
        trace.prompt_tokens(i) for i in trace.invocations[:5]
    ]


def test_sample_trace_is_valid_and_small() -> None:
    trace = load_trace(SAMPLE)
    assert 3 <= len(trace.invocations) <= 50
    assert trace.meta["provenance"]["generator"] == "sequential"


def test_doc_example_loads(tmp_path: Path) -> None:
    doc = (ROOT / "docs" / "trace_format.md").read_text()
    example = re.search(r"```json\n(.*?)```", doc, re.S).group(1)
    (tmp_path / "ex.jsonl").write_text(example)
    trace = load_trace(tmp_path / "ex.jsonl")
    assert len(trace.invocations) == 2 and trace.invocations[1].delay_s == 0.5


def _tiny(segments: list[Segment], fixed: int = 0, meta: dict | None = None) -> Trace:
    inv = Invocation("i0", "c", "", "-", 0, segments, fixed, 4)
    return Trace(meta or {"format": "kvflow-trace", "version": 1, "seed": 7}, {}, [inv])


_SEGMENTS = st.one_of(
    st.builds(Segment, st.just("shared"), st.sampled_from(["a", "b", "role"]), st.integers(0, 70_000)),
    st.builds(Segment, st.just("unique"), st.sampled_from(["", "k"]), st.integers(0, 3_000)),
    st.builds(Segment, st.just("block"), st.integers(0, 5), st.integers(0, 600)),
    st.builds(lambda ids: Segment("tokens", "", len(ids), tuple(ids)), st.lists(st.integers(0, 2**31 - 1), max_size=5)),
)


@settings(max_examples=40, deadline=None)
@given(st.lists(_SEGMENTS, max_size=4))
def test_prompt_array_has_the_ids_of_prompt_tokens(segments: list[Segment]) -> None:
    """The simulator's machine-int prompts equal the list prompts, for every segment kind, past the
    table's wrap-around (70,000 > 65,536 ids) and for partial blocks."""
    t = _tiny(segments, meta={"format": "kvflow-trace", "version": 1, "seed": 7, "block_tokens": 512})
    inv = t.invocations[0]
    assert list(t.prompt_array(inv)) == t.prompt_tokens(inv)
    assert t.prompt_array(inv).itemsize == 4  # half the memory traffic of 64-bit ids


def test_a_trace_copies_and_pickles_after_expanding_prompts() -> None:
    """A trace whose prompts were expanded (its token source holds caches) deep-copies and pickles
    with the same prompts: sim.beyond copies traces, sweeps pickle them (also with the compiled
    build, where the token source is a compiled class)."""
    import copy
    import pickle

    segments = [Segment("shared", "sys", 40), Segment("block", 3, 40), Segment("unique", "", 40)]
    t = _tiny(segments, meta={"format": "kvflow-trace", "version": 1, "seed": 7, "block_tokens": 512})
    inv = t.invocations[0]
    before = t.prompt_array(inv)
    for twin in (copy.deepcopy(t), pickle.loads(pickle.dumps(t))):
        assert twin.prompt_array(twin.invocations[0]) == before


def test_prompt_arrays_are_fresh_copies() -> None:
    """Each prompt is its own array (the engine may hold and slice it): changing one prompt never
    changes the next expansion of the same segments, whatever their kind."""
    for segments in ([Segment("shared", "sys", 40)], [Segment("block", 3, 40)], [Segment("unique", "", 40)]):
        t = _tiny(segments, meta={"format": "kvflow-trace", "version": 1, "seed": 7, "block_tokens": 512})
        inv = t.invocations[0]
        first = t.prompt_array(inv)
        expected = list(first)
        first[0] += 1
        first[-1] += 1
        assert list(t.prompt_array(inv)) == expected == t.prompt_tokens(inv)


def test_different_streams_differ_at_their_first_token() -> None:
    """Where prompts diverge (a segment boundary) their ids differ at once, so the tree branches there."""
    firsts = set()
    for k in range(2_000):
        t = _tiny([Segment("shared", f"name{k}", 3), Segment("unique", "", 2)])
        ids = t.prompt_tokens(t.invocations[0])
        firsts.add(ids[0])
        assert ids[3] != ids[0]
    assert len(firsts) == 2_000


def test_token_ids_deterministic_in_range_and_prefix_stable() -> None:
    t = _tiny([Segment("shared", "role", 100), Segment("unique", "", 10)])
    short = _tiny([Segment("shared", "role", 37)])
    ids = t.prompt_tokens(t.invocations[0])
    assert len(ids) == 110 and all(0 <= x < 2**31 for x in ids)
    assert short.prompt_tokens(short.invocations[0]) == ids[:37]
    assert t.prompt_tokens(t.invocations[0]) == ids
    other_seed = _tiny([Segment("shared", "role", 100)], meta={"format": "kvflow-trace", "version": 1, "seed": 8})
    assert other_seed.prompt_tokens(other_seed.invocations[0]) != ids[:100]


def test_token_ids_same_in_another_process() -> None:
    code = (
        f"from traces import load_trace; t = load_trace({str(SAMPLE)!r}); "
        "print(sum(sum(t.prompt_tokens(i)) for i in t.invocations))"
    )
    out = [
        subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
        for _ in range(2)
    ]
    t = load_trace(SAMPLE)
    assert out[0] == out[1] == f"{sum(sum(t.prompt_tokens(i)) for i in t.invocations)}\n"


def test_block_segments_share_by_hash_and_partial_is_prefix() -> None:
    t = Trace(
        {"format": "kvflow-trace", "version": 1, "seed": 0, "block_tokens": 512},
        {},
        [
            Invocation("a", "-", "", "-", 0, [Segment("block", 5, 512), Segment("block", 9, 100)], 0, 1),
            Invocation("b", "-", "", "-", 0, [Segment("block", 5, 512), Segment("block", 9, 512)], 0, 1),
        ],
    )
    a, b = (t.prompt_tokens(i) for i in t.invocations)
    assert a == b[:612]
    assert t.prompt_len(t.invocations[0]) == 612


def test_unique_segments_differ_per_invocation() -> None:
    trace = generate("sequential", agents=2, runs=2, fixed_tokens=16, dynamic_tokens=8)
    tails = {tuple(trace.prompt_tokens(i)[16:]) for i in trace.invocations}
    assert len(tails) == len(trace.invocations)


def _write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines))
    return path


HEADER = '{"type":"header","format":"kvflow-trace","version":1,"seed":0}'
WF = '{"type":"workflow","id":"w","agents":["a","b"],"graph":{"agents":{"a":{},"b":{}},"edges":[["a","b"],["b","a"]],"horizon":4}}'
INV = '{"type":"inv","id":"%s","client":"c","workflow":"w","agent":"a","step":0,"fixed":1,"segments":[{"shared":"x","n":%d},{"unique":3}],"output":2%s}'


@pytest.mark.parametrize(
    "bad, needle",
    [
        (INV % ("i1", -5, ""), "negative segment length"),
        (INV % ("i0", 5, ""), "duplicate invocation id"),
        (INV % ("i1", 5, ',"deps":["zz"]'), "not an earlier invocation"),
        (INV % ("i1", 5, ',"deps":["i1"]'), "not an earlier invocation"),
        (INV % ("i1", 5, ',"arrival":-1'), "negative arrival"),
        (INV % ("i1", 5, ',"bogus":1'), "unknown field"),
        (INV.replace('"agent":"a"', '"agent":"zz"') % ("i1", 5, ""), "not an agent of workflow"),
        (INV.replace('"workflow":"w"', '"workflow":"nope"') % ("i1", 5, ""), "unknown workflow"),
        (
            '{"type":"workflow","id":"v","agents":["a"],"graph":{"agents":{"a":{}},"edges":[["a","a"]]}}',
            "cycle but no horizon",
        ),
        (
            '{"type":"workflow","id":"v","agents":["a"],"graph":{"agents":{"a":{}},"edges":[["a","q"]]}}',
            "unknown agent",
        ),
        ('{"type":"workflow","id":"w","agents":["a"],"graph":null}', "duplicate workflow id"),
        ('{"type":"inv"', "invalid JSON"),
        (HEADER, "duplicate header"),
    ],
)
def test_reader_reports_file_line_problem(tmp_path: Path, bad: str, needle: str) -> None:
    path = _write_lines(tmp_path / "t.jsonl", [HEADER, WF, INV % ("i0", 5, ""), bad])
    with pytest.raises(TraceError) as info:
        load_trace(path)
    assert str(info.value).startswith(f"{path}:4: ") and needle in str(info.value), str(info.value)
    assert info.value.line == 4


def test_validate_collects_several_errors_and_stops_at_20(tmp_path: Path) -> None:
    lines = [HEADER, WF] + [INV % (f"i{k}", -1, "") for k in range(30)]
    trace, errors = read_trace(_write_lines(tmp_path / "t.jsonl", lines), max_errors=20)
    assert trace is None and len(errors) == 20
    assert [e.line for e in errors[:3]] == [3, 4, 5]


def test_missing_header_and_empty_file(tmp_path: Path) -> None:
    with pytest.raises(TraceError, match=r":1: first line must be the header"):
        load_trace(_write_lines(tmp_path / "a.jsonl", [WF]))
    (tmp_path / "e.jsonl").write_text("")
    with pytest.raises(TraceError, match="empty trace"):
        load_trace(tmp_path / "e.jsonl")


_BASE = SAMPLE.read_text().splitlines()


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    idx=st.integers(0, len(_BASE) - 1),
    cut=st.integers(0, 400),
    junk=st.text(max_size=12),
    mode=st.sampled_from(["truncate", "insert", "replace", "mutate_json"]),
)
def test_fuzzed_corruption_raises_trace_error_with_file_line(
    tmp_path: Path, idx: int, cut: int, junk: str, mode: str
) -> None:
    lines = list(_BASE)
    line = lines[idx]
    if mode == "truncate":
        lines[idx] = line[: cut % max(len(line), 1)]
    elif mode == "insert":
        pos = cut % (len(line) + 1)
        lines[idx] = line[:pos] + junk + line[pos:]
    elif mode == "replace":
        lines[idx] = junk
    else:  # structurally valid JSON with a wrong value
        obj = json.loads(line)
        key = sorted(obj)[cut % len(obj)]
        obj[key] = [None, -1, "x", {}, 1.5, True][cut % 6]
        lines[idx] = json.dumps(obj)
    path = tmp_path / "fuzz.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8", errors="surrogatepass")
    try:
        load_trace(path)
    except TraceError as exc:
        assert re.match(rf"{re.escape(str(path))}:\d+: \S", str(exc)), str(exc)


def test_fuzzed_bytes_never_raise_other_exceptions(tmp_path: Path) -> None:
    path = tmp_path / "bin.jsonl"
    path.write_bytes(SAMPLE.read_bytes()[:300] + b"\xff\xfe\x00garbage\n")
    with pytest.raises(TraceError, match=r":\d+: "):
        load_trace(path)
    gz = tmp_path / "bad.jsonl.gz"
    gz.write_bytes(b"not gzip at all")
    with pytest.raises(TraceError, match=r":\d+: cannot read file"):
        load_trace(gz)
