"""Summarise a gpu_check.sh results folder into summary.md (and summary.json).

    python benchmarks/gpu_summary.py RESULTS_DIR

Reads the run directories under runs/fixed<N>/<policy>/summary.json, calibration/calibration.json
and validate/validation.json; writes a markdown page with workflow latency per policy, KVFlow's
speedups, the calibration fit errors and the sim-vs-real errors.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

POLICIES = ("sglang", "hicache", "kvflow", "kvflow_evict_only", "clairvoyant")


def _load(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def runs_table(res: Path) -> tuple[list[str], dict]:
    lines, data = [], {}
    for setting in sorted((res / "runs").glob("fixed*"), key=lambda p: -int(p.name[5:] or 0)):
        rows = {p: _load(setting / p / "summary.json") for p in POLICIES}
        rows = {p: s for p, s in rows.items() if s}
        if not rows:
            continue
        data[setting.name] = rows
        lines += [
            f"### {setting.name} (tokens fixed/32/32, batch 1)",
            "",
            "| policy | workflow latency mean [s] | KVFlow speedup vs this | hit GPU | hit CPU | recompute | "
            "prefetch used/issued | H2D GB | D2H GB |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        kv = rows.get("kvflow", {}).get("workflow_latency_mean_s")
        for p, s in rows.items():
            lat = s["workflow_latency_mean_s"]
            speed = f"{lat / kv:.2f}x" if kv else "-"
            lines.append(
                f"| {p} | {lat:.3f} | {speed} | {100 * s['hit_rate_gpu']:.1f}% | {100 * s['hit_rate_cpu']:.1f}% "
                f"| {100 * s['recompute_rate']:.1f}% | {s['prefetch_used']}/{s['prefetch_issued']} "
                f"| {s['h2d_bytes'] / 1e9:.2f} | {s['d2h_bytes'] / 1e9:.2f} |"
            )
        lines.append("")
    return lines, data


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: gpu_summary.py RESULTS_DIR", file=sys.stderr)
        return 2
    res = Path(args[0])
    lines = [f"# kvflow real-backend GPU check: {res.name}", ""]
    first = next(iter(sorted((res / "runs").glob("fixed*/*/summary.json"))), None)
    if first:
        top = _load(first) or {}
        s = {**top.get("details", {}), "model": top.get("model")}
        lines += [
            f"device {s.get('device_name')}, torch {s.get('torch')}, model {s.get('model')}, "
            f"dtype {s.get('dtype')}, GPU KV cap {s.get('gpu_capacity_tokens')} tokens, "
            f"CPU cap {s.get('cpu_capacity_tokens')} tokens",
            "",
        ]
    table, data = runs_table(res)
    lines += ["## Runs", ""] + (table or ["(no runs)", ""])
    out: dict = {"runs": data}
    for cal in sorted(res.glob("calibration*/calibration.json")):
        c = _load(cal) or {}
        out[cal.parent.name] = c
        lines += [
            f"## {cal.parent.name}",
            "",
            f"profile: `{c.get('profile')}`",
            "",
            "| term | coefficients | fit MAPE | max err |",
            "|---|---|---|---|",
        ]
        for term, err in (c.get("fit_error") or {}).items():
            coef = ", ".join(f"{k}={v:.4g}" for k, v in (c.get("measured") or {}).get(term, {}).items())
            lines.append(f"| {term} | {coef} | {100 * err['mape']:.2f}% | {100 * err['max']:.2f}% |")
        lines += [
            "",
            f"bidirectional factors: {c.get('bidirectional')}; engine-loop overhead: {c.get('loop_overhead')}",
            "",
        ]
    val = _load(res / "validate" / "validation.json")
    if val:
        out["validation"] = val
        lines += [
            "## Validation (simulator with the calibrated profile vs real)",
            "",
            f"policy {val['policy']}, {val['requests']} requests, makespan real {val['makespan_s_real']:.3f}s "
            f"sim {val['makespan_s_sim']:.3f}s",
            "",
            "| quantity | MAPE | max rel. error |",
            "|---|---|---|",
        ]
        for key in ("request_latency_s", "request_ttft_s", "workflow_latency_s"):
            lines.append(f"| {key} | {100 * val[key]['mape']:.2f}% | {100 * val[key]['max_rel_err']:.2f}% |")
        lines.append("")
        for key in ("request_hit_gpu_tokens", "request_loaded_cpu_tokens", "request_recomputed_tokens"):
            v = val[key]
            lines.append(
                f"- {key}: exact match {100 * v['exact_match']:.1f}%, total real {v['total_real']} sim {v['total_sim']}"
            )
        lines.append("")
    steps = res / "steps.txt"
    if steps.exists():
        lines += ["## Steps (name, exit code, seconds)", "", "```", steps.read_text().strip(), "```", ""]
    (res / "summary.md").write_text("\n".join(lines))
    (res / "summary.json").write_text(json.dumps(out, indent=2, default=str))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
