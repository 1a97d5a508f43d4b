"""Speedup of each policy over a baseline, per experiment and setting.

speedup = baseline's mean end-to-end workflow latency / the policy's (> 1: the policy is faster).
A *setting* is one combination of the swept parameters other than the policy; runs that share a
setting and a policy (e.g. the same sweep run twice into different dirs) are averaged.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from typing import Any

import pandas as pd

from analysis import paper
from analysis.frame import param_columns

METRIC = "workflow_latency_mean_s"
CONTEXT = ("generator", "hardware", "model", "fixed_tokens", "dynamic_tokens", "output_tokens", "workflows")
POLICY_ORDER = ("sglang", "hicache", "kvflow_evict_only", "kvflow", "clairvoyant")


def policy_order(policies: Sequence[str]) -> list[str]:
    """Baselines first, then KVFlow variants, then the clairvoyant policy; unknown policies after, by name."""
    known = {p: i for i, p in enumerate(POLICY_ORDER)}
    return sorted(set(policies), key=lambda p: (known.get(p, len(known)), p))


def sort_key(value: Any) -> tuple[int, Any]:
    """Numbers in numeric order, then strings, then missing values (mixed columns must sort)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return (2, "")
    if isinstance(value, numbers.Real) and not isinstance(value, bool):  # numpy scalars included
        return (0, float(value))
    return (1, str(value))


def setting_params(edf: pd.DataFrame) -> list[str]:
    """Swept parameters that apply to this experiment's runs (not missing for all of them)."""
    return [c for c in param_columns(edf) if edf[c].notna().any()]


def _context(g: pd.DataFrame) -> dict[str, Any]:
    return {c: g[c].iloc[0] for c in CONTEXT if c in g.columns}


def _rows(exp: str, edf: pd.DataFrame, params: list[str], baseline: str, metric: str) -> list[dict[str, Any]]:
    rows = []
    groups = edf.groupby(params, dropna=False, sort=False) if params else [((), edf)]
    for values, g in groups:
        values = values if isinstance(values, tuple) else (values,)
        base = g.loc[g["policy"] == baseline, metric]
        base_s = float(base.mean()) if len(base) else math.nan
        ctx = _context(g)
        for policy, pg in g.groupby("policy", sort=False):
            lat = float(pg[metric].mean())
            refs = paper.matches({**ctx, **dict(zip(params, values))}, str(policy), baseline)
            rows.append(
                {
                    "experiment": exp,
                    **dict(zip(params, values)),
                    **ctx,
                    "policy": policy,
                    "latency_s": lat,
                    "baseline": baseline,
                    "baseline_latency_s": base_s,
                    "speedup": base_s / lat if lat > 0 else math.nan,
                    "runs": len(pg),
                    "paper": "; ".join(r.text() for r in refs),
                }
            )
    return rows


def speedups(df: pd.DataFrame, baseline: str = "hicache", metric: str = METRIC) -> pd.DataFrame:
    """Long form: one row per (experiment, setting, policy) with ``speedup`` over ``baseline``
    (NaN where the setting has no baseline run) and the paper's matching numbers in ``paper``.
    ``attrs["params"][experiment]`` lists the setting columns of each experiment."""
    rows: list[dict[str, Any]] = []
    params_by_exp: dict[str, list[str]] = {}
    if not df.empty and metric in df.columns:
        attrs = dict(df.attrs)
        df = df.assign(**{metric: pd.to_numeric(df[metric], errors="coerce")})  # a bad value -> NaN, not a crash
        for exp, edf in df.groupby("experiment", sort=True):
            edf.attrs = attrs
            params = setting_params(edf)
            params_by_exp[str(exp)] = params
            rows += _rows(str(exp), edf, params, baseline, metric)
    out = pd.DataFrame(rows)
    if not out.empty:
        keys = list(dict.fromkeys(p for ps in params_by_exp.values() for p in ps))
        order = {p: i for i, p in enumerate(policy_order(out["policy"].astype(str).tolist()))}
        out = out.iloc[
            sorted(
                range(len(out)),
                key=lambda i: (
                    out["experiment"].iat[i],
                    [sort_key(out[k].iat[i]) for k in keys],
                    order[str(out["policy"].iat[i])],
                ),
            )
        ].reset_index(drop=True)
    out.attrs["params"] = params_by_exp
    out.attrs["baseline"] = baseline
    return out


def varying(frame: pd.DataFrame, columns: Sequence[str]) -> list[str]:
    """Columns that take more than one value: the ones worth a table column or a plot axis."""
    return [c for c in columns if c in frame.columns and frame[c].astype(str).nunique() > 1]


def wide(long: pd.DataFrame, experiment: str) -> tuple[pd.DataFrame, dict[str, Any]]:
    """One experiment as a table: a row per setting (its varying parameters), the baseline's
    latency, one speedup column per policy and the paper's numbers; plus the parameters that are
    the same for every row (shown once above the table)."""
    e = long[long["experiment"] == experiment]
    params = long.attrs.get("params", {}).get(experiment, [])
    vary = varying(e, params)
    constant = {c: e[c].iloc[0] for c in params if c not in vary}
    policies = policy_order(e["policy"].astype(str).tolist())
    rows = []
    groups = e.groupby(vary, dropna=False, sort=False) if vary else [((), e)]
    for values, g in groups:
        values = values if isinstance(values, tuple) else (values,)
        r: dict[str, Any] = dict(zip(vary, values))
        r["baseline_latency_s"] = g["baseline_latency_s"].iloc[0]
        by_policy = dict(zip(g["policy"].astype(str), g["speedup"]))
        r.update({p: by_policy.get(p, math.nan) for p in policies})
        r["paper"] = "; ".join(f"{p} {t}" for p, t in zip(g["policy"].astype(str), g["paper"]) if t)
        rows.append(r)
    table = pd.DataFrame(rows)
    if vary and not table.empty:
        table = table.iloc[sorted(range(len(table)), key=lambda i: [sort_key(table[c].iat[i]) for c in vary])]
    table.attrs["params"] = vary
    table.attrs["policies"] = policies
    return table.reset_index(drop=True), constant
