"""Runs -> one pandas DataFrame, one row per run: swept parameters + context + every summary metric.

Summaries follow the run-directory contract (``harness.run_dir``, docs/architecture.md): flat headline
keys (``workflow_latency_mean_s``, ...) become columns as they are, nested ``details`` become
``details_<key>_<sub>`` columns, the same for every backend.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import pandas as pd

from analysis.runs import Run

# workload knobs worth a column even when not swept: plots pick their x axis from these
WORKLOAD_FIELDS = ("generator", "fixed_tokens", "dynamic_tokens", "output_tokens", "workflows", "agents", "runs")
CONTEXT = ("experiment", "policy", "backend", "workload", "hardware", "model", "seed")
WALL_CLOCK = ("wall_s",)  # differ between identical runs; never compared


def flatten(summary: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dicts -> dotted keys (``params`` is not a metric: it holds the swept parameters)."""
    out: dict[str, Any] = {}
    for key, value in summary.items():
        if not prefix and key == "params":
            continue
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten(value, f"{name}."))
        elif not isinstance(value, (list, tuple)):
            out[name] = value
    return out


def metrics(summary: Mapping[str, Any]) -> dict[str, Any]:
    """Summary -> flat metric columns (dots become underscores)."""
    return {k.replace(".", "_"): v for k, v in flatten(summary).items()}


def experiment_name(run: Run) -> str:
    """The preset that produced the run (``experiment=...``), else the workload's name."""
    for source in (run.summary, run.choices, run.overrides):
        if source.get("experiment"):
            return str(source["experiment"])
    workload = run.summary.get("workload") or (run.config.get("workload") or {}).get("name")
    return str(workload or "default")


def _workload_fields(config: Mapping[str, Any]) -> dict[str, Any]:
    workload = config.get("workload") or {}
    params = workload.get("params") or {} if isinstance(workload, Mapping) else {}
    out = {"generator": workload.get("generator") if isinstance(workload, Mapping) else None}
    out.update({k: params.get(k) for k in WORKLOAD_FIELDS[1:] if isinstance(params, Mapping)})
    return out


def _lookup(run: Run, key: str) -> Any:
    """A parameter another run swept but this one did not: its value from this run's resolved
    config (dotted path) or Hydra group choice, so settings compare like with like."""
    if key in run.choices:
        return run.choices[key]
    node: Any = run.config
    for part in key.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return None
        node = node[part]
    return None if isinstance(node, (Mapping, list)) else node


def row(run: Run, swept: Iterable[str] = ()) -> dict[str, Any]:
    data: dict[str, Any] = {"run_dir": str(run.path)}
    data.update({k: _lookup(run, k) for k in swept if k not in run.overrides})
    data.update(run.overrides)
    data.update(metrics(run.summary))
    # the configured knob wins over a same-named summary count (``workflows``): it is the setting
    data.update({k: v for k, v in _workload_fields(run.config).items() if v is not None})
    data["experiment"] = experiment_name(run)
    data["command"] = run.command
    return data


def _numeric_metrics(df: pd.DataFrame, columns: Iterable[str]) -> pd.DataFrame:
    """A metric that is numeric in some runs is numeric everywhere: a stray string (hand-edited or
    foreign summary) becomes NaN instead of breaking every mean taken over that column."""
    for c in columns:
        if c in df.columns and (df[c].dtype == object or str(df[c].dtype) == "str"):
            num = pd.to_numeric(df[c], errors="coerce")
            if num.notna().any():
                df[c] = num
    return df


def build_frame(runs: Iterable[Run]) -> pd.DataFrame:
    """One row per run. ``df.attrs["params"]`` lists the swept parameter columns (from Hydra
    overrides and ``summary["params"]``), which define a run's setting."""
    runs = list(runs)
    swept: list[str] = []
    for r in runs:
        swept += [k for k in r.overrides if k not in swept]
    df = pd.DataFrame([row(r, swept) for r in runs])
    df = _numeric_metrics(df, {k for r in runs for k in metrics(r.summary)} - set(CONTEXT) - set(swept))
    if not df.empty:
        first = ["experiment", "policy"] + [c for c in swept if c not in ("experiment", "policy")]
        df = df[[c for c in first if c in df.columns] + [c for c in df.columns if c not in first]]
        df = df.sort_values(["experiment", "run_dir"], kind="stable").reset_index(drop=True)
    df.attrs["params"] = swept
    return df


def param_columns(df: pd.DataFrame) -> list[str]:
    """Swept parameters that define a setting (everything swept except the policy)."""
    return [c for c in df.attrs.get("params", []) if c in df.columns and c not in ("policy", "experiment")]
