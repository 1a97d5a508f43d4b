"""``kvflow-real calibrate`` + ``validate`` end to end on CPU with the tiny model, and the GPU
check script in its dry-run mode (same steps, tiny shapes, CPU)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")
yaml = pytest.importorskip("yaml")

from real.cli import main  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
WORKLOAD = [
    "model=tiny",
    "workload=sequential",
    "workload.params.agents=4",
    "workload.params.runs=3",
    "workload.params.fixed_tokens=256",
    "workload.params.dynamic_tokens=32",
    "workload.params.output_tokens=32",
    "engine.max_running_requests=1",
]


def test_calibrate_then_validate(tmp_path, capsys):
    profile = tmp_path / "cpu_tiny.yaml"
    assert (
        main(
            [
                "calibrate",
                "--device",
                "cpu",
                "--model",
                "tiny",
                "--base",
                "h200",
                "--name",
                "cpu_tiny",
                "--profile-out",
                str(profile),
                "--out",
                str(tmp_path / "cal"),
                "--reps",
                "2",
                "--prefill-new",
                "16,64,256",
                "--prefill-ctx",
                "0,256,512",
                "--decode-batch",
                "1,2,4",
                "--decode-ctx",
                "64,512",
                "--copy-tokens",
                "64,1024,8192",
            ]
        )
        == 0
    )
    prof = yaml.safe_load(profile.read_text())
    for block, keys in {
        "prefill": ("a_s", "b_s_per_token", "c_s_per_token_ctx"),
        "decode": ("a_s", "b_s_per_seq", "c_s_per_ctx_token"),
        "h2d": ("latency_s", "gbps"),
        "d2h": ("latency_s", "gbps"),
    }.items():
        assert all(prof["measured"][block][k] >= 0 for k in keys), block
    assert prof["name"] == "cpu_tiny" and "fit_error" in prof["calibration"]
    # the simulator accepts the profile
    from harness.cost_model import CostModel
    from kvflow.model_spec import load_model_spec

    cost = CostModel.from_config(prof, load_model_spec("tiny"))
    assert cost.prefill_time_s([(64, 256)]) > 0

    # hicache with a GPU cap below the 4 fixed prompts: offloads and CPU reloads on both backends
    out = tmp_path / "val"
    assert (
        main(
            [
                "validate",
                "--device",
                "cpu",
                "--out",
                str(out),
                f"hardware={profile}",
                "policy=hicache",
                "cache.gpu_capacity_tokens=700",
                *WORKLOAD,
            ]
        )
        == 0
    )
    val = json.loads((out / "validation.json").read_text())
    printed = capsys.readouterr().out
    print(printed)  # visible with -s: the CPU MAPE of this run
    mape = val["request_latency_s"]["mape"]
    assert 0 <= mape < 1.0, f"request latency MAPE {mape:.2%} on CPU"
    assert val["request_loaded_cpu_tokens"]["total_real"] == val["request_loaded_cpu_tokens"]["total_sim"] > 0
    assert val["request_hit_gpu_tokens"]["exact_match"] == 1.0
    for name in (
        "comparison_requests.csv",
        "comparison_workflows.csv",
        "scatter.png",
        "real/summary.json",
        "sim/summary.json",
        "real/requests.csv",
        "sim/requests.csv",
    ):
        assert (out / name).exists(), name
    assert json.loads((out / "real" / "summary.json").read_text())["backend"] == "real"
    assert json.loads((out / "sim" / "summary.json").read_text())["backend"] == "sim"


def test_run_several_policies(tmp_path, capsys):
    out = tmp_path / "runs"
    assert (
        main(
            [
                "run",
                "--device",
                "cpu",
                "--policies",
                "sglang,kvflow",
                "--out",
                str(out),
                "cache.gpu_capacity_tokens=700",
                *WORKLOAD,
            ]
        )
        == 0
    )
    for policy in ("sglang", "kvflow"):
        s = json.loads((out / policy / "summary.json").read_text())
        assert s["policy"] == policy and s["backend"] == "real" and s["requests"] == 16
    assert "kvflow" in capsys.readouterr().out


def test_bad_input_is_one_line(capsys):
    assert main(["validate", "--device", "cpu", "model=tiny", "policy=no_such_policy"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("kvflow-real: error:") and "\n" not in err


@pytest.mark.parametrize(
    "args, needle",
    [
        (["~hardware.mem_fraction_static"], "hardware 'a10g_paper': missing key 'mem_fraction_static'"),  # was 0.9
        (["experiment=chatdev", "workload.import_from=/nonexistent"], "no such file or folder"),  # import on the fly
    ],
)
def test_run_setup_errors_are_the_simulators(args, needle, capsys):
    assert main(["run", "--device", "cpu", "model=tiny", "policy=kvflow", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("kvflow-real: error:") and needle in err and "\n" not in err


def test_gpu_check_dry_run(tmp_path):
    env = dict(os.environ, PYTHON=sys.executable, RESULTS_DIR=str(tmp_path / "res"), OUT=str(tmp_path / "out"))
    (tmp_path / "out").mkdir()
    proc = subprocess.run(
        ["bash", str(REPO / "benchmarks" / "gpu_check.sh"), "--dry-run"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    res = tmp_path / "res"
    steps = dict(line.split()[:2] for line in (res / "steps.txt").read_text().splitlines())
    assert steps == {
        "engine_bench": "0",
        "calibrate": "0",
        "runs_fixed64": "0",
        "runs_fixed32": "0",
        "validate": "0",
        "summary": "0",
    } or all(rc == "0" for rc in steps.values())
    assert steps.get("engine_bench") == "0"
    for policy in ("sglang", "hicache", "kvflow", "kvflow_evict_only", "clairvoyant"):
        assert (res / "runs" / "fixed64" / policy / "summary.json").exists()
    summary = (res / "summary.md").read_text()
    assert summary.count("| kvflow |") == 2
    assert "## Engine data paths" in summary and "| host_gather_gbps |" in summary and "skipped: no CUDA" in summary
    profile = yaml.safe_load((res / "engine_bench" / "engine_profile.yaml").read_text())
    assert profile["dry_run"] is True and profile["host_gather_gbps"] > 0
    returned = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert "gpu_check_results.tar.gz" in returned and "summary.md" in returned and len(returned) <= 8
    assert "engine_profile.yaml" in returned
