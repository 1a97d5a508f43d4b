"""Calibrating a CPU host for ``kvflow-real validate``: on the workload's own shapes, around the run.

A CPU host is usually shared: other processes take turns on the same cores, and the load moves on a
scale of seconds. One calibration taken in a quiet moment and a run taken under load (or the other
way round) differ by up to 2-3x (measured here: 2 cores, load average 4), which the simulator cannot
know. ``Bracket`` therefore calibrates before the real run and again after it (no result of the run
is used, only the host), and the simulator gets the mean of the two profiles; ``drift`` (how far
the two disagree on a batch-1 decode step and a full-prompt prefill) is recorded as the host's noise.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from harness.run_dir import write_atomic
from harness.setup import build_trace, chunk_tokens
from kvflow.model_spec import ModelSpec, load_model_spec
from real.calibrate import Grid, calibrate, fit_report, write_profile
from real.runner import RealOptions, build_model

__all__ = ["Bracket", "calibrate_to", "cpu_grid", "grid_for", "mean_profile"]


def grid_for(cfg: dict[str, Any], trace: Any) -> Grid:
    """The calibration grid of ``trace``'s shapes under ``cfg``'s chunk size and batch limit."""
    clients = len({inv.client_id for inv in trace.invocations})
    running = (cfg.get("engine") or {}).get("max_running_requests") or clients
    return Grid.for_trace(trace, chunk_tokens(cfg), min(clients, int(running), 8))


def cpu_grid(model: str) -> tuple[Grid, int]:
    """Grid of the default CPU workload's shapes (``kvflow-real calibrate`` on CPU) and its fixed prompt."""
    from harness.config_schema import validate_config
    from real.config import compose
    from real.cpu_defaults import CPU_WORKLOAD, describe_workload

    cfg = validate_config(compose([f"model={model}", *CPU_WORKLOAD]))
    trace = build_trace(cfg["workload"], int(cfg.get("seed", 0)))
    print(f"cpu: model={model}, grid from the shapes of the default CPU workload {describe_workload()}", flush=True)
    return grid_for(cfg, trace), max(trace.fixed_tokens(i) for i in trace.invocations)


def calibrate_to(
    path: Path,
    spec: ModelSpec,
    grid: Grid,
    base: dict[str, Any],
    name: str,
    opts: RealOptions,
    loop_tokens: int | None,
    out: Path | None,
    net: Any = None,
) -> Any:
    """Measure, fit and write the profile YAML at ``path`` (and ``out/calibration.json``); returns the net."""
    net = net or build_model(spec, opts)
    print(f"calibrating {spec.name} on {net.device} ({str(net.dtype).replace('torch.', '')})", flush=True)
    if loop_tokens is None:
        loop_tokens = 4096 if net.device.type == "cuda" else 256
    result = calibrate(net, grid, log=lambda m: print(m, flush=True), loop_fixed_tokens=loop_tokens)
    print(fit_report(result["fits"]))
    if result["bidirectional"]:
        print("bidirectional factors:", result["bidirectional"])
    write_profile(path, base, name, result, net, grid)
    if out:
        out.mkdir(parents=True, exist_ok=True)
        fit_error = {k: {"mape": f.mape, "max": f.max_err} for k, f in result["fits"].items()}
        record = {
            "profile": str(path),
            "measured": result["measured"],
            "fit_error": fit_error,
            "bidirectional": result["bidirectional"],
            "loop_overhead": result.get("loop_overhead"),
        }
        write_atomic(out / "calibration.json", json.dumps(record, indent=2))
    return net


def mean_profile(a: dict[str, Any], b: dict[str, Any], name: str) -> dict[str, Any]:
    """Profile ``a`` with every ``measured`` coefficient the mean of ``a``'s and ``b``'s (the cost
    model is linear in them, so this is the mean prediction of the two)."""
    out = dict(a)
    out["name"] = name
    out["measured"] = {
        block: {k: (float(v) + float(b["measured"][block][k])) / 2 for k, v in coef.items()}
        for block, coef in a["measured"].items()
    }
    out["calibration"] = {"mean_of": [a["calibration"]["date"], b["calibration"]["date"]]}
    return out


def _step_times_s(profile: dict[str, Any], longest: int) -> tuple[float, float]:
    """(batch-1 decode step at the longest context, prefill of the longest prompt) under a profile."""
    d, p = profile["measured"]["decode"], profile["measured"]["prefill"]
    decode = d["a_s"] + d["b_s_per_seq"] + d["c_s_per_ctx_token"] * longest
    prefill = p["a_s"] + p["b_s_per_token"] * longest + p.get("d_s_per_token_pair", 0.0) * longest * (longest + 1) / 2
    return decode, prefill


class Bracket:
    """Calibrate before the real run (``before``) and after it (``after``: the mean profile)."""

    def __init__(self, cfg: dict[str, Any], out: Path, opts: RealOptions) -> None:
        self.cfg, self.out, self.opts = cfg, Path(out), opts
        self.trace = build_trace(cfg["workload"], int(cfg.get("seed", 0)))
        self.spec = load_model_spec(cfg["model"])
        self.name = f"cpu_{self.spec.name}_measured".replace(".", "")
        self.fixed = max(self.trace.fixed_tokens(i) for i in self.trace.invocations)
        self.longest = max(self.trace.prompt_len(i) for i in self.trace.invocations)
        self.net: Any = None
        self.drift: dict[str, float] = {}

    def _measure(self, tag: str) -> Path:
        path = self.out / f"cpu_profile_{tag}.yaml"
        grid = grid_for(self.cfg, self.trace)
        base = dict(self.cfg["hardware"])
        self.net = calibrate_to(
            path, self.spec, grid, base, self.name, self.opts, self.fixed, self.out / f"calibration_{tag}", self.net
        )
        return path

    def before(self) -> Path:
        print(f"cpu: no hardware= given: calibrating {self.spec.name} on this CPU before and after the run", flush=True)
        self.out.mkdir(parents=True, exist_ok=True)
        return self._measure("before")

    def after(self) -> dict[str, Any]:
        """Calibrate again; write and return the mean profile (``cpu_profile.yaml``) the simulator uses."""
        first = yaml.safe_load((self.out / "cpu_profile_before.yaml").read_text())
        second = yaml.safe_load(self._measure("after").read_text())
        prof = mean_profile(first, second, self.name)
        (d0, p0), (d1, p1) = _step_times_s(first, self.longest), _step_times_s(second, self.longest)
        self.drift = {"decode_step": abs(d1 - d0) / ((d0 + d1) / 2), "prefill": abs(p1 - p0) / ((p0 + p1) / 2)}
        prof["calibration"]["drift"] = self.drift
        header = "# CPU PROFILE: mean of the calibrations before and after one validate run on this host.\n"
        write_atomic(self.out / "cpu_profile.yaml", header + yaml.safe_dump(prof, sort_keys=False))
        print(
            f"cpu: calibrations before/after the run differ by {100 * self.drift['decode_step']:.0f}% (decode step), "
            f"{100 * self.drift['prefill']:.0f}% (prefill): the host's noise; the simulator uses their mean",
            flush=True,
        )
        return prof
