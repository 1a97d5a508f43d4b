"""One simulation: config mappings in, per-request rows and a summary out (no Hydra, no files).

``simulate(cfg)`` takes the composed config as plain dicts (``hardware``, ``model``, ``workload``,
``policy``, ``cache``, ``engine``, ``sim``, ``seed``) so tests and the CLI share one path. Setup
(profile, cost model, trace, capacities, engine) is ``harness.setup``'s, shared with the other
backends; this module adds SimPy time.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib.resources import files
from typing import Any

import simpy
import yaml

from harness.errors import SetupError
from harness.progress import progress
from harness.rows import workflow_rows
from harness.setup import build_core, build_trace, gain_s_per_token, prepare
from harness.summary import RunIdentity, summarize
from kvflow.workflow import NextUseFeed
from sim.driver import WorkflowDriver
from sim.engine_loop import EngineLoop
from sim.metrics import counters
from sim.pcie import PCIeLink
from traces.table_run import table_run

__all__ = ["SimInputError", "SimResult", "build_trace", "gain_s_per_token", "load_conf", "simulate"]

SimInputError = SetupError  # the one setup error class; the old name stays for callers


@dataclass
class SimResult:
    summary: dict[str, Any]
    rows: list[dict[str, Any]]
    workflow_rows: list[dict[str, Any]]
    wall_s: float
    timeline: list[tuple[str, float, float, str]] = field(default_factory=list)  # resource, start, end, label
    replica_rows: list[dict[str, Any]] = field(default_factory=list)  # a fleet's replicas.csv (sim.fleet)


def load_conf(group: str, name: str) -> dict[str, Any]:
    """One option of a config group, ``conf/<group>/<name>.yaml``, as a plain dict (scripts, tests)."""
    return yaml.safe_load((files("conf") / group / f"{name}.yaml").read_text())


def simulate(cfg: Mapping[str, Any], trace: Any | None = None) -> SimResult:
    """Run one policy on one workload; deterministic for a given config and seed.

    Python's cyclic garbage collector is paused for the run: it repeatedly scanned the growing tree
    and event queue (~13% of the time) while evicted nodes are freed by reference counting anyway."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        if int((cfg.get("cluster") or {}).get("replicas", 1)) > 1:  # one replica keeps this module's path
            from sim.fleet import simulate_fleet

            return simulate_fleet(cfg, trace)
        return _simulate(cfg, trace)
    finally:
        if was_enabled:
            gc.enable()


def hints_source(policy_cfg: Mapping[str, Any], trace: Any) -> str:
    """Whether workflow hints existed: a declared step graph (used unless ``policy.hints`` is false),
    one the policy learns (``infer_steps``), or none (a workflow-aware policy then ranks like LRU)."""
    if policy_cfg.get("hints", True) and any(wf.graph for wf in trace.workflows.values()):
        return "declared"
    return "inferred" if policy_cfg.get("infer_steps") else "none"


def _simulate(cfg: Mapping[str, Any], trace: Any | None) -> SimResult:
    wall0 = time.perf_counter()
    setup = prepare(cfg, trace)
    trace = setup.trace
    engine = build_core(cfg, setup, free_ops=False)  # memory is counted in tokens: nothing to free per node
    engine.cache.tree.compact_run = table_run  # a cached stream is kept as a table window, not a copy
    cache, policy = engine.cache, engine.cache.policy
    policy_cfg, sim_cfg = cfg["policy"], cfg.get("sim") or {}
    env = simpy.Environment()
    timeline: list[tuple[str, float, float, str]] | None = [] if sim_cfg.get("timeline", False) else None
    pcie = PCIeLink(
        env, setup.cost, bidirectional_penalty=bool(sim_cfg.get("bidirectional_penalty", True)), timeline=timeline
    )  # GPU compute and PCIe copies share one list, for Gantt plots
    feed = NextUseFeed(trace, cache) if policy.reads_future else None
    driver = WorkflowDriver(
        env,
        trace,
        engine,
        hints=bool(policy_cfg.get("hints", True)),
        on_submit=feed.on_submit if feed else None,
        rule=setup.release,
    )
    bar = progress(total=len(trace.invocations), desc=str(policy_cfg.get("name", "sim")), unit="req")

    def finished(reqs: list[Any]) -> None:
        bar.update(len(reqs))
        driver.on_finished(reqs)

    loop = EngineLoop(
        env,
        engine,
        setup.cost,
        pcie,
        on_finished=finished,
        timeline=timeline,
        after_iteration=cache.check_invariants if sim_cfg.get("check_invariants") else None,
    )
    driver.start(loop.poke)
    env.process(loop.run())
    run_until_done(env, driver, bar)
    rows = driver.rows()
    wf_rows = workflow_rows(rows)
    run = counters(setup, loop, pcie, cache, env.now, hints_source(policy_cfg, trace))
    run.wall_s = time.perf_counter() - wall0
    summary = summarize(RunIdentity.from_config("sim", cfg), run, rows, wf_rows)
    return SimResult(summary, rows, wf_rows, run.wall_s, sorted(timeline or [], key=lambda r: (r[1], r[0])))


def run_until_done(env: simpy.Environment, driver: WorkflowDriver, bar: Any) -> None:
    """Run until every invocation finished, then close the progress bar; an event queue that runs dry
    first (nothing can ever run again) is a one-line SetupError naming when and how many are left."""
    try:
        env.run(until=driver.all_done)
    except RuntimeError as exc:  # the event queue ran dry: nothing can ever run again
        raise SetupError(
            f"simulation stalled at t={env.now:.3f}s with {driver.pending} invocations unfinished ({exc})"
        ) from None
    finally:
        bar.close()
