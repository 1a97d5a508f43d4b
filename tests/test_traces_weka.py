"""Weka coding-agent sessions -> trace: totals, sub-agent links, timing, prompts, bad input."""

from __future__ import annotations

import gzip
import json
import time
from pathlib import Path

import pytest
from conftest import SHARED_DATA

from traces.cli import main
from traces.importers import import_trace
from traces.importers.weka import WekaError, read_session
from traces.io import load_trace, write_trace

WEKA = SHARED_DATA / "weka"
WITH_SUBAGENTS = ["trace_0010.json.gz", "trace_0254.json.gz", "trace_0277.json.gz"]


def _files(names: list[str] | None = None) -> list[str]:
    if not WEKA.exists():
        pytest.skip(f"shared data not found at {WEKA}")
    return [str(WEKA / n) for n in names] if names else sorted(str(p) for p in WEKA.glob("*.json.gz"))


def _calls(reqs: list[dict], agent: str = "main") -> list[tuple[str, dict]]:
    out: list[tuple[str, dict]] = []
    for r in reqs:
        out += _calls(r["requests"], r["subagent_type"]) if r["type"] == "subagent" else [(agent, r)]
    return out


def _check_totals(paths: list[str]) -> int:
    """The trace holds every call of every file, with the files' own token sums and totals blocks."""
    trace = import_trace("weka", paths)
    by_client: dict[str, list] = {}
    for inv in trace.invocations:
        by_client.setdefault(inv.client_id, []).append(inv)
    for path in paths:
        session = read_session(path)
        calls, invs = _calls(session["requests"]), by_client[session["id"]]
        assert [a for a, _ in calls] == [i.agent_id for i in invs]  # same calls, same order
        assert [c["in"] for _, c in calls] == [trace.prompt_len(i) for i in invs]
        assert [c["out"] for _, c in calls] == [i.output_tokens for i in invs]
        assert [c["model"] for _, c in calls] == [i.model for i in invs]
        assert [c.get("api_time") for _, c in calls] == [i.service_s for i in invs]
        totals = session.get("totals")
        if totals:
            sub = [c for a, c in calls if a != "main"]
            assert totals["combined_tokens"] == {
                "input": sum(trace.prompt_len(i) for i in invs),
                "output": sum(i.output_tokens for i in invs),
            }
            assert totals["subagent_tokens"] == {
                "input": sum(c["in"] for c in sub),
                "output": sum(c["out"] for c in sub),
            }
            assert totals["subagent_count"] == sum(r["type"] == "subagent" for r in session["requests"])
    return len(trace.invocations)


def test_totals_and_calls_match_the_files_on_a_few_sessions() -> None:
    assert _check_totals(_files(WITH_SUBAGENTS + ["trace_0001.json.gz"])) > 0


@pytest.mark.slow
def test_all_sessions_import_with_their_totals(capsys: pytest.CaptureFixture[str]) -> None:
    paths = _files()
    started = time.perf_counter()
    n = _check_totals(paths)
    with capsys.disabled():
        print(
            f"\n[weka] {len(paths)} sessions, {n} calls imported and checked in {time.perf_counter() - started:.1f} s"
        )
    assert len(paths) == 642 and n == 44406


def test_subagents_are_spawned_by_the_call_before_them_and_joined_by_the_next_call() -> None:
    path = _files(["trace_0010.json.gz"])[0]
    trace = import_trace("weka", [path])
    invs, session = trace.invocations, read_session(path)
    reqs = session["requests"]
    # requests: call 0, sub-agent, calls 2..9, three parallel sub-agents (10-12), call 13, ...
    main_ids = [inv.id for inv in invs if inv.agent_id == "main"]
    subs = [inv for inv in invs if inv.agent_id == "Explore"]
    assert len(subs) == sum(len(r["requests"]) for r in reqs if r["type"] == "subagent")
    roots = [inv for inv in subs if invs[int(inv.deps[0].rsplit("/", 1)[1])].agent_id == "main"]
    assert [r.deps for r in roots] == [[main_ids[0]], [main_ids[8]], [main_ids[8]], [main_ids[8]]]
    first = reqs[1]  # spawned after call 0: delay = its start - call 0's recorded finish
    start_s = first["t"] - first["duration_ms"] / 1000
    assert roots[0].delay_s == pytest.approx(start_s - reqs[0]["t"] - reqs[0]["api_time"], abs=1e-6)
    last_of_each = {}
    for inv in subs:
        last_of_each[roots.index(next(r for r in roots if _root(invs, inv) is r))] = inv.id
    join_1 = next(inv for inv in invs if inv.id == main_ids[1])
    assert join_1.deps == [main_ids[0], last_of_each[0]]
    join_2 = next(inv for inv in invs if inv.id == main_ids[9])
    assert join_2.deps == [main_ids[8], last_of_each[1], last_of_each[2], last_of_each[3]]
    # the join waits from its last dependency: recorded start - latest recorded finish
    assert join_1.delay_s == pytest.approx(reqs[2]["t"] - _finish(reqs[1], first["requests"][-1]), abs=1e-6)
    # ordinary calls chain by their recorded think time; the session starts at 0
    assert invs[0].arrival_s == 0.0 and invs[0].deps == []
    assert next(i for i in invs if i.id == main_ids[2]).delay_s == reqs[3]["think_time"]


def _root(invs: list, inv):  # the first call of inv's sub-agent thread
    by_id = {i.id: i for i in invs}
    while by_id[inv.deps[0]].agent_id == inv.agent_id:
        inv = by_id[inv.deps[0]]
    return inv


def _finish(sub: dict, last_call: dict) -> float:
    return sub["t"] - sub["duration_ms"] / 1000 + last_call["t"] + last_call["api_time"]


def test_prompts_share_exactly_the_blocks_the_files_share() -> None:
    """Chains give two calls a common prefix of exactly 64 x (common leading hash ids) tokens."""
    from traces.stats import _common_prefix_tokens

    paths = _files(WITH_SUBAGENTS)
    trace = import_trace("weka", paths)
    calls = [c for p in paths for _, c in _calls(read_session(p)["requests"])]
    by_client: dict[str, list[int]] = {}
    for k, inv in enumerate(trace.invocations):
        by_client.setdefault(inv.client_id, []).append(k)
    checked = 0
    for indices in by_client.values():
        for a, b in zip(indices, indices[1:] + indices[:1]):
            ia, ib = calls[a]["hash_ids"], calls[b]["hash_ids"]
            common = next((j for j, (x, y) in enumerate(zip(ia, ib)) if x != y), min(len(ia), len(ib)))
            got = _common_prefix_tokens(trace.invocations[a], trace.invocations[b])
            assert got == 64 * common, (trace.invocations[a].id, trace.invocations[b].id)
            checked += 1
    assert checked > 300


def test_cli_import_validate_and_stats(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "weka.jsonl.gz"
    assert main(["import", "weka", *_files(WITH_SUBAGENTS), "-o", str(out)]) == 0
    capsys.readouterr()
    assert main(["validate", str(out)]) == 0
    assert "OK" in capsys.readouterr().out
    assert main(["stats", str(out)]) == 0
    text = capsys.readouterr().out
    for needle in (
        "prompt / output tokens",
        "first dependency's prompt prefix",
        "ideal hit-rate ceiling",
        "no KV shared across models",
    ):
        assert needle in text
    assert main(["stats", "--json", str(out)]) == 0
    st = json.loads(capsys.readouterr().out)
    assert st["prompt_output_ratio"] > 50 and 0.8 < st["dep_prefix_share"] <= st["ideal_hit_rate"] < 1
    loaded = load_trace(out)  # model and service time survive the file
    assert {inv.model for inv in loaded.invocations} >= {"claude-haiku-4-5-20251001"}
    assert all(inv.service_s is not None for inv in loaded.invocations[:5])


def _session(**overrides) -> dict:
    call = {
        "t": 0.0,
        "type": "n",
        "model": "m",
        "in": 130,
        "out": 5,
        "hash_ids": [1, 2],
        "api_time": 1.0,
        "think_time": 0.0,
    }
    sub = {
        "t": 5.0,
        "type": "subagent",
        "subagent_type": "Explore",
        "duration_ms": 2000,
        "requests": [dict(call, hash_ids=[7, 8])],
    }
    session = {"id": "s", "block_size": 64, "requests": [call, sub, dict(call, t=6.0, hash_ids=[1, 2])]}
    for path, value in overrides.items():
        node, keys = session, path.split(".")
        for key in keys[:-1]:
            node = node[int(key)] if isinstance(node, list) else node[key]
        if value is _DROP:
            del node[int(keys[-1]) if isinstance(node, list) else keys[-1]]
        else:
            node[int(keys[-1]) if isinstance(node, list) else keys[-1]] = value
    return session


_DROP = object()


@pytest.mark.parametrize(
    "overrides,expected",
    [
        ({"requests.0.in": "130"}, "requests[0].in: expected an integer"),
        ({"requests.0.hash_ids": [1]}, "requests[0].hash_ids: 1 ids, but in=130 has 2 full"),
        ({"requests.2.t": -1.0}, "requests[2].t: negative time"),
        ({"requests.0.out": _DROP}, "requests[0]: missing 'out'"),
        ({"requests.1.requests.0.api_time": "fast"}, "requests[1].requests[0].api_time: expected a number"),
        ({"requests.1.duration_ms": -5}, "requests[1].duration_ms: negative time"),
        ({"requests.2.hash_ids": [2, 1]}, "requests[2].hash_ids[0]: id 2 appears after a different prefix"),
        ({"requests": "none"}, "expected an object with a 'requests' list"),
        ({"block_size": 0}, "session.block_size: expected a positive integer"),
    ],
)
def test_malformed_session_is_one_line_naming_file_record_and_field(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], overrides: dict, expected: str
) -> None:
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(_session(**overrides)))
    assert main(["import", "weka", str(path), "-o", str(tmp_path / "out.jsonl")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert err.startswith(f"{path}: ") and expected in err, err


def test_good_hand_made_session_imports(tmp_path: Path) -> None:
    path = tmp_path / "good.json"
    path.write_text(json.dumps(_session()))
    trace = import_trace("weka", [str(path)])
    assert [i.agent_id for i in trace.invocations] == ["main", "Explore", "main"]
    assert trace.invocations[1].deps == ["s/0"] and trace.invocations[2].deps == ["s/0", "s/1"]
    assert trace.invocations[1].delay_s == pytest.approx(2.0)  # starts at 5 - 2 = 3; call 0 ended at 1
    assert trace.invocations[2].delay_s == pytest.approx(2.0)  # at 6; the sub-agent's call ended at 3 + 1
    assert trace.prompt_len(trace.invocations[0]) == 130


def test_corrupt_gzip_and_empty_import(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "trace_x.json.gz"
    bad.write_bytes(gzip.compress(json.dumps(_session()).encode())[:40])
    assert main(["import", "weka", str(bad), "-o", str(tmp_path / "o.jsonl")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(bad) in err and "cannot read" in err
    empty = tmp_path / "empty.json"
    empty.write_text(json.dumps({"id": "e", "requests": []}))
    assert main(["import", "weka", str(empty), "-o", str(tmp_path / "o.jsonl")]) == 2
    assert "no invocations" in capsys.readouterr().err
    with pytest.raises(WekaError):
        read_session(str(bad))


def test_written_trace_round_trips(tmp_path: Path) -> None:
    trace = import_trace("weka", _files(WITH_SUBAGENTS[:1]))
    out = tmp_path / "w.jsonl"
    write_trace(trace, out)
    again = load_trace(out)
    assert [(i.model, i.service_s, i.deps, i.delay_s) for i in again.invocations] == [
        (i.model, i.service_s, i.deps, round(i.delay_s, 6)) for i in trace.invocations
    ]


def test_block_segments_option_is_the_same_workload(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """--blocks: one block per hash id; same prompts' sharing, ceiling, exported ids and replay."""
    from traces.export import BlockIds
    from traces.stats import compute_stats

    paths = _files(WITH_SUBAGENTS[2:])
    chains, blocks = import_trace("weka", paths), import_trace("weka", paths, blocks=True)
    assert all(s.kind == "block" for inv in blocks.invocations for s in inv.segments)
    a, b = compute_stats(chains), compute_stats(blocks)
    for key in ("ideal_hit_rate", "dep_prefix_share", "prompt_output_ratio", "ideal_hit_rate_per_model"):
        assert a[key] == pytest.approx(b[key], abs=1e-12), key
    ids_a, ids_b = BlockIds(64), BlockIds(64)
    assert [ids_a.of(i) for i in chains.invocations] == [ids_b.of(i) for i in blocks.invocations]
    out = tmp_path / "blocks.jsonl.gz"
    assert main(["import", "weka", "--blocks", *paths, "-o", str(out)]) == 0
    assert main(["validate", str(out)]) == 0
    assert main(["import", "otel", "--blocks", *paths, "-o", str(out)]) == 2
    assert "weka importer only" in capsys.readouterr().err
