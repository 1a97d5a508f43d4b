"""One run-directory contract (harness.run_dir): every backend's output passes the same schema
check, has the same columns and the same summary keys; files are written atomically."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from harness.rows import ROW_FIELDS, TIMELINE_FIELDS, WORKFLOW_FIELDS, is_warmup
from harness.run_dir import RunError, should_skip, validate_run_dir, write_run_dir
from harness.setup import build_trace
from harness.summary import DETAIL_KEYS, SUMMARY_KEYS
from real.config import compose

SMALL = [
    "workload=sequential",
    "workload.params.agents=3",
    "workload.params.runs=2",
    "workload.params.fixed_tokens=48",
    "workload.params.dynamic_tokens=8",
    "workload.params.output_tokens=6",
]


def _header(path: Path) -> list[str]:
    with path.open() as f:
        return next(csv.reader(f))


def _check(run_dir: Path, backend: str) -> dict:
    summary = validate_run_dir(run_dir)
    assert summary["backend"] == backend
    assert set(SUMMARY_KEYS) <= set(summary) and set(DETAIL_KEYS) <= set(summary["details"])
    assert _header(run_dir / "requests.csv") == list(ROW_FIELDS)
    assert _header(run_dir / "workflows.csv") == list(WORKFLOW_FIELDS)
    assert not list(run_dir.rglob("*.tmp"))
    return summary


def test_sim_run_dir(tmp_path: Path) -> None:
    from sim.cli import run

    cfg = compose(
        ["policy=kvflow", "model=tiny", "hardware=h100", *SMALL, "cache.gpu_capacity_tokens=400", "output.table=false"]
    )
    run(OmegaConf.create(cfg), tmp_path / "sim")
    summary = _check(tmp_path / "sim", "sim")
    assert _header(tmp_path / "sim" / "timeline.csv") == list(TIMELINE_FIELDS)
    assert summary["requests"] == 3 * 2 + 3  # runs x agents + one warm-up run
    assert should_skip(tmp_path / "sim")


def test_real_run_dir(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    from real.runner import RealOptions, run_real

    cfg = compose(["policy=hicache", "model=tiny", *SMALL, "cache.gpu_capacity_tokens=110"])
    run_real(cfg, out=tmp_path / "real", opts=RealOptions(device="cpu"))
    summary = _check(tmp_path / "real", "real")
    assert summary["details"]["device"] == "cpu" and summary["h2d_bytes"] > 0
    assert (tmp_path / "real" / ".hydra" / "overrides.yaml").exists()


def test_sglang_replay_run_dir(tmp_path: Path) -> None:
    from real.sglang.replay import ReplayConfig, write_replay

    trace = build_trace(compose(SMALL)["workload"], 0)
    rows = []
    for k, inv in enumerate(trace.invocations):  # what _Replayer records per streamed request
        n = trace.prompt_len(inv)
        rows.append(
            {
                "request_id": inv.id,
                "client_id": inv.client_id,
                "agent_id": inv.agent_id,
                "warmup": is_warmup(inv),
                "ready_s": float(k),
                "arrival_s": float(k),
                "admit_s": float(k),
                "first_token_s": k + 0.1,
                "finish_s": k + 0.5,
                "queue_s": 0.0,
                "ttft_s": 0.1,
                "latency_s": 0.5,
                "prompt_tokens": n,
                "fixed_tokens": trace.fixed_tokens(inv),
                "output_tokens": inv.output_tokens,
                "hit_gpu_tokens": n // 2,
                "loaded_cpu_tokens": 0,
                "recomputed_tokens": n - n // 2,
                "loaded_bytes": 0,
                "stalled_s": 0.0,
            }
        )
    summary = write_replay(
        tmp_path / "sglang",
        trace,
        ReplayConfig("http://x", policy="kvflow"),
        rows,
        makespan_s=float(len(rows)),
        wall_s=1.0,
    )
    assert _check(tmp_path / "sglang", "sglang") == json.loads(json.dumps(summary))
    assert summary["workflows"] == 1 and 0.4 < summary["hit_rate_gpu"] < 0.6


def test_schema_check_names_the_missing_key(tmp_path: Path) -> None:
    write_run_dir(tmp_path, {"policy": "kvflow", "backend": "sim"}, [], [], {})
    with pytest.raises(RunError, match=r"summary.json: missing key 'experiment'"):
        validate_run_dir(tmp_path)
    with pytest.raises(RunError, match="no summary.json"):
        validate_run_dir(tmp_path / "missing")
