"""Importers: ChatDev logs against their logged usage numbers, Mooncake block structure, OpenAI chats."""

from __future__ import annotations

import gzip
import json
import re
from pathlib import Path

import pytest

from traces import load_trace, write_trace
from traces.importers import import_trace
from traces.importers.text import estimate_tokens, text_segment
from traces.stats import compute_stats

FIXTURES = Path(__file__).parent / "fixtures" / "traces"
DATA = Path(__file__).resolve().parents[2] / "shared" / "data"  # ../shared beside the checkout
CHATDEV_ALL = sorted((DATA / "chatdev").glob("*.log.gz"))
MOONCAKE = DATA / "mooncake" / "synthetic_trace.jsonl"
# every usage-block layout of the real logs: OpenAI and Claude "Receive" blocks, and the oldest logs' plain one
USAGE = re.compile(
    r"(?:\*\*\[(?:OpenAI|Claude)_Usage_Info Receive\]\*\*|\[OpenAI_Usage_Info\])\r?\n"
    r"prompt_tokens: (\d+)\r?\ncompletion_tokens: (\d+)"
)
needs_data = pytest.mark.skipif(not CHATDEV_ALL or not MOONCAKE.exists(), reason="shared data not present")


def _logged(path: Path) -> list[tuple[int, int]]:
    return [(int(p), int(c)) for p, c in USAGE.findall(gzip.open(path, "rt", encoding="utf-8").read())]


def test_chatdev_fixtures_match_logged_usage(tmp_path: Path) -> None:
    logs = sorted(FIXTURES.glob("*.log.gz"))
    messages: list[str] = []
    trace = import_trace("chatdev", [str(p) for p in logs], warn=messages.append)
    write_trace(trace, tmp_path / "cd.jsonl")
    trace = load_trace(tmp_path / "cd.jsonl")
    for log in logs:
        client = log.name[: -len(".log.gz")]
        invs = [i for i in trace.invocations if i.client_id == client]
        usage = _logged(log)
        assert len(invs) == len(usage)  # one invocation per usage block
        assert [(trace.prompt_len(i), i.output_tokens) for i in invs] == usage
        if usage:
            assert invs[0].arrival_s is not None and all(i.deps == [p.id] for p, i in zip(invs, invs[1:]))
    assert messages == [] and trace.meta["provenance"]["skipped"] == []  # the oldest layout is read too
    assert len([i for i in trace.invocations if i.client_id == "20230726121145"]) == 18


def test_chatdev_old_layout_pairs_calls_with_responders() -> None:
    trace = import_trace("chatdev", [str(FIXTURES / "20230821204606.log.gz")])
    agents = [i.agent_id for i in trace.invocations]
    assert agents[:4] == [
        "Preprocess:Prompt Engineer",
        "DemandAnalysis:Chief Product Officer",
        "DemandAnalysis:Chief Executive Officer",
        "LanguageChoose:Chief Technology Officer",
    ]
    assert "Reflection:Chief Executive Officer" in agents


def test_chatdev_identical_text_identical_tokens() -> None:
    trace = import_trace(
        "chatdev",
        [
            str(FIXTURES / n)
            for n in (
                "Gomoku_DefaultOrganization_20231228123546.log.gz",
                "Gomoku_DefaultOrganization_20231228125637.log.gz",
                "Startr-signup-form-35_Startr_20231103194617.log.gz",
            )
        ],
    )
    cpo = [i for i in trace.invocations if i.agent_id == "DemandAnalysis:Chief Product Officer"]
    assert len({i.client_id for i in cpo}) == 3

    def line_tokens(inv, k: int) -> tuple[int, ...]:
        start = sum(s.n_tokens for s in inv.segments[:k])
        return tuple(trace.prompt_tokens(inv)[start : start + inv.segments[k].n_tokens])

    # same config: the whole role-prompt prefix is identical across the two Gomoku logs
    gomoku = [i for i in cpo if i.client_id.startswith("Gomoku")]
    assert line_tokens(gomoku[0], 0) == line_tokens(gomoku[1], 0) and line_tokens(gomoku[0], 1) == line_tokens(
        gomoku[1], 1
    )
    # Startr's background line differs by one quote style, but the "You are ..." role line is the same text
    startr = next(i for i in cpo if i.client_id.startswith("Startr"))
    assert line_tokens(startr, 0) != line_tokens(gomoku[0], 0) and line_tokens(startr, 1) == line_tokens(gomoku[0], 1)
    assert text_segment("hello world") == text_segment("hello world") != text_segment("hello world!")
    assert estimate_tokens("") == 0 and estimate_tokens("The quick brown fox.") == 4


@needs_data
def test_chatdev_all_logs_import_or_skip_with_reason(tmp_path: Path) -> None:
    messages: list[str] = []
    trace = import_trace("chatdev", [str(p) for p in CHATDEV_ALL], warn=messages.append)
    usage = {p.name[: -len(".log.gz")]: _logged(p) for p in CHATDEV_ALL}
    imported = {i.client_id for i in trace.invocations}
    # 1098 calls from 55 logs while the [OpenAI_Usage_Info] and Claude layouts were skipped; 1140 from all 58
    assert len(CHATDEV_ALL) == 58 and len(imported) == 58 and messages == []
    assert all(usage.values())
    assert len(trace.invocations) == sum(len(u) for u in usage.values()) == 1140
    assert sum(trace.prompt_len(i) for i in trace.invocations) == sum(p for u in usage.values() for p, _ in u)
    assert sum(i.output_tokens for i in trace.invocations) == sum(c for u in usage.values() for _, c in u)
    write_trace(trace, tmp_path / "all.jsonl.gz")
    stats = compute_stats(load_trace(tmp_path / "all.jsonl.gz"))
    assert {"Programmer", "Code Reviewer", "Chief Executive Officer"} <= set(stats["per_role_fixed"])
    assert stats["per_role_fixed"]["Programmer"]["min"] > 100
    loops = stats["graphs"]["chatdev"]["loops"]
    assert any(
        "CodeReviewComment:Code Reviewer" in comp and "CodeReviewModification:Programmer" in comp for comp in loops
    )
    assert stats["graphs"]["chatdev"]["horizon"]
    assert stats["ideal_hit_rate"] > stats["fixed_share"] > 0.05  # conversation prefixes are reused too


@needs_data
def test_mooncake_blocks_and_totals_match_file(tmp_path: Path) -> None:
    trace = import_trace("mooncake", [str(MOONCAKE)])
    write_trace(trace, tmp_path / "mc.jsonl")
    trace = load_trace(tmp_path / "mc.jsonl")
    rows = [json.loads(line) for line in MOONCAKE.read_text().splitlines() if line.strip()]
    assert len(rows) == len(trace.invocations) == 3993
    assert trace.workflows == {} and trace.block_tokens == 512
    for row, inv in zip(rows, trace.invocations):
        ids = row["hash_ids"]
        sizes = [512] * (len(ids) - 1) + [row["input_length"] - 512 * (len(ids) - 1)]
        assert [s.key for s in inv.segments] == ids and [s.n_tokens for s in inv.segments] == sizes
        assert inv.output_tokens == row["output_length"] and inv.arrival_s == row["timestamp"] / 1000
    assert sum(trace.prompt_len(i) for i in trace.invocations) == sum(r["input_length"] for r in rows)
    # equal hash ids -> equal tokens: find two requests sharing their first block
    by_first: dict[int, list] = {}
    for inv in trace.invocations:
        by_first.setdefault(inv.segments[0].key, []).append(inv)
    a, b = next(v for v in by_first.values() if len(v) > 1)[:2]
    assert trace.prompt_tokens(a)[:512] == trace.prompt_tokens(b)[:512]


def test_mooncake_bad_line_names_file_and_line(tmp_path: Path) -> None:
    p = tmp_path / "m.jsonl"
    p.write_text(
        '{"timestamp": 0, "input_length": 10, "output_length": 1, "hash_ids": [1]}\n'
        '{"timestamp": 5, "input_length": 9999, "output_length": 1, "hash_ids": [1]}\n'
    )
    with pytest.raises(ValueError, match=r"m.jsonl:2: input_length"):
        import_trace("mooncake", [str(p)])


def test_openai_sessions(tmp_path: Path) -> None:
    p = tmp_path / "chats.jsonl"
    sys_msg = {"role": "system", "content": "You are a careful planner. Think step by step."}
    lines = [
        {
            "session_id": "s1",
            "agent": "planner",
            "timestamp": 100.0,
            "messages": [
                sys_msg,
                {"role": "user", "content": "Plan a trip."},
                {"role": "assistant", "content": "Day 1: go."},
                {"role": "user", "content": "More."},
                {"role": "assistant", "content": "Day 2: rest and read."},
            ],
        },
        [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello there"}],
    ]
    p.write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    trace = import_trace("openai", [str(p)])
    write_trace(trace, tmp_path / "o.jsonl")
    trace = load_trace(tmp_path / "o.jsonl")
    a, b, c = trace.invocations
    assert (a.client_id, a.agent_id, b.deps, c.deps) == ("s1", "planner", [a.id], [])
    assert a.fixed_segments == b.fixed_segments == 1 and c.fixed_segments == 0
    assert trace.prompt_tokens(b)[: trace.prompt_len(a)] == trace.prompt_tokens(a)  # turns share a prefix
    assert a.output_tokens == estimate_tokens("Day 1: go.") and a.arrival_s == 0.0


def test_mooncake_gzip_string_ids_and_block_size(tmp_path: Path) -> None:
    rows = [
        {"timestamp": 2, "input_length": 20, "output_length": 3, "hash_ids": ["x", 7]},
        {"timestamp": 1, "input_length": 16, "hash_ids": ["x"]},
    ]  # output_length is optional
    p = tmp_path / "renamed.log"  # gzipped, whatever its name says
    p.write_bytes(gzip.compress("".join(json.dumps(r) + "\n" for r in rows).encode()))
    trace = import_trace("mooncake", [str(p)], block_tokens=16)
    write_trace(trace, tmp_path / "mc.jsonl")
    trace = load_trace(tmp_path / "mc.jsonl")
    assert trace.block_tokens == 16 and [inv.arrival_s for inv in trace.invocations] == [0.001, 0.002]
    assert [[(s.key, s.n_tokens) for s in inv.segments] for inv in trace.invocations] == [
        [("x", 16)],
        [("x", 16), (7, 4)],
    ]
    assert trace.prompt_tokens(trace.invocations[0]) == trace.prompt_tokens(trace.invocations[1])[:16]
    with pytest.raises(ValueError, match=r"renamed.log:1: input_length 20 does not fit 2 hash ids"):
        import_trace("mooncake", [str(p)], block_tokens=8)
