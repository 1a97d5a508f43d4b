"""``kvflow-real`` on a CPU machine: CPU-sized defaults chosen and printed (user overrides win),
the memory check's one-line error before anything is allocated, and validate end to end with its
own calibration reporting a workflow-latency MAPE."""

from __future__ import annotations

import json
import math

import pytest

pytest.importorskip("torch")
yaml = pytest.importorskip("yaml")

import real.memory  # noqa: E402
from real.cli import main  # noqa: E402
from real.cpu_defaults import WorkingSet, apply, derived_pools, working_set  # noqa: E402

# a few seconds on one core: 2 workflows x 2 agents, 1 warm-up + 1 run, 64/16/8 tokens
SMALL = [
    "workload=concurrent",
    "workload.params.workflows=2",
    "workload.params.agents=2",
    "workload.params.warmup=1",
    "workload.params.runs=1",
    "workload.params.fixed_tokens=64",
    "workload.params.dynamic_tokens=16",
    "workload.params.output_tokens=8",
]


def _value(overrides: list[str], key: str) -> str | None:
    found = [o.split("=", 1)[1] for o in overrides if o.split("=", 1)[0] == key]
    return found[-1] if found else None


def test_cpu_defaults_are_chosen_and_said_in_one_line():
    choice = apply("validate", [])
    assert _value(choice.overrides, "model") == "tiny" and _value(choice.overrides, "policy") == "kvflow"
    gpu, cpu = (
        int(_value(choice.overrides, "cache.gpu_capacity_tokens")),
        int(_value(choice.overrides, "cache.cpu_capacity_tokens")),
    )
    assert 0 < gpu <= cpu < 1_000_000  # from the workload, nowhere near the GPU formula's 80M tokens
    line = choice.line
    assert "\n" not in line and line.startswith("cpu: model=tiny")
    assert f"gpu pool {gpu} tokens, cpu pool {cpu} tokens (derived from the workload" in line
    assert "policy=kvflow" in line and "workload=concurrent" in line


def test_user_overrides_win_over_cpu_defaults():
    given = ["model=tiny", "policy=hicache", "workload=sequential", "cache.gpu_capacity_tokens=5000"]
    choice = apply("validate", given)
    assert choice.overrides[-len(given) :] == given  # theirs come last, so they win in Hydra
    assert _value(choice.overrides, "cache.gpu_capacity_tokens") == "5000"
    assert _value(choice.overrides, "cache.cpu_capacity_tokens") is None  # the policy's ratio over their pool
    assert not any(o.startswith("workload.params.") for o in choice.overrides)  # their workload, unchanged
    assert "model=" not in choice.line and "policy=" not in choice.line and "gpu pool" not in choice.line
    assert apply("run", ["workload.params.agents=3"]).overrides.count("workload=concurrent") == 0


def test_pools_follow_the_working_set():
    from harness.setup import build_trace
    from real.config import compose

    cfg = compose(["model=tiny", *SMALL])
    ws = working_set(build_trace(cfg["workload"], 0))
    # 2 workflows x 2 agents of their own 64-token prompts; 2 x (1 warm-up + 1 run) x 2 agents calls
    assert ws.fixed_tokens == 4 * 64
    assert ws.largest_need_tokens == 64 + 16 + 8
    assert ws.distinct_tokens == 4 * 64 + 8 * (16 + 8)
    assert derived_pools(WorkingSet(40960, 50000, 4200)) == (20480, 50000)
    assert derived_pools(WorkingSet(1000, 1500, 900)) == (1800, 1800)  # at least two invocations on the GPU


def test_run_prints_cpu_defaults_and_uses_the_derived_pools(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["run", "--device", "cpu", "--out", str(out), *SMALL]) == 0
    printed = capsys.readouterr().out
    first = printed.splitlines()[0]
    assert first.startswith("cpu: model=tiny") and "derived from the workload" in first
    cfg = yaml.safe_load((out / "config.yaml").read_text())
    gpu = int(first.split("gpu pool ")[1].split()[0])
    assert cfg["cache"]["gpu_capacity_tokens"] == gpu and cfg["model"]["name"] == "tiny"
    assert json.loads((out / "summary.json").read_text())["requests"] == 8


@pytest.mark.parametrize(
    "args, needle",
    [
        (["run", "--device", "cpu", "model=tiny", *SMALL, "cache.cpu_capacity_tokens=100000000"], "CPU KV pool"),
        (["run", "--device", "cpu", "model=llama-3.1-8b", *SMALL], "model weights (llama-3.1-8b, float32) 32.12 GB"),
        (["calibrate", "--device", "cpu", "--model", "llama-3.1-8b"], "model weights (llama-3.1-8b, float32)"),
        (["validate", "--device", "cpu", "model=qwen2.5-32b"], "change model="),
    ],
)
def test_oversized_request_is_one_line_exit_2(args, needle, monkeypatch, capsys):
    monkeypatch.setattr(real.memory, "available_host_bytes", lambda: 8 * 10**9)  # an 8 GB host
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("kvflow-real: error: not enough memory on host (cpu):") and "\n" not in err
    assert needle in err and "usable" in err and "Traceback" not in err


def test_memory_error_names_the_pool_key(monkeypatch, capsys):
    monkeypatch.setattr(real.memory, "available_host_bytes", lambda: 10**6)  # 1 MB: the pools cannot fit
    assert (
        main(["run", "--device", "cpu", *SMALL, "cache.gpu_capacity_tokens=100000", "cache.cpu_capacity_tokens=1000"])
        == 2
    )
    err = capsys.readouterr().err.strip()
    assert "GPU KV pool (100000 tokens) 51.20 MB" in err and "change cache.gpu_capacity_tokens" in err


def test_validate_on_cpu_calibrates_around_the_run_and_reports_a_mape(tmp_path, capsys):
    out = tmp_path / "val"
    assert main(["validate", "--device", "cpu", "--out", str(out), *SMALL]) == 0
    printed = capsys.readouterr().out
    print(printed)  # visible with -s
    assert printed.startswith("cpu: model=tiny") and "calibrating tiny on this CPU before and after the run" in printed
    before = yaml.safe_load((out / "cpu_profile_before.yaml").read_text())
    assert before["measured_model"] == "tiny" and before["calibration"]["device"] == "cpu"
    assert (out / "cpu_profile_before.yaml").read_text().startswith("# CPU PROFILE")
    used = yaml.safe_load((out / "cpu_profile.yaml").read_text())  # the mean of before and after
    after = yaml.safe_load((out / "cpu_profile_after.yaml").read_text())
    a_s = (before["measured"]["decode"]["a_s"] + after["measured"]["decode"]["a_s"]) / 2
    assert used["measured"]["decode"]["a_s"] == pytest.approx(a_s) and used["measured_model"] == "tiny"
    val = json.loads((out / "validation.json").read_text())
    wf = val["workflow_latency_s"]
    assert wf["n"] == 2 and math.isfinite(wf["mape"]) and wf["mape"] >= 0
    assert val["policy"] == "kvflow" and val["hardware"] == "cpu_tiny_measured"
    assert "workflow_latency_s   MAPE" in printed and set(val["calibration_drift"]) == {"decode_step", "prefill"}
