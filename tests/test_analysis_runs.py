"""Run discovery, the resume rule, Hydra metadata and progress-bar gating (no simulator needed)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import yaml
from test_analysis_report import make_run, make_sweep, workload

from analysis import hydra_meta, progress
from analysis.runs import find_run_dirs, is_complete, load_runs, read_summary, should_skip, write_json_atomic


def test_write_json_atomic_leaves_no_temp_file(tmp_path: Path) -> None:
    path = tmp_path / "run" / "summary.json"
    write_json_atomic(path, {"policy": "kvflow", "x": 1})
    write_json_atomic(path, {"policy": "kvflow", "x": 2})
    assert json.loads(path.read_text()) == {"policy": "kvflow", "x": 2}
    assert [p.name for p in path.parent.iterdir()] == ["summary.json"]


def test_is_complete_needs_a_valid_summary(tmp_path: Path) -> None:
    assert not is_complete(tmp_path)
    (tmp_path / "summary.json").write_text('{"policy": "kvf')  # torn write (what os.replace prevents)
    assert not is_complete(tmp_path)
    write_json_atomic(tmp_path / "summary.json", {"policy": "kvflow"})
    assert is_complete(tmp_path)
    assert read_summary(tmp_path)["policy"] == "kvflow"


def test_should_skip_keyed_by_run_dir_and_config(tmp_path: Path) -> None:
    cfg = {"policy": {"name": "kvflow"}, "seed": 0, "output": {"table": True}, "force": False}
    assert not should_skip(tmp_path, cfg)  # nothing there yet
    (tmp_path / "config.yaml").write_text(yaml.safe_dump({**cfg, "output": {"table": False}}))
    write_json_atomic(tmp_path / "summary.json", {"policy": "kvflow"})
    assert should_skip(tmp_path)
    assert should_skip(tmp_path, cfg)  # display options do not force a recompute
    assert should_skip(tmp_path, {**cfg, "force": True})  # the flag itself is not part of the setting
    assert not should_skip(tmp_path, cfg, force=True)
    # another sweep reusing the same hydra.sweep.dir puts a different setting in job dir 0
    assert not should_skip(tmp_path, {**cfg, "seed": 1})


def test_find_run_dirs_any_depth_and_partial(tmp_path: Path) -> None:
    make_sweep(tmp_path / "a" / "b" / "sweep", timeline=False)
    (tmp_path / "a" / "b" / "sweep" / "9" / ".hydra").mkdir(parents=True)
    (tmp_path / "a" / "b" / "sweep" / "10").mkdir()  # empty dir: not a run at all
    runs, partial = find_run_dirs(tmp_path)
    assert [p.name for p in runs] == ["0", "1", "2", "3"]
    assert partial == [tmp_path / "a" / "b" / "sweep" / "9"]


def test_load_runs_reads_overrides_choices_and_command(tmp_path: Path) -> None:
    root = make_sweep(tmp_path / "mr", timeline=False)
    runs, problems = load_runs([root])
    assert problems == []
    assert runs[0].overrides == {"policy": "kvflow", "workload.params.fixed_tokens": 4096}
    assert (
        runs[0].command == f"kvflow-sim -m hydra/launcher=joblib hydra.sweep.dir={root} "
        "policy=kvflow,hicache workload.params.fixed_tokens=4096,8192"
    )


def test_summary_params_count_as_swept(tmp_path: Path) -> None:
    d = make_run(tmp_path / "r", "kvflow", 1.0, [], workload(4096))
    s = json.loads((d / "summary.json").read_text())
    (d / "summary.json").write_text(json.dumps({**s, "params": {"trace": "chatdev"}}))
    runs, _ = load_runs([tmp_path])
    assert runs[0].overrides == {"trace": "chatdev"}


def test_parse_overrides_types_and_filters() -> None:
    got = hydra_meta.parse_overrides(
        [
            "policy=kvflow",
            "+a.b=3",
            "++c=0.5",
            "~d",
            "hydra/launcher=joblib",
            "hydra.sweep.dir=x",
            "output.table=false",
            "force=true",
            "e=[1,2]",
        ]
    )
    assert got == {"policy": "kvflow", "a.b": 3, "c": 0.5, "e": "[1,2]"}


def test_command_quotes_shell_words() -> None:
    cmd = hydra_meta.command_from(
        {
            "mode": "RUN",
            "job": {"name": "cli"},
            "overrides": {"hydra": ["hydra.mode=RUN"], "task": ["workload.name=a b"]},
        }
    )
    assert cmd == "kvflow-sim 'workload.name=a b'"


def test_progress_disabled_in_ci_and_off_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    class Tty:
        def isatty(self) -> bool:
            return True

    monkeypatch.delenv("CI", raising=False)
    assert progress.enabled(Tty())
    assert not progress.enabled(open(os.devnull, "w"))  # noqa: SIM115
    monkeypatch.setenv("CI", "true")
    assert not progress.enabled(Tty())
    monkeypatch.setenv("CI", "false")
    assert progress.enabled(Tty())
    bar = progress.progress(range(3), total=3)  # pytest captures stderr: not a TTY -> disabled
    assert bar.disable and list(bar) == [0, 1, 2]


def test_count_jobs_matches_basic_sweeper() -> None:
    assert progress.count_jobs(["policy=kvflow,hicache", "workload.params.fixed_tokens=1,2,3", "seed=0"]) == 6
    assert progress.count_jobs(["experiment=paper_single"], {"policy": "a,b", "setup": "x,y"}) == 4
    assert progress.count_jobs(["policy=kvflow,hicache"], {"policy": "a,b,c"}) == 2  # command line wins


def test_finished_jobs_counts_complete_job_dirs(tmp_path: Path) -> None:
    make_sweep(tmp_path, timeline=False)
    (tmp_path / "4").mkdir()
    assert progress.finished_jobs(tmp_path, None) == 4
    assert progress.finished_jobs(tmp_path, 2) == 2
