"""One simulation: config mappings in, per-request rows and a summary out (no Hydra, no files).

``simulate(cfg)`` takes the composed config as plain dicts (``hardware``, ``model``, ``workload``,
``policy``, ``cache``, ``engine``, ``sim``, ``seed``) so tests and the CLI share one path.
"""

from __future__ import annotations

import gc
import time
from pathlib import Path
from collections.abc import Mapping
from importlib.resources import files
from dataclasses import dataclass, field
from typing import Any

import simpy
import yaml

from analysis.progress import progress
from kvflow.build import build_engine
from kvflow.model_spec import load_model_spec
from kvflow.workflow import OracleFeed, request_rows, workflow_rows
from sim.cost_model import CostModel
from sim.driver import WorkflowDriver
from sim.engine_loop import EngineLoop
from sim.metrics import summarize
from sim.pcie import PCIeLink

try:
    from traces import generate, load_trace
except ImportError:  # traces/__init__ does not re-export yet
    from traces.generators import generate
    from traces.io import load_trace



class SimInputError(ValueError):
    """Bad input; ``str()`` is the one line shown to the user."""


@dataclass
class SimResult:
    summary: dict[str, Any]
    rows: list[dict[str, Any]]
    workflow_rows: list[dict[str, Any]]
    wall_s: float
    timeline: list[tuple[str, float, float, str]] = field(default_factory=list)  # resource, start, end, label


def load_conf(group: str, name: str) -> dict[str, Any]:
    """One option of a config group, ``conf/<group>/<name>.yaml``, as a plain dict (scripts, tests)."""
    return yaml.safe_load((files("conf") / group / f"{name}.yaml").read_text())


def build_trace(workload: Mapping[str, Any], seed: int) -> Any:
    """A trace file (``workload.trace``), raw logs imported on the fly (``workload.import_format`` +
    ``workload.import_from``: files or folders), or a generated workload (``generator`` + ``params``)."""
    if workload.get("import_format"):
        return _import(str(workload["import_format"]), str(workload.get("import_from") or ""), seed)
    if workload.get("trace"):
        return load_trace(str(workload["trace"]))
    params = dict(workload.get("params") or {})
    params.setdefault("seed", seed)
    try:
        return generate(str(workload["generator"]), **params)
    except ValueError as exc:
        raise SimInputError(f"workload {workload.get('name')!r}: {exc}") from None


def _import(fmt: str, source: str, seed: int) -> Any:
    from traces.importers import import_trace

    paths: list[str] = []
    for part in filter(None, source.split(",")):
        path = Path(part)
        if path.is_dir():
            paths += sorted(str(p) for p in path.iterdir() if p.name.endswith((".log.gz", ".log", ".jsonl", ".jsonl.gz")))
        elif path.exists():
            paths.append(str(path))
        else:
            raise SimInputError(f"workload.import_from: no such file or folder: {part}")
    if not paths:
        raise SimInputError(f"workload.import_from: no {fmt} logs found in {source!r}")
    try:
        return import_trace(fmt, paths, seed=seed)
    except ValueError as exc:
        raise SimInputError(str(exc)) from None


def _capacities(cfg: Mapping[str, Any], cost: CostModel, trace: Any) -> tuple[int, int]:
    cache_cfg = cfg.get("cache") or {}
    policy = cfg["policy"]
    gpu = cache_cfg.get("gpu_capacity_tokens")
    per_client = cache_cfg.get("gpu_tokens_per_client")
    if gpu is None and per_client:
        gpu = int(per_client) * len({inv.client_id for inv in trace.invocations})
    gpu = int(gpu) if gpu is not None else cost.gpu_kv_capacity_tokens()
    ratio = float(policy.get("cpu_capacity_ratio", 0.0))
    cpu = cache_cfg.get("cpu_capacity_tokens")
    cpu = 0 if ratio <= 0 else (int(cpu) if cpu is not None else int(ratio * gpu))
    return gpu, cpu


def gain_s_per_token(cost: CostModel, context_tokens: int = 2048) -> float:
    """Seconds saved per cached token: recomputing it (one token of a prefill chunk at a typical
    context) minus reloading it over PCIe. Negative when reloading is slower than recomputing."""
    chunk = 512
    recompute = (cost.prefill_time_s([(chunk, context_tokens)]) - cost.prefill_time_s([(1, context_tokens)])) / (chunk - 1)
    reload = cost.transfer_time_s(cost.model.kv_bytes_per_token * chunk, "h2d") / chunk
    return recompute - reload


def _check_fits(trace: Any, gpu_tokens: int) -> None:
    for inv in trace.invocations:
        need = trace.prompt_len(inv) + inv.output_tokens
        if need > gpu_tokens:
            raise SimInputError(
                f"invocation {inv.id!r} needs {need} KV tokens (prompt + output) but the GPU KV pool holds "
                f"{gpu_tokens}: it can never run (raise cache.gpu_capacity_tokens or use a bigger GPU)"
            )


def simulate(cfg: Mapping[str, Any], trace: Any | None = None) -> SimResult:
    """Run one policy on one workload; deterministic for a given config and seed.

    Python's cyclic garbage collector is paused for the run: it repeatedly scanned the growing tree
    and event queue (~13% of the time) while evicted nodes are freed by reference counting anyway."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        return _simulate(cfg, trace)
    finally:
        if was_enabled:
            gc.enable()


def _simulate(cfg: Mapping[str, Any], trace: Any | None) -> SimResult:
    wall0 = time.perf_counter()
    seed = int(cfg.get("seed", 0))
    model = load_model_spec(cfg["model"])
    cost = CostModel.from_config(cfg["hardware"], model)
    trace = trace if trace is not None else build_trace(cfg["workload"], seed)
    gpu_tokens, cpu_tokens = _capacities(cfg, cost, trace)
    _check_fits(trace, gpu_tokens)
    policy_cfg = cfg["policy"]
    engine_cfg = cfg.get("engine") or {}
    engine = build_engine(
        policy_cfg, gpu_tokens=gpu_tokens, cpu_tokens=cpu_tokens, kv_bytes_per_token=model.kv_bytes_per_token,
        chunk_tokens=int(engine_cfg.get("chunk_tokens") or cfg["hardware"]["chunked_prefill_tokens"]),
        h2d_gbps=cost.transfer_gbps("h2d"), page_size=int((cfg.get("cache") or {}).get("page_size", 1)),
        max_running=engine_cfg.get("max_running_requests"), gain_s_per_token=lambda: gain_s_per_token(cost),
        free_ops=False,  # memory is counted in tokens: nothing to free per node
    )
    cache, policy = engine.cache, engine.cache.policy
    sim_cfg = cfg.get("sim") or {}
    env = simpy.Environment()
    pcie = PCIeLink(env, cost, bidirectional_penalty=bool(sim_cfg.get("bidirectional_penalty", True)))
    driver_box: list[WorkflowDriver] = []
    bar = progress(total=len(trace.invocations), desc=str(policy_cfg.get("name", "sim")), unit="req")

    def finished(reqs: list[Any]) -> None:
        bar.update(len(reqs))
        driver_box[0].on_finished(reqs)

    loop = EngineLoop(env, engine, cost, pcie, on_finished=finished)
    if sim_cfg.get("timeline", False):  # GPU compute and PCIe copies, for Gantt plots
        loop.timeline = pcie.timeline = []
    if sim_cfg.get("check_invariants"):
        loop.after_iteration = cache.check_invariants
    feed = OracleFeed(trace, cache) if hasattr(policy, "set_next_use") else None

    def poke() -> None:
        loop.start_ops()
        loop.wake()

    driver = WorkflowDriver(
        env, trace, engine, poke, hints=bool(policy_cfg.get("hints", True)),
        on_submit=feed.on_submit if feed else None,
    )
    driver_box.append(driver)
    driver.start()
    env.process(loop.run())
    try:
        env.run(until=driver.all_done)
    except RuntimeError as exc:  # the event queue ran dry: nothing can ever run again
        raise SimInputError(f"simulation stalled at t={env.now:.3f}s with {driver.pending} invocations "
                            f"unfinished ({exc})") from None
    finally:
        bar.close()
    rows = request_rows(trace, driver)
    wf_rows = workflow_rows(rows)
    summary = summarize(cfg, trace, driver, loop, pcie, cache, gpu_tokens, cpu_tokens, env.now, rows, wf_rows)
    wall_s = time.perf_counter() - wall0
    summary["wall_s"] = wall_s
    timeline = sorted(loop.timeline or [], key=lambda r: (r[1], r[0]))  # one list shared with pcie
    return SimResult(summary, rows, wf_rows, wall_s, timeline)
