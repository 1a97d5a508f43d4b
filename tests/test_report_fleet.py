"""kvflow-report on fleet runs (analysis/fleet.py, analysis.plots.fleet): a real ``kvflow-sim -m``
multirun over ``cluster.replicas=1,2`` x ``cluster.router=round_robin,workflow_aware`` x two policies
(tiny model, tiny workload) gives a fleet table whose figures are the runs' own, the 1-replica run
once per policy, and a plot; a run set without fleets gets neither."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
import yaml
from matplotlib import image as mpimg

from analysis.cli import main as report_main
from analysis.fleet import ANY_ROUTER, busiest_share, router_lines
from tests.test_analysis_sweeps import kvflow_sim

SWEEP = [
    "model=tiny",
    "workload=concurrent",
    "workload.params.workflows=4",
    "workload.params.runs=1",
    "policy=hicache,kvflow",
    "cluster.replicas=1,2",
    "cluster.router=round_robin,workflow_aware",
    "output.table=false",
]


@pytest.fixture(scope="module")
def fleet_sweep(tmp_path_factory: pytest.TempPathFactory) -> Path:
    cwd = tmp_path_factory.mktemp("fleet")
    sweep = cwd / "multirun"
    res = kvflow_sim(["-m", f"hydra.sweep.dir={sweep}", *SWEEP], cwd)
    assert res.returncode == 0, res.stderr[-2000:]
    assert len(list(sweep.glob("*/summary.json"))) == 8
    return sweep


def _jobs(sweep: Path) -> dict[tuple[str, int, str], dict]:
    """(policy, replicas, router) -> summary, from each job's Hydra overrides."""
    out = {}
    for path in sorted(sweep.glob("*/summary.json")):
        ov = dict(o.split("=", 1) for o in yaml.safe_load((path.parent / ".hydra" / "overrides.yaml").read_text()))
        key = (ov["policy"], int(ov["cluster.replicas"]), ov["cluster.router"])
        out[key] = json.loads(path.read_text())
    return out


def test_fleet_table_holds_the_runs_figures(fleet_sweep: Path, tmp_path: Path) -> None:
    out = tmp_path / "report"
    assert report_main([str(fleet_sweep), "-o", str(out)]) == 0
    table = pd.read_csv(out / "fleet.csv")
    jobs = _jobs(fleet_sweep)
    # one replica: one row per policy (router "any", both runs), then one row per router at two
    assert sorted(zip(table["policy"], table["replicas"], table["router"])) == sorted(
        [(p, 1, ANY_ROUTER) for p in ("hicache", "kvflow")]
        + [(p, 2, r) for p in ("hicache", "kvflow") for r in ("round_robin", "workflow_aware")]
    )
    for _, row in table.iterrows():
        router = "round_robin" if row["router"] == ANY_ROUTER else row["router"]
        s = jobs[(row["policy"], int(row["replicas"]), router)]
        assert row["workflow_latency_mean_s"] == pytest.approx(s["workflow_latency_mean_s"], rel=1e-12)
        assert row["hit_rate_gpu"] == pytest.approx(s["hit_rate_gpu"], rel=1e-12)
        assert row["details_ttft_s_mean"] == pytest.approx(s["details"]["ttft_s"]["mean"], rel=1e-12)
        assert row["runs"] == (2 if row["replicas"] == 1 else 1)


def test_one_replica_is_one_run_whatever_the_router(fleet_sweep: Path) -> None:
    """Why the table shows it once: both routers' 1-replica runs are the same run."""
    jobs = _jobs(fleet_sweep)
    for policy in ("hicache", "kvflow"):
        a, b = (
            {k: v for k, v in jobs[(policy, 1, r)].items() if "wall" not in k and k != "params"}
            for r in ("round_robin", "workflow_aware")
        )
        assert a == b
        assert "replicas" not in a  # the single engine's path


def test_busiest_share_comes_from_replicas_csv(fleet_sweep: Path, tmp_path: Path) -> None:
    out = tmp_path / "report"
    assert report_main([str(fleet_sweep), "-o", str(out)]) == 0
    table = pd.read_csv(out / "fleet.csv")
    for path in fleet_sweep.glob("*/replicas.csv"):
        rows = pd.read_csv(path)
        assert busiest_share(path.parent) == pytest.approx(rows["requests"].max() / rows["requests"].sum())
    assert (table.loc[table["replicas"] == 1, "busiest_share"] == 1.0).all()
    two = table.loc[table["replicas"] == 2, "busiest_share"]
    assert ((two >= 0.5) & (two <= 1.0)).all()


def test_report_md_and_plot(fleet_sweep: Path, tmp_path: Path) -> None:
    out = tmp_path / "report"
    md = tmp_path / "results.md"
    assert report_main([str(fleet_sweep), "-o", str(out), "--results-md", str(md)]) == 0
    png = out / "concurrent_fleet.png"
    height, width = mpimg.imread(png).shape[:2]
    assert width > 400 and height > 300
    for text in ((out / "report.md").read_text(), md.read_text()):
        assert "| policy | replicas | router | mean workflow latency (s)" in text
        assert "concurrent_fleet.png" in text
        assert f"| hicache | 1 | {ANY_ROUTER} |" in text


def test_no_fleet_no_fleet_outputs(fleet_sweep: Path, tmp_path: Path) -> None:
    """The 1-replica runs alone (no replica count, no router differs): the report as before."""
    root = tmp_path / "single"
    for job, s in enumerate(sorted(fleet_sweep.glob("*/summary.json"))):
        ov = yaml.safe_load((s.parent / ".hydra" / "overrides.yaml").read_text())
        if "cluster.replicas=1" in ov and "cluster.router=round_robin" in ov:
            shutil.copytree(s.parent, root / str(job))
    assert len(list(root.iterdir())) == 2
    out = tmp_path / "report"
    assert report_main([str(root), "-o", str(out)]) == 0
    assert not (out / "fleet.csv").exists()
    assert not list(out.glob("*_fleet.png"))
    assert "| replicas | router |" not in (out / "report.md").read_text()


def test_routers_alone_make_a_fleet(fleet_sweep: Path, tmp_path: Path) -> None:
    """Two routers at two replicas (one replica count): still a fleet table, one row per router."""
    root = tmp_path / "two"
    for job, s in enumerate(sorted(fleet_sweep.glob("*/summary.json"))):
        if "cluster.replicas=2" in yaml.safe_load((s.parent / ".hydra" / "overrides.yaml").read_text()):
            shutil.copytree(s.parent, root / str(job))
    out = tmp_path / "report"
    assert report_main([str(root), "-o", str(out)]) == 0
    table = pd.read_csv(out / "fleet.csv")
    assert sorted(set(table["router"])) == ["round_robin", "workflow_aware"] and set(table["replicas"]) == {2}


def test_router_lines_start_at_the_single_engine() -> None:
    table = pd.DataFrame(
        {
            "policy": ["kvflow"] * 5,
            "replicas": [1, 2, 4, 2, 4],
            "router": [ANY_ROUTER, "a", "a", "b", "b"],
            "workflow_latency_mean_s": [10.0, 6.0, 4.0, 7.0, 5.0],
        }
    )
    lines = router_lines(table)
    assert list(lines) == ["a", "b"]
    assert lines["a"]["workflow_latency_mean_s"].tolist() == [10.0, 6.0, 4.0]
    assert lines["b"]["workflow_latency_mean_s"].tolist() == [10.0, 7.0, 5.0]
    assert list(router_lines(table[table["router"] == ANY_ROUTER])) == [ANY_ROUTER]
