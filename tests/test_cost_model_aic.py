"""``cost_model=aiconfigurator``: the one-line error without the extra (default run), and, where the
extra is installed (``.ci/aic_stage.sh``), runs against the fitted profiles within their fit error."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import SHARED_DATA

from harness.cost_model import CostModel
from harness.errors import SetupError
from kvflow.model_spec import load_model_spec
from sim.runner import load_conf

try:
    import aiconfigurator_core  # noqa: F401

    HAVE_AIC = True
except ImportError:
    HAVE_AIC = False

needs_aic = pytest.mark.skipif(not HAVE_AIC, reason="needs the aic extra (pip install -e '.[aic]'; .ci/aic_stage.sh)")
# paper_single's setting (conf/experiment/paper_single.yaml) on a GPU the database covers
PAPER_SINGLE = [
    "workload=sequential",
    "workload.params.fixed_tokens=8192",
    "workload.params.output_tokens=256",
    "cache.cpu_capacity_tokens=1048576",
    "engine.max_running_requests=1",
]
WEKA_FILES = ("trace_0010.json.gz", "trace_0254.json.gz")


def sim(tmp_path: Path, *args: str, hide_aic: bool = False) -> subprocess.CompletedProcess:
    pre = "import sys; sys.modules['aiconfigurator_core'] = None; " if hide_aic else ""
    return subprocess.run(
        [sys.executable, "-c", pre + "from sim.cli import main; main()", f"hydra.run.dir={tmp_path}/run", *args],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={**os.environ, "HYDRA_FULL_ERROR": "0"},
        timeout=600,
    )


def test_missing_extra_is_a_one_line_error(tmp_path):
    p = sim(tmp_path, "policy=sglang", "hardware=h100_sglang", "cost_model=aiconfigurator", hide_aic=True)
    assert p.returncode == 2
    want = "kvflow-sim: error: cost_model=aiconfigurator needs the aic extra: pip install -e '.[aic]'"
    assert p.stderr.strip() == want


def test_unknown_cost_model_and_profile_without_aic_system_are_errors():
    llama = load_model_spec("llama-3.1-8b")
    with pytest.raises(SetupError, match="cost_model='roofline'; valid: builtin, aiconfigurator"):
        CostModel.for_run({"cost_model": "roofline", "hardware": load_conf("hardware", "h100")}, llama)
    with pytest.raises(SetupError, match="hardware 'a10g': cost_model=aiconfigurator needs key 'aic_system'"):
        CostModel.for_run({"cost_model": "aiconfigurator", "hardware": load_conf("hardware", "a10g")}, llama)


def _summary(tmp_path: Path, name: str, *args: str) -> dict:
    (tmp_path / name).mkdir()
    p = sim(tmp_path / name, "policy=kvflow", "output.report=false", "sim.timeline=false", *args)
    assert p.returncode == 0, p.stderr
    return json.loads((tmp_path / name / "run" / "summary.json").read_text())


def _fit_error(hardware: str) -> float:
    err = load_conf("hardware", hardware)["calibration"]["fit_error"]
    return max(e["max"] for e in err.values())


def _agree(tmp_path: Path, hardware: str, *args: str) -> None:
    base = ["model=llama-3.1-8b", f"hardware={hardware}", *args]
    ours = _summary(tmp_path, "builtin", *base)
    aic = _summary(tmp_path, "aic", *base, "cost_model=aiconfigurator")
    tol = _fit_error(hardware)
    for key in ("workflow_latency_mean_s", "makespan_s"):
        rel = abs(ours[key] / aic[key] - 1)
        print(f"{hardware} {args[:1]} {key}: builtin {ours[key]:.4f} aic {aic[key]:.4f} ({100 * rel:.2f}%)")
        assert rel <= tol, f"{key}: {ours[key]} vs {aic[key]} differ by {rel:.3f} > fit error {tol}"


@needs_aic
@pytest.mark.parametrize("gpu", ["h100", "h200"])
def test_aic_backend_agrees_with_fitted_profile_on_paper_single(tmp_path, gpu):
    _agree(tmp_path, f"{gpu}_sglang", *PAPER_SINGLE)


@needs_aic
def test_aic_backend_agrees_with_fitted_profile_on_a_coding_agent_trace(tmp_path):
    files = [SHARED_DATA / "weka" / n for n in WEKA_FILES]
    if not all(f.exists() for f in files):
        pytest.skip(f"shared data not found at {SHARED_DATA / 'weka'}")
    trace = tmp_path / "weka.jsonl"
    from traces.cli import main as trace_main

    assert trace_main(["import", "weka", *map(str, files), "-o", str(trace)]) == 0
    _agree(tmp_path, "h100_sglang", "workload=trace", f"workload.trace={trace}")
