"""benchmarks/fleet_table.py's bookkeeping (no simulation): which runs it makes, the winners and
margins it reports, and the marked block it writes from a saved ``--json``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks import fleet_table as ft


def _row(replicas: int, router: str, policy: str, latency_s: float) -> dict:
    return {
        "replicas": replicas,
        "router": router,
        "policy": policy,
        "workflow_latency_mean_s": latency_s,
        "workflow_latency_p99_s": 2 * latency_s,
        "ttft_mean_s": 1.0,
        "ttft_p99_s": 3.0,
        "queue_mean_s": 0.5,
        "hit_rate_gpu": 0.5,
        "hit_rate_cpu": 0.1,
        "gpu_evicted_tokens": 2_000_000,
        "busiest_share": 0.5,
    }


ROWS = [
    _row(1, ft.ANY, "hicache", 100.0),
    _row(1, ft.ANY, "kvflow", 90.0),
    _row(2, "round_robin", "hicache", 80.0),
    _row(2, "round_robin", "kvflow", 75.0),
    _row(2, "workflow_aware", "hicache", 60.0),
    _row(2, "workflow_aware", "kvflow", 50.0),
]


def test_one_replica_runs_once_per_policy_and_big_fleets_first() -> None:
    jobs = ft.jobs_for(["hicache", "kvflow"], [1, 2, 8], ["round_robin", "workflow_aware"])
    assert len(jobs) == 2 * (1 + 2 * 2)
    assert [j for j in jobs if j.replicas == 1] == [ft.Job("hicache", 1, ft.ANY), ft.Job("kvflow", 1, ft.ANY)]
    assert [j.replicas for j in jobs] == sorted((j.replicas for j in jobs), reverse=True)


def test_winners_and_margins() -> None:
    one, two = ft.winners(ROWS)
    assert one["best"] == "any+kvflow" and one["baseline"] == "any+hicache"
    assert one["margin_over_baseline"] == pytest.approx(100 / 90)
    assert two["best"] == "workflow_aware+kvflow" and two["runner_up"] == "workflow_aware+hicache"
    assert two["margin_over_runner_up"] == pytest.approx(60 / 50)
    assert two["baseline"] == "round_robin+hicache" and two["margin_over_baseline"] == pytest.approx(80 / 50)


def test_a_failed_run_is_a_row_not_a_winner() -> None:
    rows = ROWS[:2] + [{"replicas": 2, "router": "round_robin", "policy": "kvflow", "error": "ValueError: x"}]
    wins = ft.winners(rows)
    assert [w["replicas"] for w in wins] == [1]
    assert "failed: ValueError: x" in "\n".join(ft.table_markdown(rows))


def test_from_json_rewrites_the_marked_block_only(tmp_path: Path) -> None:
    meta = {"command": "python benchmarks/fleet_table.py", "wall_s": 1.0, "jobs": 2, "split": "test"}
    meta.update(sessions=3, calls=30, files=15, rate=0.1)
    saved = tmp_path / "fleet.json"
    saved.write_text(json.dumps({"meta": meta, "rows": ROWS}))
    md = tmp_path / "results.md"
    md.write_text(f"# R\n\nbefore\n\n{ft.BEGIN}\nold\n{ft.END}\n\nafter\n")
    assert ft.main(["--from-json", str(saved), "--results-md", str(md), "--policies", "hicache,kvflow"]) == 0
    text = md.read_text()
    assert text.startswith("# R\n\nbefore\n\n") and text.endswith("after\n") and "old" not in text
    assert "| 2 | **workflow_aware+kvflow** | 50 | workflow_aware+hicache (60 s) | 1.200x (+20.0%) |" in text
    assert "Regenerate with `python benchmarks/fleet_table.py`" in text


def test_bad_input_is_one_line_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert ft.main(["--from-json", str(tmp_path / "missing.json")]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1
    with pytest.raises(SystemExit) as exit_:
        ft.main(["--routers", "nope"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["fleet_table: error: --routers/--replicas/--jobs: bad value (nope)"]


def test_resume_keeps_the_finished_runs_of_the_same_command(tmp_path: Path) -> None:
    saved = tmp_path / "fleet.json"
    bad = {"replicas": 2, "router": "round_robin", "policy": "kvflow", "error": "x"}
    saved.write_text(json.dumps({"meta": {"command_args": ["--files", "5"], "partial": True}, "rows": ROWS + [bad]}))
    assert ft.resumed_rows(saved, ["--files", "5"]) == ROWS  # a failed run is run again
    assert ft.resumed_rows(saved, ["--files", "6"]) == []  # another command: nothing kept
    todo = ft.jobs_for(["hicache", "kvflow"], [1, 2], ["round_robin", "workflow_aware"])
    assert ft.run_all({}, None, todo, jobs=1, done=ROWS) == sorted(ROWS, key=ft.order_key)  # nothing left to run
