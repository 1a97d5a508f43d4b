"""Sweeps end to end: real ``kvflow-sim -m`` multiruns (joblib and basic launchers), the report on
them, launcher independence, and resuming an interrupted sweep (docs/sweeps.md)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import yaml
from matplotlib import image as mpimg

from analysis.cli import main as report_main

REPO = Path(__file__).resolve().parents[1]
SWEEP = ["policy=kvflow,hicache", "workload.params.fixed_tokens=2048,4096", "output.table=false"]
ENV = {**os.environ, "CI": "1", "PYTHONPATH": str(REPO)}


def kvflow_sim(args: list[str], cwd: Path, **kw: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sim.cli", *args], cwd=cwd, env=ENV, capture_output=True, text=True, timeout=120, **kw
    )


def summaries(sweep_dir: Path) -> dict[str, dict[str, Any]]:
    """Job dir -> summary without wall-clock fields (the only values allowed to differ)."""
    out = {}
    for path in sorted(sweep_dir.glob("*/summary.json")):
        s = json.loads(path.read_text())
        out[path.parent.name] = {k: v for k, v in s.items() if "wall" not in k}
    return out


@pytest.fixture(scope="module")
def joblib_sweep(tmp_path_factory: pytest.TempPathFactory) -> Path:
    cwd = tmp_path_factory.mktemp("joblib")
    sweep = cwd / "multirun"
    callbacks = [
        "++hydra.callbacks.progress._target_=analysis.callbacks.SweepProgress",
        "++hydra.callbacks.report._target_=analysis.callbacks.SweepReport",
    ]
    res = kvflow_sim(
        ["-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", f"hydra.sweep.dir={sweep}", *SWEEP, *callbacks], cwd
    )
    assert res.returncode == 0, res.stderr[-2000:]
    assert f"report: {sweep / 'report' / 'report.md'}" in res.stdout  # SweepReport ran at the end
    return sweep


def test_report_on_joblib_multirun_matches_summaries(joblib_sweep: Path, tmp_path: Path) -> None:
    out = tmp_path / "report"
    assert report_main([str(joblib_sweep), "-o", str(out)]) == 0
    lat = {}
    for d in sorted(p.parent for p in joblib_sweep.glob("*/summary.json")):
        s = json.loads((d / "summary.json").read_text())
        ov = yaml.safe_load((d / ".hydra" / "overrides.yaml").read_text())
        fixed = int(next(o.split("=")[1] for o in ov if o.startswith("workload.params.fixed_tokens=")))
        lat[(s["policy"], fixed)] = s.get("workflow_latency_mean_s") or s["workflow_latency_s"]["mean"]
    assert len(lat) == 4
    sp = pd.read_csv(out / "speedups.csv")
    text = (out / "report.md").read_text()
    for fixed in (2048, 4096):
        want = lat[("hicache", fixed)] / lat[("kvflow", fixed)]
        got = sp[(sp["policy"] == "kvflow") & (sp["workload.params.fixed_tokens"] == fixed)]["speedup"].item()
        assert got == pytest.approx(want, rel=1e-12)
        assert f"| {fixed} | {lat[('hicache', fixed)]:.3g} | {want:.2f}x |" in text
    assert "kvflow-sim -m hydra/launcher=joblib hydra.launcher.n_jobs=2" in text
    assert len(pd.read_csv(out / "results.csv")) == 4
    img = mpimg.imread(out / "default_speedup_vs_fixed_tokens.png")
    assert img.shape[0] > 200 and img.shape[1] > 300
    for name in ("speedup", "hit_rate", "pcie_bytes", "latency_cdf"):
        assert (out / f"default_{name}.png").stat().st_size > 5000


def test_launcher_does_not_change_results(joblib_sweep: Path, tmp_path: Path) -> None:
    sweep = tmp_path / "multirun"
    res = kvflow_sim(["-m", f"hydra.sweep.dir={sweep}", *SWEEP], tmp_path)
    assert res.returncode == 0, res.stderr[-2000:]
    basic, joblib = summaries(sweep), summaries(joblib_sweep)
    assert len(basic) == 4 and basic == joblib


def _kill_after_first_job(cmd: list[str], cwd: Path, first: Path) -> None:
    proc = subprocess.Popen(
        cmd, cwd=cwd, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    try:
        deadline = time.monotonic() + 60
        while not first.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)  # the process group this test started, by its id
        proc.wait()


def _resume(cmd: list[str], cwd: Path, sweep: Path, jobs: int) -> subprocess.CompletedProcess[str]:
    """Interrupt the sweep after job 0 finished, rerun it, and check that job 0 was kept as is."""
    first = sweep / "0" / "summary.json"
    _kill_after_first_job(cmd, cwd, first)
    assert first.exists()
    done_before = {p.parent.name for p in sweep.glob("*/summary.json")}
    assert len(done_before) < jobs, "sweep finished before it could be interrupted"
    stamp = (first.stat().st_ino, first.stat().st_mtime_ns, first.read_bytes())
    res = subprocess.run(cmd, cwd=cwd, env=ENV, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    assert (first.stat().st_ino, first.stat().st_mtime_ns, first.read_bytes()) == stamp
    assert {p.parent.name for p in sweep.glob("*/summary.json")} == {str(i) for i in range(jobs)}
    return res


APP = '''
"""A stand-in Hydra job that resumes exactly as kvflow-sim must (harness.run_dir.should_skip)."""
import time
from pathlib import Path
import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import OmegaConf
from harness.run_dir import should_skip, write_json_atomic

@hydra.main(version_base=None, config_path=None, config_name=None)
def app(cfg):
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    plain = OmegaConf.to_container(cfg, resolve=True)
    if should_skip(run_dir, plain, force=bool(plain.get("force"))):
        print("skipped", run_dir.name)
        return
    time.sleep(plain["sleep_s"])
    (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg))
    write_json_atomic(run_dir / "summary.json", {"policy": plain["policy"], "x": plain["x"]})

app()
'''


def test_resume_contract_with_a_minimal_hydra_job(tmp_path: Path) -> None:
    (tmp_path / "app.py").write_text(APP)
    sweep = tmp_path / "sweep"
    cmd = [
        sys.executable,
        "app.py",
        "-m",
        f"hydra.sweep.dir={sweep}",
        "+policy=a,b",
        "+x=1,2",
        "+sleep_s=0.4",
        "+force=false",
    ]
    res = _resume(cmd, tmp_path, sweep, 4)
    assert "skipped 0" in res.stdout
    forced = subprocess.run(
        [*cmd[:-1], "+force=true"], cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=120
    )
    assert forced.returncode == 0 and "skipped" not in forced.stdout


def _sim_resumes() -> bool:
    return "force" in (yaml.safe_load((REPO / "conf" / "config.yaml").read_text()) or {})


@pytest.mark.skipif(
    not _sim_resumes(),
    reason="kvflow-sim does not call harness.run_dir.should_skip yet (conf/config.yaml has no `force` key)",
)
def test_interrupted_kvflow_sim_sweep_resumes(tmp_path: Path) -> None:
    sweep = tmp_path / "multirun"
    cmd = [
        sys.executable,
        "-m",
        "sim.cli",
        "-m",
        f"hydra.sweep.dir={sweep}",
        "policy=kvflow,hicache",
        "workload.params.runs=300",
        "workload.params.fixed_tokens=2048,4096",
        "output.table=false",
    ]
    _resume(cmd, tmp_path, sweep, 4)


def test_default_main_job_report(tmp_path: Path) -> None:
    """``kvflow-sim`` (no arguments) writes ``<run dir>/report`` at its end through the Hydra callback
    ``analysis.callbacks.RunReport`` (the simulator never imports analysis) and says where."""
    run_dir = tmp_path / "run"
    res = kvflow_sim([f"hydra.run.dir={run_dir}", "output.table=false"], tmp_path)
    assert res.returncode == 0, res.stderr[-2000:]
    report = run_dir / "report" / "report.md"
    assert f"report: {report}" in res.stdout
    text = report.read_text()
    header = next(line for line in text.splitlines() if "hicache latency (s)" in line)
    assert {"sglang", "kvflow"} <= {c.strip() for c in header.split("|")}
    assert (run_dir / "report" / "default_speedup.png").stat().st_size > 5000
    assert len(pd.read_csv(run_dir / "report" / "results.csv")) == len(list(run_dir.glob("*/summary.json")))


def test_no_report_when_turned_off(tmp_path: Path) -> None:
    res = kvflow_sim(
        [f"hydra.run.dir={tmp_path / 'run'}", "output.report=false", "output.table=false", "policy=sglang"], tmp_path
    )
    assert res.returncode == 0, res.stderr[-2000:]
    assert "report:" not in res.stdout and not (tmp_path / "run" / "report").exists()
