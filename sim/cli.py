"""``kvflow-sim``: the Hydra front end of the simulator (conf/config.yaml).

With no policy selected it runs every policy in ``compare`` on the same trace and prints KVFlow's
speedup in end-to-end workflow latency; with ``policy=NAME`` it runs one. Each run writes its
resolved ``config.yaml``, ``requests.csv`` and ``summary.json`` into the Hydra run directory
(one sub-directory per policy in compare mode) with the run-directory contract's writer
(``harness.run_dir``); the report of a single run is the Hydra callback ``analysis.callbacks.RunReport``
(conf/config.yaml), so this module never imports ``analysis``. Bad input: one line on stderr, exit 2.
"""

from __future__ import annotations

import json
import os
import re
import sys
from importlib.resources import files
from pathlib import Path
from typing import Any, NoReturn

import hydra
import yaml
from hydra.core.hydra_config import HydraConfig
from hydra.errors import HydraException
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from harness import interrupt
from harness.config_schema import validate_config
from harness.errors import SetupError
from harness.interrupt import EXIT_INTERRUPTED
from harness.run_dir import (
    complete_runs,
    csv_text,
    lock_dir,
    lock_total,
    should_skip,
    unlock_dir,
    with_config_hash,
    write_atomic,
    write_json_atomic,
    write_run_dir,
)
from harness.setup import build_trace
from sim.report import header, speedups, table
from sim.runner import simulate

try:
    from traces import TraceError
except ImportError:  # pragma: no cover
    from traces.schema import TraceError

_PROGRESS: dict[str, Any] = {"root": None, "total": None, "multirun": False}  # what the Ctrl-C line counts
REPLICAS_CSV = "replicas.csv"  # per-replica rows of a fleet run, beside the run-directory contract's files
USER_ERRORS = (SetupError, HydraException, OmegaConfBaseException, TraceError, ValueError, OSError)


def _policy_config(name: str) -> dict[str, Any]:
    names = sorted(p.name[:-5] for p in (files("conf") / "policy").iterdir() if p.name.endswith(".yaml"))
    if name not in names:
        raise SetupError(f"unknown policy {name!r} in compare; valid: {', '.join(names)}")
    return OmegaConf.to_container(OmegaConf.load(str(files("conf") / "policy" / f"{name}.yaml")), resolve=True)


def _run_one(cfg: dict[str, Any], run_dir: Path, trace: Any, write_csv: bool) -> dict[str, Any]:
    stored = {k: v for k, v in cfg.items() if k not in ("params", "experiment_name")}
    if int((stored.get("cluster") or {}).get("replicas", 1)) == 1:
        stored.pop("cluster", None)  # one engine: the router changes nothing, nor the config hash of old runs
    if should_skip(run_dir, stored, force=bool(cfg.get("force", False))):  # resumable sweeps
        print(f"kvflow-sim: {run_dir}: complete, skipped (force=true recomputes)", file=sys.stderr)
        return json.loads((run_dir / "summary.json").read_text())
    result = simulate(cfg, trace=trace)
    config_yaml = OmegaConf.to_yaml(stored)
    if result.replica_rows:  # a fleet (docs/fleet.md): before summary.json, which marks the run complete
        write_atomic(run_dir / REPLICAS_CSV, csv_text(result.replica_rows, list(result.replica_rows[0])))
    write_run_dir(
        run_dir,
        with_config_hash(result.summary, stored),
        result.rows,
        result.workflow_rows,
        config_yaml,
        requests_csv=write_csv,
        timeline=result.timeline,
    )
    return result.summary


def _hydra_meta() -> tuple[str | None, dict[str, Any]]:
    """(experiment preset, swept parameters) from Hydra: the overrides minus policy/compare (each
    run is one policy), output/force/hydra (they change nothing simulated) and the preset name."""
    hc = HydraConfig.get()
    params: dict[str, Any] = {}
    for item in hc.overrides.task:
        key, _, value = item.lstrip("+~").partition("=")
        if not key.startswith(("policy", "output.", "hydra", "experiment", "compare", "force")):
            params[key] = yaml.safe_load(value) if value else value
    return hc.runtime.choices.get("experiment"), params


def run(
    cfg: DictConfig, run_dir: Path, experiment: str | None = None, params: dict[str, Any] | None = None
) -> dict[str, dict[str, Any]]:
    """Run the configured policy (or the ``compare`` list) and write outputs under ``run_dir``."""
    plain: dict[str, Any] = OmegaConf.to_container(cfg, resolve=True)  # type: ignore[assignment]
    plain.pop("hydra", None)
    validate_config(plain)
    plain["experiment_name"], plain["params"] = experiment, dict(params or {})
    trace = build_trace(plain["workload"], int(plain.get("seed", 0)))
    write_csv = bool(plain.get("output", {}).get("requests_csv", True))
    if plain.get("policy"):
        runs = {plain["policy"]["name"]: (plain, run_dir)}
    else:
        runs = {name: ({**plain, "policy": _policy_config(name)}, run_dir / name) for name in plain["compare"]}
    _note_progress(run_dir, len(runs))
    lock_dir(run_dir, "kvflow-sim run", other_hosts_hold=False)  # two runs writing into one dir would mix their files
    try:
        summaries = {name: _run_one(c, d, trace, write_csv) for name, (c, d) in runs.items()}
    finally:
        unlock_dir(run_dir)
    if len(summaries) > 1:
        comparison = {
            "speedup_of_kvflow": speedups(summaries),
            "workflow_latency_mean_s": {n: s["workflow_latency_mean_s"] for n, s in summaries.items()},
        }
        write_json_atomic(run_dir / "comparison.json", comparison)
    if plain.get("output", {}).get("table", True):
        _print(summaries, run_dir)
    return summaries


def _print(summaries: dict[str, dict[str, Any]], run_dir: Path) -> None:
    first = next(iter(summaries.values()))
    print(header(first))
    print(table(list(summaries.values())))
    for other, x in speedups(summaries).items():
        print(f"KVFlow speedup over {other}: {x:.2f}x (end-to-end workflow latency, mean)")
    sim_s = sum(s["makespan_s"] for s in summaries.values())
    wall_s = sum(s["wall_s"] for s in summaries.values())
    print(
        f"simulated {sim_s:.1f} s in {wall_s:.2f} s wall ({sim_s / max(wall_s, 1e-9):,.0f}x real time); "
        f"outputs in {run_dir}"
    )


@hydra.main(version_base=None, config_path="../conf", config_name="config")
def _app(cfg: DictConfig) -> None:
    try:
        experiment, params = _hydra_meta()
        run_dir = Path(HydraConfig.get().runtime.output_dir)
        run(cfg, run_dir, experiment, params)  # the report: analysis.callbacks.RunReport (conf/config.yaml)
    except USER_ERRORS as exc:
        _fail(exc)


def one_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    m = re.search(r"Could not find '([^/']+)/([^']+)'.*?Available options in '[^']+':(.*)", text, re.S)
    if m:
        options = m.group(3).split("Config search path")[0].split()
        return f"unknown {m.group(1)} {m.group(2)!r}; valid: {', '.join(options)}"
    return " ".join(text.split())


LAUNCHER_MODULES = ("hydra_plugins.", "submitit.")  # a launcher's own set-up failures, e.g. no ``srun``


def _from_launcher(exc: BaseException) -> bool:
    """``exc`` was raised inside a launcher plugin (the innermost frame is a launcher module): an
    environment problem such as ``hydra/launcher=submitit_slurm`` on a machine without Slurm, not a
    kvflow bug, so it is one line. Errors of the jobs themselves come back through the jobs' own
    logs, and Ray's are left alone (its errors wrap the remote job's traceback)."""
    tb = exc.__traceback__
    if tb is None:
        return False
    while tb.tb_next is not None:
        tb = tb.tb_next
    return str(tb.tb_frame.f_globals.get("__name__", "")).startswith(LAUNCHER_MODULES)


def _fail(exc: BaseException) -> None:
    if interrupt.received():  # Ctrl-C that a library turned into its own error (harness/interrupt.py)
        raise KeyboardInterrupt from exc
    print(f"kvflow-sim: error: {one_line(exc)}", file=sys.stderr)
    sys.exit(2)


def _note_progress(run_dir: Path, runs: int) -> None:
    """Remember what a Ctrl-C should count: this run's dir, or the whole sweep's when in one."""
    _PROGRESS.update(root=run_dir, total=runs, multirun=False)
    if HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN:
        sweep_dir = Path(HydraConfig.get().sweep.dir)
        _PROGRESS.update(root=sweep_dir, total=lock_total(sweep_dir), multirun=True)


def _interrupted_line(argv: list[str]) -> str:
    """``interrupted; N of M runs complete; rerun the same command to resume`` for the sweep (its
    lock holds the total) or the run that was going on."""
    root, total, multirun = _PROGRESS["root"], _PROGRESS["total"], _PROGRESS["multirun"]
    if root is None:
        return "interrupted; no run had started; rerun the same command"
    done = complete_runs(Path(root))
    pinned = any(a.startswith("hydra.sweep.dir=" if multirun else "hydra.run.dir=") for a in argv)
    where = "" if pinned else f" with {'hydra.sweep.dir' if multirun else 'hydra.run.dir'}={root}"
    of = f" of {total}" if total is not None else ""
    return f"interrupted; {done}{of} runs complete ({root}); rerun the same command{where} to resume"


def _interrupted() -> NoReturn:
    print(_interrupted_line(sys.argv[1:]), file=sys.stderr)
    sys.exit(EXIT_INTERRUPTED)


def main() -> None:
    """Console entry point: Hydra errors are re-raised (HYDRA_FULL_ERROR) and shown as one line."""
    old = os.environ.get("HYDRA_FULL_ERROR")
    os.environ["HYDRA_FULL_ERROR"] = "1"
    interrupt.watch()
    try:
        _app()
    except KeyboardInterrupt:
        _interrupted()
    except Exception as exc:
        if interrupt.received():  # whatever a library made of the Ctrl-C (harness/interrupt.py)
            _interrupted()
        if isinstance(exc, USER_ERRORS):
            _fail(exc)
        if _from_launcher(exc):
            _fail(SetupError(f"the Hydra launcher could not start the sweep (docs/sweeps.md): {one_line(exc)}"))
        raise
    finally:
        if old is None:
            os.environ.pop("HYDRA_FULL_ERROR", None)
        else:
            os.environ["HYDRA_FULL_ERROR"] = old


if __name__ == "__main__":
    main()
