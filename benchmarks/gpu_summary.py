"""Summarise a gpu_check.sh results folder into summary.md (and summary.json).

    python benchmarks/gpu_summary.py RESULTS_DIR

Reads engine_bench/engine_profile.yaml (``python -m real.engine_bench``), the run directories under
runs/fixed<N>/<policy>/summary.json, calibration/calibration.json and validate/validation.json;
writes a markdown page with the measured data-path rates next to the sourced ones of conf/engine
and conf/hardware/h200.yaml (and what they make of one load), the overlap and CUDA-graph figures,
workflow latency per policy, KVFlow's speedups, the calibration fit errors and the sim-vs-real errors.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # harness (engine models, cost model) when run as a script

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


ENGINE_ROWS = (  # (profile key, layout or None, the conf/engine file that holds the sourced value)
    ("host_gather_gbps", None, "sglang_0.4"),
    ("pageable_h2d_gbps", None, "sglang_0.4"),
    ("pageable_d2h_gbps", None, "sglang_0.4"),
    ("kernel_gbps", "layer_first", "sglang_0.5"),
    ("kernel_gbps", "page_first", "sglang_0.5"),
    ("direct_gbps", None, "sglang_0.5"),
    ("direct_copy_latency_s", None, "sglang_0.5"),
)
HARDWARE_ROWS = ("pcie_h2d_gbps", "pcie_d2h_gbps", "bidirectional_h2d_factor", "bidirectional_d2h_factor")


def _conf_values(path: Path) -> tuple[dict, dict[str, str]]:
    """A conf YAML's values and each key's trailing comment (its source)."""
    text = path.read_text()
    comments = {}
    for line in text.splitlines():
        m = re.match(r"\s*(\w+):[^#]*#\s*(.*)", line)
        if m:
            comments[m.group(1)] = m.group(2).strip()
    return yaml.safe_load(text), comments


def _fmt(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return "-" if value is None else str(value)
    if isinstance(value, (int, float)):
        return f"{value:.3g}"
    return str(value)


def _rate_rows(prof: dict) -> list[str]:
    lines = ["| parameter | measured | conf/engine | source of the conf value |", "|---|---|---|---|"]
    for key, layout, engine in ENGINE_ROWS:
        conf, comments = _conf_values(REPO / "conf" / "engine" / f"{engine}.yaml")
        mine, theirs = prof.get(key), conf.get(key)
        if layout:
            mine, theirs = (mine or {}).get(layout), (theirs or {}).get(layout)
        name = f"{key}.{layout}" if layout else key
        source = comments.get(layout or key, "")[:110]
        lines.append(f"| {name} | {_fmt(mine)} | {_fmt(theirs)} ({engine}) | {source} |")
    hw, comments = _conf_values(REPO / "conf" / "hardware" / "h200.yaml")
    for key in HARDWARE_ROWS:
        mine = (prof.get("hardware") or {}).get(key)
        lines.append(f"| {key} | {_fmt(mine)} | {_fmt(hw.get(key))} (hardware h200) | {comments.get(key, '')[:110]} |")
    return lines


def _load_rows(path: Path) -> list[str]:
    """What the rates make of one 8192-token Llama-3.1-8B load on the h200 link, per engine."""
    try:
        from harness.cost_model import CostModel
        from harness.engines import conf_engine, load_engine
        from kvflow.model_spec import load_model_spec
    except ImportError as exc:
        return [f"(load times not computed: {exc})"]
    spec, hw = load_model_spec("llama-3.1-8b"), yaml.safe_load((REPO / "conf/hardware/h200.yaml").read_text())
    nbytes = 8192 * spec.kv_bytes_per_token
    lines = ["| engine | conf rates [s] | measured rates [s] |", "|---|---|---|"]
    for label, name, extra in (
        ("sglang_0.4", "sglang_0.4", {}),
        ("sglang_0.5 kernel", "sglang_0.5", {}),
        ("sglang_0.5 direct, page 1", "sglang_0.5", {"io_backend": "direct"}),
        ("sglang_0.5 direct, page 64", "sglang_0.5", {"io_backend": "direct", "page_size": 64}),
    ):
        cells = []
        for measured in (None, str(path)):
            cfg = {**conf_engine(name), **extra, **({"measured": measured} if measured else {})}
            try:
                cost = CostModel.from_config(hw, spec, load_engine(cfg))
                cells.append(f"{cost.transfer_time_s(nbytes, 'h2d'):.4f}")
            except (ValueError, KeyError) as exc:
                cells.append(f"error: {exc}")
        lines.append(f"| {label} | {cells[0]} | {cells[1]} |")
    return lines


def _overlap_rows(raw: dict) -> list[str]:
    points = (raw.get("overlap") or {}).get("points") or []
    if not points:
        return []
    lines = [
        "| prefill tokens | compute [ms] | load [ms] | compute slowdown while copying | H2D factor while computing "
        "| layer-waits-copy measured [ms] | max(C, load) + load/L [ms] | measured / model |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for p in points:
        lines.append(
            f"| {p['compute_tokens']} | {1e3 * p['compute_s']:.2f} | {1e3 * p['load_s']:.2f} "
            f"| {p['compute_slowdown_while_copying']:.3f} | {p['h2d_factor_while_computing']:.3f} "
            f"| {1e3 * p['overlap_measured_s']:.2f} | {1e3 * p['overlap_model_s']:.2f} "
            f"| {p['overlap_measured_over_model']:.3f} |"
        )
    return [*lines, ""]


def _raw_lines(raw: dict) -> list[str]:
    lines: list[str] = []
    direct = (raw.get("direct_05") or {}).get("points") or []
    if direct:
        lines += ["| direct copy, page tokens | copies | GB/s |", "|---|---|---|"]
        lines += [f"| {p['page_tokens']} | {p['copies']} | {p['gbps']:.3g} |" for p in direct if p.get("gbps")]
        lines.append("")
    graph = raw.get("graph_decode") or {}
    if "eager_step_s" in graph:
        g = graph.get("graph_step_s")
        lines += [
            f"decode step, {graph['model']} shapes, batch 1, context {graph['context_tokens']}: eager "
            f"{1e3 * graph['eager_step_s']:.2f} ms, CUDA graph "
            + (f"{1e3 * g:.2f} ms ({graph['eager_step_s'] / g:.2f}x)" if g else str(graph.get("graph")))
            + _predicted_decode(graph),
            "",
        ]
    return lines


def _predicted_decode(graph: dict) -> str:
    """The h200 spec profile's decode time for the same step (SGLang's CI bound: < 7.4 ms for 8B)."""
    try:
        from harness.cost_model import CostModel
        from kvflow.model_spec import load_model_spec

        hw = yaml.safe_load((REPO / "conf/hardware/h200.yaml").read_text())
        cost = CostModel.from_config(hw, load_model_spec(graph["model"]))
        return f"; cost model (hardware h200) {1e3 * cost.decode_time_s([graph['context_tokens']]):.2f} ms"
    except (ImportError, ValueError, KeyError, OSError) as exc:
        return f"; cost model: not computed ({exc})"


def engine_section(res: Path) -> tuple[list[str], dict | None]:
    """The engine profile's rates next to the sourced ones, and its raw figures."""
    path = res / "engine_bench" / "engine_profile.yaml"
    if not path.exists():
        return [], None
    prof = yaml.safe_load(path.read_text()) or {}
    raw = prof.get("raw") or {}
    parts = ", ".join(f"{k}: {v}" for k, v in (prof.get("parts") or {}).items())
    lines = [
        "## Engine data paths (python -m real.engine_bench)",
        "",
        f"device {prof.get('device_name')}, torch {prof.get('torch')}, dry run {prof.get('dry_run')}; parts: {parts}",
        "",
        *_rate_rows(prof),
        "",
        "One 8192-token Llama-3.1-8B load (1 GiB) on the h200 link, conf vs measured rates "
        f"(`engine.measured={path.name}`):",
        "",
        *_load_rows(path),
        "",
        *_overlap_rows(raw),
        *_raw_lines(raw),
    ]
    return lines, prof


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
    engine_lines, profile = engine_section(res)
    lines += engine_lines
    table, data = runs_table(res)
    lines += ["## Runs", ""] + (table or ["(no runs)", ""])
    out: dict = {"runs": data, "engine_profile": profile}
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
