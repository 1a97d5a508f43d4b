"""Hydra callbacks of ``kvflow-sim``, enabled in conf/config.yaml under ``hydra.callbacks``.

``RunReport`` writes the report of a single run when its job ends, so the simulator never imports
``analysis``. The sweep callbacks run in the launching process only (``on_multirun_start``/
``on_multirun_end``) and look at the shared sweep dir, so they behave the same with the basic,
joblib, Ray and Submitit launchers.
"""

from __future__ import annotations

import sys
import threading
from pathlib import Path
from typing import Any

from hydra.core.utils import JobReturn, JobStatus
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from tqdm.auto import tqdm

from analysis.progress import count_jobs, enabled, finished_jobs, progress
from analysis.runs import RunError
from harness.run_dir import lock_dir, unlock_dir

POLL_S = 0.5


class SweepProgress(Callback):
    """One bar over the sweep's jobs; ``hydra.callbacks.progress._target_: analysis.callbacks.SweepProgress``."""

    def __init__(self) -> None:
        self._bar: tqdm | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {}  # launchers pickle callbacks into job processes; the bar lives in the launcher only

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__()  # type: ignore[misc]

    def on_multirun_start(self, config: Any, **kwargs: Any) -> None:
        if not enabled():
            return
        hydra_cfg = config.hydra
        params = hydra_cfg.sweeper.get("params") if "sweeper" in hydra_cfg else None
        total = count_jobs(list(hydra_cfg.overrides.task), dict(params) if params else None)
        sweep_dir = Path(str(hydra_cfg.sweep.dir))
        self._bar = progress(total=total, desc="sweep", unit="run", leave=True, delay=0)
        self._thread = threading.Thread(target=self._watch, args=(sweep_dir, total), daemon=True)
        self._thread.start()

    def _watch(self, sweep_dir: Path, total: int | None) -> None:
        while not self._stop.wait(POLL_S):
            self._refresh(sweep_dir, total)

    def _refresh(self, sweep_dir: Path, total: int | None) -> None:
        if self._bar is not None:
            done = finished_jobs(sweep_dir, total)
            self._bar.update(done - self._bar.n)

    def on_multirun_end(self, config: Any, **kwargs: Any) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2)
        if self._bar is not None:
            self._refresh(Path(str(config.hydra.sweep.dir)), self._bar.total)
            self._bar.close()


class SweepLock(Callback):
    """Locks the sweep dir for the launching process (``harness.run_dir.lock_dir``): a second sweep
    into the same ``hydra.sweep.dir`` while this one runs refuses with one line and exit 2, instead of
    both writing numbered job dirs and mixing their settings. A lock left by a killed sweep is taken
    over. The lock records the number of jobs, for the Ctrl-C line of ``kvflow-sim``."""

    def on_multirun_start(self, config: Any, **kwargs: Any) -> None:
        hydra_cfg = config.hydra
        params = hydra_cfg.sweeper.get("params") if "sweeper" in hydra_cfg else None
        total = count_jobs(list(hydra_cfg.overrides.task), dict(params) if params else None)
        try:
            lock_dir(Path(str(hydra_cfg.sweep.dir)), "sweep", total_runs=total)
        except RunError as exc:
            print(f"kvflow-sim: error: {exc}", file=sys.stderr)
            raise SystemExit(2) from None  # SystemExit: Hydra turns an Exception here into a warning

    def on_multirun_end(self, config: Any, **kwargs: Any) -> None:
        unlock_dir(Path(str(config.hydra.sweep.dir)))


class SweepReport(Callback):
    """Writes ``<sweep dir>/report`` (tables + plots) when a sweep ends and prints where it is."""

    def __init__(self, baseline: str = "hicache") -> None:
        self.baseline = baseline

    def on_multirun_end(self, config: Any, **kwargs: Any) -> None:
        from analysis.report import write_report  # matplotlib only when a sweep actually ends

        sweep_dir = Path(str(config.hydra.sweep.dir))
        try:
            report = write_report(sweep_dir, baseline=self.baseline, invocation=f"kvflow-report {sweep_dir}")
        except (RunError, OSError) as exc:
            print(f"kvflow-report: error: {exc}", file=sys.stderr)
            return
        print(f"report: {report} (plots and results.csv next to it)")


class RunReport(Callback):
    """After a single (non-sweep) run that completed: ``<run dir>/report`` (report.md, plots,
    results.csv), and one line saying where; ``output.report=false`` turns it off."""

    def on_job_end(self, config: Any, job_return: JobReturn, **kwargs: Any) -> None:
        hydra_cfg = config.hydra
        if job_return.status != JobStatus.COMPLETED or hydra_cfg.mode != RunMode.RUN:
            return
        if not (config.get("output") or {}).get("report", True):
            return
        from analysis.report import write_report  # lazy: keeps matplotlib out of start-up

        run_dir = Path(str(hydra_cfg.runtime.output_dir))
        try:
            report = write_report(run_dir, run_dir / "report", invocation=f"kvflow-report {run_dir}")
        except (RunError, OSError) as exc:
            print(f"kvflow-report: error: {exc}", file=sys.stderr)
            return
        print(f"report: {report} (plots and results.csv in {report.parent})")
