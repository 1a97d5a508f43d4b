"""``python -m sim.sessions`` (issue 15's table) on two real coding-agent sessions: every policy,
the ideal floor and both Belady bounds, written as JSON and as a marked block; no policy's reuse
beats the reuse bound; bad arguments are one line and exit 2."""

from __future__ import annotations

import json

import pytest
from conftest import SHARED_DATA

from sim import sessions

FILES = [SHARED_DATA / "weka" / n for n in ("trace_0254.json.gz", "trace_0277.json.gz")]


@pytest.fixture(scope="module")
def table(tmp_path_factory):
    if not all(f.exists() for f in FILES):
        pytest.skip("shared weka data not found")
    out = tmp_path_factory.mktemp("sessions")
    md = out / "results.md"
    md.write_text("# Results\n\nhand-written text\n")
    argv = ["--split", "all", "--import-from", ",".join(map(str, FILES)), "--pool-tokens", "200000"]
    argv += ["--pools", "1", "--jobs", "1", "--json", str(out / "s.json"), "--results-md", str(md)]
    assert sessions.main(argv) == 0
    return json.loads((out / "s.json").read_text()), md.read_text()


def test_every_policy_the_floor_and_the_bounds_are_in_the_table(table):
    data, md = table
    runs = data["results"]["200000"]
    assert set(runs) == set(sessions.POLICIES) | {"ideal"}
    assert md.startswith("# Results\n\nhand-written text\n") and sessions.BEGIN in md and sessions.END in md
    for name in sessions.POLICIES:
        assert f"| {name} |" in md
    assert "Targets (issue 15)" in md and "ideal floor" in md
    assert data["meta"]["sessions"] == 2


def test_no_policy_reuses_more_than_the_bound_and_none_is_faster_than_the_floor(table):
    runs = table[0]["results"]["200000"]
    lru = runs[sessions.LRU]
    assert lru["belady_gpu"] <= lru["belady_reuse"] + 1e-12
    assert lru["hit_rate_gpu"] + lru["hit_rate_cpu"] <= lru["belady_reuse"] + 1e-12  # over its own order
    floor = runs["ideal"]["workflow_latency_mean_s"]
    for name in sessions.POLICIES:
        assert runs[name]["workflow_latency_mean_s"] >= floor * (1 - 1e-9), name


@pytest.mark.parametrize(
    "argv,needle",
    [
        (["--pools", "0"], "--pools"),
        (["--pools", "a,b"], "--pools"),
        (["--sessions", "0"], "--sessions"),
        (["--jobs", "0"], "--jobs"),
        (["--split", "nope"], "--split"),
    ],
)
def test_bad_arguments_are_one_line_and_exit_2(argv, needle, capsys):
    assert sessions.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("sim.sessions: error:") and needle in err[0]


def test_gap_closed_is_the_share_of_the_lru_to_bound_gap():
    assert sessions.gap_closed(0.6, 0.5, 0.7) == pytest.approx(0.5)
    assert sessions.gap_closed(0.5, 0.5, 0.5) is None


def test_a_failing_run_is_reported_and_the_others_are_kept(tmp_path, monkeypatch, capsys):
    """One run raising must not lose the others: each failure is one line, the JSON holds every
    run that finished, no table is written, exit 1."""
    if not all(f.exists() for f in FILES):
        pytest.skip("shared weka data not found")
    real = sessions.measure

    def flaky(job):
        if job.policy == "ttl_pin":
            raise AssertionError("boom\nsecond line")
        return real(job)

    monkeypatch.setattr(sessions, "measure", flaky)
    out, md = tmp_path / "s.json", tmp_path / "r.md"
    argv = ["--split", "all", "--import-from", ",".join(map(str, FILES)), "--pool-tokens", "200000"]
    argv += ["--pools", "1", "--jobs", "1", "--json", str(out), "--results-md", str(md)]
    assert sessions.main(argv) == 1
    err = capsys.readouterr().err
    assert "pool 200,000, ttl_pin: AssertionError: boom" in err and "second line" not in err
    runs = json.loads(out.read_text())["results"]["200000"]
    assert runs["ttl_pin"] == {"error": "AssertionError: boom"} and "hit_rate_gpu" in runs["hicache"]
    assert not md.exists()
