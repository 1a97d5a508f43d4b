"""Cost of ``cost_model=aiconfigurator`` per simulated request, next to the built-in model.

Runs kvflow on paper_single's setting (10 sequential agents, 8,192 fixed tokens, 256 output tokens)
and on a coding-agent trace (2 Weka sessions, when the shared data is there) on ``h100_sglang``,
once per cost model, with the trace built beforehand. Needs the aic extra and the project's deps
in one environment (``.ci/aic_stage.sh`` builds one).

Usage: python benchmarks/aic_speed.py
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
WEKA = ROOT.parent / "shared" / "data" / "weka"
PAPER_SINGLE = [
    "workload=sequential",
    "workload.params.fixed_tokens=8192",
    "workload.params.output_tokens=256",
    "cache.cpu_capacity_tokens=1048576",
    "engine.max_running_requests=1",
]


def compose(overrides: list[str]) -> dict[str, Any]:
    from hydra import compose as hydra_compose
    from hydra import initialize_config_module
    from omegaconf import OmegaConf

    with initialize_config_module(config_module="conf", version_base=None):
        cfg = OmegaConf.to_container(hydra_compose(config_name="config", overrides=overrides), resolve=True)
    assert isinstance(cfg, dict)
    cfg.pop("hydra", None)
    return cfg


def workloads(tmp: Path) -> dict[str, list[str]]:
    out = {"paper_single": PAPER_SINGLE}
    files = [WEKA / n for n in ("trace_0010.json.gz", "trace_0254.json.gz")]
    if all(f.exists() for f in files):
        from traces.cli import main as trace_main

        trace_main(["import", "weka", *map(str, files), "-o", str(tmp / "weka.jsonl")])
        out["weka x2"] = ["workload=trace", f"workload.trace={tmp / 'weka.jsonl'}"]
    return out


def run(overrides: list[str]) -> tuple[float, float, int, int]:
    """(setup s, simulate s, requests, aiconfigurator calls) of one kvflow run; calls count the
    database queries, memo hits excluded."""
    from harness import aic_cost
    from harness.setup import build_trace, prepare
    from sim.runner import simulate

    cfg = compose(["policy=kvflow", "model=llama-3.1-8b", "hardware=h100_sglang", "sim.timeline=false", *overrides])
    trace = build_trace(cfg["workload"], int(cfg["seed"]))
    t0 = time.perf_counter()
    prepare(cfg, trace)  # cost model construction (the database compile for aiconfigurator)
    setup_s = time.perf_counter() - t0
    calls = 0
    perf_model = aic_cost.perf_model

    class Counted:
        def __init__(self, inner: Any) -> None:
            self.inner = inner

        def estimate_forward_pass_time_ms(self, req: Any) -> float:
            nonlocal calls
            calls += 1
            return self.inner.estimate_forward_pass_time_ms(req)

    aic_cost.perf_model = lambda *a: Counted(perf_model(*a))  # type: ignore[assignment]
    try:
        t1 = time.perf_counter()
        res = simulate(cfg, trace=trace)
        sim_s = time.perf_counter() - t1
    finally:
        aic_cost.perf_model = perf_model
    assert res.summary["requests"] > 0
    return setup_s, sim_s, len(trace.invocations), calls


def main() -> int:
    print("| workload | cost model | requests | setup s | simulate s | us / request | database calls / request |")
    print("|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for name, overrides in workloads(Path(tmp)).items():
            for kind in ("builtin", "aiconfigurator"):
                setup_s, sim_s, reqs, calls = run([*overrides, f"cost_model={kind}"])
                print(
                    f"| {name} | {kind} | {reqs} | {setup_s:.3f} | {sim_s:.2f} | {1e6 * sim_s / reqs:,.0f} "
                    f"| {calls / reqs:,.1f} |"
                )
    return 0


if __name__ == "__main__":
    sys.exit(main())
