"""OpenTelemetry GenAI span fixtures -> trace: every fixture imports, deps follow the span tree."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import SHARED_DATA

from traces.cli import main
from traces.importers import import_trace

OTEL = SHARED_DATA / "otel"


def _fixture(name: str) -> str:
    path = OTEL / f"{name}.json"
    if not path.exists():
        pytest.skip(f"shared data not found at {path}")
    return str(path)


def _deps(name: str) -> dict[str, list[str]]:
    trace = import_trace("otel", [_fixture(name)])
    return {inv.id.split("/", 1)[1]: [d.split("/", 1)[1] for d in inv.deps] for inv in trace.invocations}


def test_every_fixture_imports_and_validates(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    files = sorted(str(p) for p in OTEL.glob("*.json")) if OTEL.exists() else []
    if not files:
        pytest.skip("shared otel fixtures missing")
    out = tmp_path / "otel.jsonl"
    assert main(["import", "otel", *files, "-o", str(out)]) == 0
    assert main(["validate", str(out)]) == 0
    assert "9 client(s)" in capsys.readouterr().out
    for path in files:  # one invocation per GenAI call span
        spans = json.loads(Path(path).read_text())["spans"]
        assert len(import_trace("otel", [path]).invocations) == len(spans)


def test_explicit_parent_spans_are_the_dependencies() -> None:
    deps = _deps("advanced_prefix_sharing_example")
    assert deps["span_conv_turn2"] == ["span_conv_turn1"]
    assert deps["span_conv_turn3"] == ["span_conv_turn2"]
    assert deps["span_conv_turn4"] == ["span_conv_turn3"]


def test_timing_gives_fan_out_and_fan_in() -> None:
    deps = _deps("advanced_fan_in_dependencies")
    assert deps == {
        "span_001": [],
        "span_002": ["span_001"],
        "span_003": ["span_001"],
        "span_004": ["span_002", "span_003"],
    }  # span_001 is implied through both
    review = _deps("advanced_code_review_workflow")
    assert review["span_005_synthesis"] == ["span_002_security", "span_003_performance", "span_004_quality"]
    assert all(review[s] == ["span_001_initial"] for s in ("span_002_security", "span_003_performance"))


def test_agents_models_tokens_and_prefixes() -> None:
    trace = import_trace("otel", [_fixture("advanced_multi_agent_research")])
    agents = {inv.agent_id for inv in trace.invocations}
    assert {"coordinator-agent", "market-analyst-agent", "technology-agent"} <= agents
    assert all(inv.model == "gpt-4" and inv.service_s and inv.service_s > 0 for inv in trace.invocations)
    demo = import_trace("otel", [_fixture("advanced_prefix_sharing_example")])  # older usage names
    by_span = {inv.id.split("/", 1)[1]: inv for inv in demo.invocations}
    assert demo.prompt_len(by_span["span_conv_turn2"]) == 180 and by_span["span_conv_turn2"].output_tokens == 60
    turn1, turn2 = by_span["span_conv_turn1"], by_span["span_conv_turn2"]
    assert turn2.segments[: turn1.fixed_segments] == turn1.segments[: turn1.fixed_segments]  # system prompt


def test_current_attribute_names(tmp_path: Path) -> None:
    span = {
        "span_id": "a",
        "start_time": 1_000_000_000,
        "end_time": 3_000_000_000,
        "attributes": {
            "gen_ai.operation.name": "chat",
            "gen_ai.agent.name": "planner",
            "gen_ai.request.model": "m",
            "gen_ai.usage.input_tokens": 40,
            "gen_ai.usage.output_tokens": 7,
            "gen_ai.system_instructions": json.dumps([{"type": "text", "content": "Be brief."}]),
            "gen_ai.input.messages": json.dumps(
                [{"role": "user", "parts": [{"type": "text", "content": "Plan a trip."}]}]
            ),
        },
    }
    child = dict(span, span_id="b", parent_span_id="a", start_time=4_000_000_000, end_time=5_000_000_000)
    path = tmp_path / "t.json"
    path.write_text(json.dumps({"trace_id": "t", "spans": [span, child]}))
    a, b = import_trace("otel", [str(path)]).invocations
    assert (a.agent_id, a.output_tokens, a.fixed_segments, a.service_s) == ("planner", 7, 1, 2.0)
    assert b.deps == ["t/a"] and b.delay_s == pytest.approx(1.0)


@pytest.mark.parametrize(
    "spans,expected",
    [
        (
            [{"span_id": "a", "start_time": "yesterday", "end_time": "2026-01-01T00:00:01"}],
            "spans[0].start_time: not an ISO",
        ),
        ([{"span_id": "a", "end_time": "2026-01-01T00:00:01"}], "spans[0]: missing 'start_time'"),
        ([{"span_id": 5, "start_time": "2026-01-01T00:00:00", "end_time": "2026-01-01T00:00:01"}], "spans[0].span_id"),
        (
            [{"span_id": "a", "start_time": "2026-01-01T00:00:02", "end_time": "2026-01-01T00:00:01"}],
            "negative duration",
        ),
        ([{"span_id": "a", "start_time": -5, "end_time": 0}], "spans[0].start_time: negative time"),
        (
            [
                {
                    "span_id": "a",
                    "start_time": 0,
                    "end_time": 1,
                    "attributes": {"gen_ai.operation.name": "chat", "gen_ai.usage.input_tokens": "many"},
                }
            ],
            "gen_ai.usage.input_tokens",
        ),
        ("not spans", "expected an object with a 'spans' list"),
    ],
)
def test_malformed_spans_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str], spans, expected: str) -> None:
    path = tmp_path / "bad.json"
    path.write_text(json.dumps({"trace_id": "t", "spans": spans}))
    assert main(["import", "otel", str(path), "-o", str(tmp_path / "o.jsonl")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith(f"{path}: ") and expected in err, err


def test_no_call_spans_exits_non_zero(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "tools.json"
    path.write_text(
        json.dumps(
            {
                "trace_id": "t",
                "spans": [
                    {
                        "span_id": "a",
                        "start_time": 0,
                        "end_time": 1,
                        "attributes": {"gen_ai.operation.name": "execute_tool"},
                    }
                ],
            }
        )
    )
    assert main(["import", "otel", str(path), "-o", str(tmp_path / "o.jsonl")]) == 2
    assert "no invocations" in capsys.readouterr().err
    (tmp_path / "broken.json").write_text("{")
    assert main(["import", "otel", str(tmp_path / "broken.json"), "-o", str(tmp_path / "o.jsonl")]) == 2
    assert "invalid JSON" in capsys.readouterr().err


def test_gaps_are_derived_from_span_times_and_the_provenance_says_so() -> None:
    trace = import_trace("otel", [_fixture("advanced_fan_in_dependencies")])
    assert trace.meta["provenance"]["gaps"].startswith("derived from span times")
    spans = {inv.id.split("/")[-1]: inv for inv in trace.invocations}
    fan_in = spans["span_004"]
    assert fan_in.arrival_s is None and fan_in.delay_s >= 0.0
    assert spans["span_001"].arrival_s is not None and spans["span_001"].delay_s == 0.0
    assert all(inv.service_s is not None and inv.service_s >= 0.0 for inv in trace.invocations)
