"""``kvflow-real validate``: one trace on the real backend and on the simulator, compared.

The simulator runs with the same composed config and a (calibrated) hardware profile; its Python
API (``sim.runner.simulate``) is imported lazily inside ``validate`` only: DESIGN.md keeps ``sim/``
and ``real/`` apart, and this module is the one place where both meet, at run time, never at import.
Outputs (in ``out``): ``real/`` and ``sim/`` run directories, ``comparison_requests.csv`` and
``comparison_workflows.csv`` (predicted vs measured), ``validation.json`` (MAPE and max error per
quantity) and ``scatter.png``.
"""

from __future__ import annotations

import copy
import csv
import json
from pathlib import Path
from typing import Any

import numpy as np

from harness.rows import workflow_rows
from harness.run_dir import write_run_dir
from harness.setup import build_trace
from real.runner import RealOptions, run_real

TIME_KEYS = ("latency_s", "ttft_s")
TOKEN_KEYS = ("hit_gpu_tokens", "loaded_cpu_tokens", "recomputed_tokens")


def _errors(pred: list[float], meas: list[float]) -> dict[str, float]:
    p, m = np.asarray(pred, dtype=float), np.asarray(meas, dtype=float)
    ok = m > 0
    if not ok.any():
        return {"mape": 0.0, "max_rel_err": 0.0, "mean_abs_err": 0.0, "n": 0}
    rel = np.abs(p[ok] - m[ok]) / m[ok]
    return {
        "mape": float(rel.mean()),
        "max_rel_err": float(rel.max()),
        "mean_abs_err": float(np.abs(p - m).mean()),
        "n": int(ok.sum()),
    }


def compare(real_rows: list[dict[str, Any]], sim_rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Per-request and per-workflow rows plus error statistics (sim = predicted, real = measured)."""
    sim_by_id = {r["request_id"]: r for r in sim_rows}
    req_rows = []
    for r in real_rows:
        s = sim_by_id[r["request_id"]]
        row = {
            "request_id": r["request_id"],
            "client_id": r["client_id"],
            "agent_id": r["agent_id"],
            "warmup": r["warmup"],
        }
        for k in TIME_KEYS + TOKEN_KEYS:
            row[f"{k}_real"], row[f"{k}_sim"] = r[k], s[k]
        req_rows.append(row)
    real_wf = {w["client_id"]: w for w in workflow_rows(real_rows)}
    sim_wf = {w["client_id"]: w for w in workflow_rows(sim_rows)}
    wf_rows = [
        {"client_id": c, "latency_s_real": real_wf[c]["latency_s"], "latency_s_sim": sim_wf[c]["latency_s"]}
        for c in sorted(real_wf)
        if c in sim_wf
    ]
    stats: dict[str, Any] = {}
    for k in TIME_KEYS:
        stats[f"request_{k}"] = _errors([r[f"{k}_sim"] for r in req_rows], [r[f"{k}_real"] for r in req_rows])
    for k in TOKEN_KEYS:
        diff = [abs(r[f"{k}_sim"] - r[f"{k}_real"]) for r in req_rows]
        stats[f"request_{k}"] = {
            "exact_match": float(np.mean([d == 0 for d in diff])) if diff else 1.0,
            "mean_abs_diff": float(np.mean(diff)) if diff else 0.0,
            "total_real": int(sum(r[f"{k}_real"] for r in req_rows)),
            "total_sim": int(sum(r[f"{k}_sim"] for r in req_rows)),
        }
    stats["workflow_latency_s"] = _errors([w["latency_s_sim"] for w in wf_rows], [w["latency_s_real"] for w in wf_rows])
    return {"requests": req_rows, "workflows": wf_rows, "stats": stats}


def _write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    if not rows:
        path.write_text("")
        return
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


def scatter(path: Path, result: dict[str, Any], title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(13, 4.2))
    panels = [
        ("request latency", result["requests"], "latency_s"),
        ("TTFT", result["requests"], "ttft_s"),
        ("workflow latency", result["workflows"], "latency_s"),
    ]
    for ax, (label, rows, key) in zip(axes, panels):
        real = np.array([r[f"{key}_real"] for r in rows], dtype=float)
        sim = np.array([r[f"{key}_sim"] for r in rows], dtype=float)
        ax.scatter(real, sim, s=12, alpha=0.7)
        if len(real):
            lo = max(min(real.min(), sim.min()), 1e-6)
            hi = max(real.max(), sim.max())
            ax.plot([lo, hi], [lo, hi], "k--", lw=0.8)
            ax.set_xscale("log")
            ax.set_yscale("log")
        stat = result["stats"][
            "workflow_latency_s" if key == "latency_s" and rows is result["workflows"] else f"request_{key}"
        ]
        ax.set_title(f"{label}: MAPE {100 * stat['mape']:.1f}%")
        ax.set_xlabel("measured (real) [s]")
        ax.set_ylabel("predicted (sim) [s]")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def validate(
    cfg: dict[str, Any],
    out: str | Path,
    opts: RealOptions | None = None,
    overrides: list[str] | None = None,
    log: Any = print,
    net: Any = None,
    recalibrate: Any = None,
) -> dict[str, Any]:
    """Replay ``cfg``'s workload on both backends; ``cfg['hardware']`` should be a calibrated profile.
    ``recalibrate`` (a CPU host, ``real.cpu_calibration.Bracket.after``), called between the real run
    and the simulation, returns the profile the simulator uses instead."""
    from sim.runner import simulate  # lazy: real/ never imports sim/ at module level

    out = Path(out)
    trace = build_trace(cfg["workload"], int(cfg.get("seed", 0)))
    real = run_real(cfg, trace, out / "real", opts, net=net, overrides=overrides)
    log(f"real: {len(real.rows)} requests, makespan {real.summary['makespan_s']:.3f}s")
    drift = None
    if recalibrate is not None:
        cfg = {**cfg, "hardware": recalibrate()}
        drift = cfg["hardware"].get("calibration", {}).get("drift")
    sim = simulate(copy.deepcopy(cfg), trace)
    write_run_dir(
        out / "sim",
        sim.summary,
        sim.rows,
        sim.workflow_rows,
        cfg,
        timeline=sim.timeline,
        overrides=list(overrides or []),
    )
    log(f"sim:  {len(sim.rows)} requests, makespan {sim.summary['makespan_s']:.3f}s")
    result = compare(real.rows, sim.rows)
    _write_csv(out / "comparison_requests.csv", result["requests"])
    _write_csv(out / "comparison_workflows.csv", result["workflows"])
    hw = cfg["hardware"].get("name") if isinstance(cfg["hardware"], dict) else cfg["hardware"]
    policy = cfg["policy"].get("name")
    summary = {
        "policy": policy,
        "hardware": hw,
        "model": cfg["model"].get("name"),
        "workload": cfg["workload"].get("name"),
        "requests": len(result["requests"]),
        "makespan_s_real": real.summary["makespan_s"],
        "makespan_s_sim": sim.summary["makespan_s"],
        **result["stats"],
    }
    if drift is not None:
        summary["calibration_drift"] = drift
    (out / "validation.json").write_text(json.dumps(summary, indent=2, sort_keys=True))
    scatter(out / "scatter.png", result, f"sim vs real: policy {policy}, hardware {hw}")
    return summary


def report(summary: dict[str, Any]) -> str:
    lines = [f"validation ({summary['policy']} on {summary['hardware']}, {summary['requests']} requests)"]
    for key in ("request_latency_s", "request_ttft_s", "workflow_latency_s"):
        s = summary[key]
        lines.append(f"  {key:<20} MAPE {100 * s['mape']:6.2f}%   max {100 * s['max_rel_err']:7.2f}%   (n={s['n']})")
    for key in ("request_hit_gpu_tokens", "request_loaded_cpu_tokens", "request_recomputed_tokens"):
        s = summary[key]
        lines.append(f"  {key:<28} exact {100 * s['exact_match']:5.1f}%  real {s['total_real']}  sim {s['total_sim']}")
    lines.append(f"  makespan real {summary['makespan_s_real']:.3f}s  sim {summary['makespan_s_sim']:.3f}s")
    return "\n".join(lines)
