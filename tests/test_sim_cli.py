"""kvflow-sim end to end: default comparison, one policy, outputs on disk, one-line errors."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

EXE = [sys.executable, "-c", "from sim.cli import main; main()"]
SMALL = ["workload.params.runs=1", "workload.params.agents=4", "workload.params.fixed_tokens=2048"]


def run(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HYDRA_FULL_ERROR": "0"}
    return subprocess.run(
        [*EXE, f"hydra.run.dir={tmp_path}/run", *args],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=120,
    )


def test_default_compares_policies(tmp_path):
    p = run(tmp_path, *SMALL)
    assert p.returncode == 0, p.stderr
    assert "KVFlow speedup over hicache" in p.stdout and "KVFlow speedup over sglang" in p.stdout
    for policy in ("kvflow", "hicache", "sglang"):
        d = tmp_path / "run" / policy
        summary = json.loads((d / "summary.json").read_text())
        assert summary["policy"] == policy
        lines = (d / "requests.csv").read_text().splitlines()
        assert lines[0].startswith("request_id,") and len(lines) == 1 + summary["requests"]
        assert (d / "config.yaml").exists()
        assert summary["backend"] == "sim" and summary["params"]["workload.params.agents"] == 4
        assert len((d / "workflows.csv").read_text().splitlines()) == 1 + summary["workflows"]
    assert not list((tmp_path / "run").rglob("*.tmp"))
    comparison = json.loads((tmp_path / "run" / "comparison.json").read_text())
    assert set(comparison["speedup_of_kvflow"]) == {"hicache", "sglang"}


def test_single_policy_run(tmp_path):
    p = run(tmp_path, "policy=clairvoyant", "output.requests_csv=false", *SMALL)
    assert p.returncode == 0, p.stderr
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["policy"] == "clairvoyant" and not (tmp_path / "run" / "requests.csv").exists()


@pytest.mark.parametrize(
    "args, needle",
    [
        (["policy=nope"], "unknown policy 'nope'; valid: clairvoyant, hicache, kvflow"),
        (["hardware=tpu"], "unknown hardware 'tpu'"),
        (["workload.params.dynamic_tokens=-3"], "dynamic_tokens"),
        (["cache.gpu_capacity_tokens=100"], "can never run"),
        (["~hardware.pcie_latency_s"], "hardware 'a10g_paper': missing key 'pcie_latency_s'"),  # no silent default
        (["hardware.pcie_h2d_gbps=0"], "hardware.pcie_h2d_gbps=0: must be a number > 0"),  # was ZeroDivisionError
        (["engine.chunk_tokens=0"], "engine.chunk_tokens=0"),  # was replaced by the default
        (["workload=trace"], "workload.trace is required"),  # was "no such file: ???"
    ],
)
def test_bad_input_is_one_line_exit_2(tmp_path, args, needle):
    p = run(tmp_path, *args)
    assert p.returncode == 2
    assert needle in p.stderr
    assert "Traceback" not in p.stderr and len(p.stderr.strip().splitlines()) == 1


def test_chatdev_preset_imports_logs_on_the_fly(tmp_path):
    logs = tmp_path / "logs"  # the fixture logs (all three usage layouts import) + one without usage blocks
    logs.mkdir()
    for log in (Path(__file__).parent / "fixtures" / "traces").glob("*.log.gz"):
        (logs / log.name).write_bytes(log.read_bytes())
    (logs / "nousage.log").write_text("[2023-26-07 12:11:45 INFO] ChatDev Starts (1)\n")
    p = run(tmp_path, "experiment=chatdev", "policy=kvflow", "hydra/launcher=basic", f"workload.import_from={logs}")
    assert p.returncode == 0, p.stderr
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["workload"] == "chatdev" and summary["requests"] > 0
    assert "nousage.log: skipped" in p.stderr  # the log without usage blocks is named, not fatal
    bad = run(tmp_path, "experiment=chatdev", "policy=kvflow", f"workload.import_from={tmp_path}/none")
    assert bad.returncode == 2 and "no such file or folder" in bad.stderr and "Traceback" not in bad.stderr


def test_compare_list_override_runs_and_reports(tmp_path):
    p = run(tmp_path, "compare=[kvflow,sglang,hicache,clairvoyant]", *SMALL)
    assert p.returncode == 0, p.stderr
    assert "Traceback" not in p.stderr and "raised" not in p.stderr  # the run report used to fail on the list
    assert (tmp_path / "run" / "report" / "report.md").is_file()
    summary = json.loads((tmp_path / "run" / "kvflow" / "summary.json").read_text())
    assert "compare" not in summary["params"] and len(summary["config_sha256"]) == 64


def test_a_trace_imported_on_the_fly_needs_no_trace_path(tmp_path):
    """The README's on-the-fly import example: workload=trace with import_format but no workload.trace
    was refused with 'workload.trace is required' although the message itself offers import_format."""
    from harness.config_schema import validate_config

    wl = {"name": "trace", "generator": None, "trace": "???", "import_format": "mooncake", "import_from": "x.jsonl"}
    validate_config({"workload": wl})  # no ConfigError


def test_an_error_raised_inside_a_launcher_plugin_counts_as_a_launcher_error():
    """``sim.cli._from_launcher`` looks at the innermost frame: raised in a ``hydra_plugins.*`` or
    ``submitit.*`` module -> a launcher set-up error (one line); raised in kvflow code -> not."""
    from sim import cli

    def raised_in(module_name: str) -> BaseException:
        namespace: dict = {"__name__": module_name}
        exec("def boom():\n    raise RuntimeError('Could not detect \"srun\"')\n", namespace)
        try:
            namespace["boom"]()
        except RuntimeError as exc:
            return exc
        raise AssertionError("not raised")

    assert cli._from_launcher(raised_in("hydra_plugins.hydra_submitit_launcher.submitit_launcher"))
    assert cli._from_launcher(raised_in("submitit.slurm.slurm"))
    assert not cli._from_launcher(raised_in("kvflow.engine"))
    assert not cli._from_launcher(raised_in("ray._private.worker"))
