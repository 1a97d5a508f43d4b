"""Per-request rows, per-workflow rows and the run summary, written in the run-directory format
of docs/architecture.md (the same files and columns the simulator writes).

Workflow latency is per client, over its measured (non-warm-up) invocations: from the arrival of
the first to the finish of the last, as the simulator computes it.
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from kvflow.workflow import ROW_FIELDS, WORKFLOW_FIELDS

def _stat(values: list[float], q: float | None = None) -> float:
    if not values:
        return 0.0
    a = np.asarray(values, dtype=np.float64)
    return float(a.mean()) if q is None else float(np.percentile(a, q))


def _ratio(num: float, den: float) -> float:
    return float(num) / den if den else 0.0


def summarize(cfg: dict[str, Any], rows: list[dict[str, Any]], wf: list[dict[str, Any]], loop: Any,
              cache: Any, executor: Any, makespan_s: float, wall_s: float, extra: dict[str, Any]) -> dict[str, Any]:
    """Keys of docs/architecture.md (flat); everything else under ``details`` (as the simulator does)."""
    measured = [r for r in rows if not r["warmup"]]
    lat = [w["latency_s"] for w in wf]
    prompt = sum(r["prompt_tokens"] for r in measured)
    st = cache.stats
    name = lambda node: node.get("name") if isinstance(node, dict) else node  # noqa: E731
    details = {
        "measured_requests": len(measured),
        "request_latency_mean_s": _stat([r["latency_s"] for r in measured]),
        "ttft_mean_s": _stat([r["ttft_s"] for r in measured]),
        "evicted_tokens": {"gpu": st.gpu_evicted_tokens, "cpu": st.cpu_evicted_tokens},
        "stalled_s_total": sum(r["stalled_s"] for r in measured),
        "iterations": loop.iterations,
        "decode_steps": loop.decode_steps,
        "gpu_busy_fraction": _ratio(loop.busy_s, makespan_s),
        "blocking_load_wait_s": loop.blocking_load_wait_s,
    }
    params = extra.pop("params", {})
    details.update(extra)
    return {
        "backend": "real",
        "policy": name(cfg.get("policy")),
        "experiment": cfg.get("experiment_name") or name(cfg.get("experiment")),
        "workload": name(cfg.get("workload")),
        "hardware": name(cfg.get("hardware")),
        "model": name(cfg.get("model")),
        "seed": int(cfg.get("seed", 0)),
        "requests": len(rows),
        "workflows": len(wf),
        "workflow_latency_mean_s": _stat(lat),
        "workflow_latency_p50_s": _stat(lat, 50),
        "workflow_latency_p99_s": _stat(lat, 99),
        "makespan_s": makespan_s,
        "throughput_req_s": _ratio(len(rows), makespan_s),
        "hit_rate_gpu": _ratio(sum(r["hit_gpu_tokens"] for r in measured), prompt),
        "hit_rate_cpu": _ratio(sum(r["loaded_cpu_tokens"] for r in measured), prompt),
        "recompute_rate": _ratio(sum(r["recomputed_tokens"] for r in measured), prompt),
        "h2d_bytes": executor.bytes["h2d"],
        "d2h_bytes": executor.bytes["d2h"],
        "h2d_utilization": _ratio(executor.busy_s["h2d"], makespan_s),
        "d2h_utilization": _ratio(executor.busy_s["d2h"], makespan_s),
        "prefetch_issued": st.prefetch_issued,
        "prefetch_used": st.prefetch_used,
        "prefetch_wasted": st.prefetch_wasted,
        "prefetch_late": st.prefetch_late,
        "wall_s": wall_s,
        "params": params,
        "details": details,
    }


def _write_csv(path: Path, fields: tuple[str, ...], rows: list[dict[str, Any]]) -> None:
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(fields), extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


def write_run_dir(out: Path, cfg: dict[str, Any], rows: list[dict[str, Any]], wf: list[dict[str, Any]],
                  summary: dict[str, Any], timeline: list[tuple[str, float, float, str]] | None = None,
                  overrides: list[str] | None = None) -> Path:
    """requests.csv, workflows.csv, timeline.csv, config.yaml (+ .hydra/), then summary.json last."""
    import yaml

    out.mkdir(parents=True, exist_ok=True)
    _write_csv(out / "requests.csv", ROW_FIELDS, rows)
    _write_csv(out / "workflows.csv", WORKFLOW_FIELDS, wf)
    if timeline:
        _write_csv(out / "timeline.csv", ("resource", "start_s", "end_s", "label"),
                   [dict(zip(("resource", "start_s", "end_s", "label"), t)) for t in sorted(timeline, key=lambda t: t[1])])
    text = yaml.safe_dump(cfg, sort_keys=False)
    (out / "config.yaml").write_text(text)
    hydra_dir = out / ".hydra"
    hydra_dir.mkdir(exist_ok=True)
    (hydra_dir / "config.yaml").write_text(text)
    (hydra_dir / "overrides.yaml").write_text(yaml.safe_dump(list(overrides or [])))
    tmp = out / "summary.json.tmp"
    tmp.write_text(json.dumps(summary, indent=2, sort_keys=True, default=str))
    os.replace(tmp, out / "summary.json")
    return out
