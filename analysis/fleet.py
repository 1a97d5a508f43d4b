"""Fleet runs (``cluster.replicas``, docs/fleet.md): latency and hit rate vs replicas and router.

A run set gets a fleet table and plot only when its runs differ in replica count (or, at more than
one replica, in router); a run set without fleets is reported exactly as before. One replica is the
single engine whatever ``cluster.router`` says (the router key is not even stored), so the
1-replica runs of a policy collapse to one row, router ``any``, drawn as the first point of every
router's line.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import pandas as pd

from analysis.frame import param_columns
from analysis.runs import Run
from analysis.speedup import policy_order, sort_key

ANY_ROUTER = "any"  # the 1-replica row: every router gives the same run
FLEET_KEYS = ("cluster.replicas", "cluster.router")
METRICS = {  # frame column -> table header
    "workflow_latency_mean_s": "mean workflow latency (s)",
    "workflow_latency_p99_s": "p99 workflow latency (s)",
    "details_ttft_s_mean": "mean TTFT (s)",
    "details_queue_s_mean": "mean queue (s)",
    "hit_rate_gpu": "GPU hit",
    "hit_rate_cpu": "CPU load",
    "busiest_share": "busiest replica share",
}


def _replicas(run: Run) -> int:
    """The run's replica count: the summary's (fleet runs write it), else the config's, else 1."""
    n = run.summary.get("replicas", (run.config.get("cluster") or {}).get("replicas", 1))
    return int(n) if isinstance(n, (int, float)) and not isinstance(n, bool) else 1


def _router(run: Run) -> str:
    """The configured router (stored for fleets; a 1-replica config leaves it out): the config's,
    else the override that asked for it, else the schema's default."""
    name = (run.config.get("cluster") or {}).get("router") or run.overrides.get("cluster.router")
    return str(name or "round_robin")


def busiest_share(run_dir: Path) -> float:
    """The most loaded replica's share of requests (``replicas.csv``); 1.0 for a single engine,
    NaN when the file is unreadable (the table shows "—")."""
    path = Path(run_dir) / "replicas.csv"
    if not path.is_file():
        return 1.0
    try:
        requests = pd.to_numeric(pd.read_csv(path)["requests"], errors="coerce")
    except (OSError, ValueError, KeyError, pd.errors.ParserError):
        return math.nan
    total = requests.sum()
    return float(requests.max() / total) if total > 0 else math.nan


def _is_fleet(table: pd.DataFrame) -> bool:
    multi = table[table["replicas"] > 1]
    return table["replicas"].nunique() > 1 or (not multi.empty and multi["router"].nunique() > 1)


def fleet_tables(df: pd.DataFrame, runs: Sequence[Run]) -> dict[str, pd.DataFrame]:
    """Experiment -> one row per (setting, policy, replicas, router): the mean of ``METRICS`` over
    its runs; only experiments whose runs differ in replicas (or in router beyond one replica)."""
    if df.empty:
        return {}
    by_dir = {str(r.path): r for r in runs}
    t = df.copy()
    t["replicas"] = [_replicas(by_dir[d]) for d in t["run_dir"]]
    t["router"] = [ANY_ROUTER if n == 1 else _router(by_dir[d]) for d, n in zip(t["run_dir"], t["replicas"])]
    t["busiest_share"] = [busiest_share(Path(d)) for d in t["run_dir"]]
    setting = [c for c in param_columns(df) if c not in FLEET_KEYS and t[c].astype(str).nunique() > 1]
    out: dict[str, pd.DataFrame] = {}
    for exp, e in t.groupby("experiment", sort=True):
        if not _is_fleet(e):
            continue
        keys = setting + ["policy", "replicas", "router"]
        cols = [c for c in METRICS if c in e.columns]
        g = e.groupby(keys, dropna=False, sort=False)
        table = g[cols].mean(numeric_only=True).reset_index()
        table["runs"] = g.size().to_numpy()
        table.attrs["setting"] = setting
        out[str(exp)] = _sorted(table, setting)
    return out


def _sorted(table: pd.DataFrame, setting: Sequence[str]) -> pd.DataFrame:
    rank = {p: i for i, p in enumerate(policy_order(table["policy"].astype(str).tolist()))}
    key = table.apply(
        lambda r: (
            tuple(sort_key(r[c]) for c in setting)
            + (rank[str(r["policy"])], r["replicas"], r["router"] != ANY_ROUTER, str(r["router"]))
        ),
        axis=1,
    )
    return table.loc[sorted(table.index, key=lambda i: key[i])].reset_index(drop=True)


def router_lines(table: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """Router -> its points in replica order, the 1-replica row prepended (the same run for all)."""
    single = table[table["router"] == ANY_ROUTER]
    routers = sorted({str(r) for r in table["router"]} - {ANY_ROUTER})
    lines = {r: pd.concat([single, table[table["router"] == r]]).sort_values("replicas") for r in routers}
    return lines or {ANY_ROUTER: single.sort_values("replicas")}


def figures(tables: Mapping[str, pd.DataFrame]) -> pd.DataFrame:
    """Every experiment's fleet table in one frame (``fleet.csv``)."""
    return pd.concat([t.assign(experiment=exp) for exp, t in tables.items()], ignore_index=True)
