"""Run dirs -> ``results.csv``, ``speedups.csv``, PNG plots and ``report.md`` (and, on request, the
generated part of ``docs/results.md``).

``write_report`` is the one entry point: the CLI calls it, and so can ``kvflow-sim``'s default run,
so both produce the same report from the same files.
"""

from __future__ import annotations

import importlib.util
import math
import os
import re
import sys
from collections.abc import Iterable, Sequence
from importlib.resources import files
from pathlib import Path
from typing import Any, TextIO

import pandas as pd

from analysis import fleet, paper, plots
from analysis.frame import build_frame
from analysis.runs import RunError, load_runs
from analysis.speedup import policy_order, speedups, wide
from harness.run_dir import atomic_output, splice_block, write_atomic

BEGIN = "<!-- BEGIN kvflow-report: generated, edit outside these markers -->"
END = "<!-- END kvflow-report -->"
EXPERIMENT_ORDER = ("paper_single", "paper_concurrent", "paper_branches", "paper_peer")
SPEEDUP_AXES = ("fixed_tokens", "output_tokens", "workflows")


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", str(name)).strip("_") or "runs"


def _fmt(value: Any, unit: str = "") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    if isinstance(value, float) and value.is_integer() and unit != "x" and abs(value) < 1e15:
        return str(int(value))  # a parameter stored as float next to missing values (128.0)
    if isinstance(value, float):
        return f"{value:.2f}{unit}" if unit == "x" else f"{value:.3g}" if abs(value) < 100 else f"{value:,.1f}"
    return str(value)


def md_table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    esc = lambda s: str(s).replace("|", "\\|")  # noqa: E731
    lines = ["| " + " | ".join(esc(h) for h in header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(esc(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def speedup_markdown(long: pd.DataFrame, experiment: str) -> str:
    """The experiment's speedup table over one baseline, with the paper's numbers beside it."""
    baseline = long.attrs["baseline"]
    table, constant = wide(long, experiment)
    vary, policies = table.attrs["params"], [p for p in table.attrs["policies"] if p != baseline]
    header = [plots.short(c) for c in vary] + [f"{baseline} latency (s)"] + policies + [f"paper (vs {baseline})"]
    rows = [
        [_fmt(r[c]) for c in vary]
        + [_fmt(r["baseline_latency_s"])]
        + [_fmt(r[p], "x") for p in policies]
        + [r["paper"] or ""]
        for _, r in table.iterrows()
    ]
    out = [
        f"Speedup over **{baseline}** (mean end-to-end workflow latency of {baseline} / the policy's; "
        f"> 1.00x is faster; — : no run)."
    ]
    if constant:
        out.append("Same in every row: " + ", ".join(f"`{k}={v}`" for k, v in constant.items()) + ".")
    return "\n".join(out) + "\n\n" + md_table(header, rows)


def policy_markdown(edf: pd.DataFrame) -> str:
    """Per-policy means of the metrics behind the speedups (why a policy wins, not only that it does)."""
    cols = {
        "workflow_latency_mean_s": "workflow latency (s)",
        "hit_rate_gpu": "GPU hit",
        "hit_rate_cpu": "CPU load",
        "recompute_rate": "recomputed",
        "h2d_bytes": "H2D GB",
        "d2h_bytes": "D2H GB",
        "prefetch_issued": "prefetches",
        "prefetch_used": "prefetch used",
    }
    cols = {k: v for k, v in cols.items() if k in edf.columns}
    means = edf.groupby("policy")[list(cols)].mean(numeric_only=True)
    rows = []
    for policy in policy_order(means.index.astype(str).tolist()):
        r = means.loc[policy]
        cells = []
        for k in cols:
            v = r.get(k, math.nan)
            cells.append(
                _fmt(v / 1e9) if k.endswith("_bytes") else f"{v:.1%}" if "rate" in k and not math.isnan(v) else _fmt(v)
            )
        rows.append([policy, int((edf["policy"] == policy).sum())] + cells)
    return md_table(["policy", "runs"] + list(cols.values()), rows)


def fleet_markdown(table: pd.DataFrame) -> str:
    """The fleet table (``analysis.fleet.fleet_tables``): latency, TTFT, queueing, hit rates and the
    busiest replica's share per (policy, replicas, router)."""
    setting = list(table.attrs.get("setting", []))
    cols = [c for c in fleet.METRICS if c in table.columns]
    header = [plots.short(c) for c in setting] + ["policy", "replicas", "router"]
    header += [fleet.METRICS[c] for c in cols] + ["runs"]
    rows = []
    for _, r in table.iterrows():
        cells = [_fleet_cell(c, r[c]) for c in cols]
        rows.append(
            [_fmt(r[c]) for c in setting] + [r["policy"], int(r["replicas"]), r["router"]] + cells + [r["runs"]]
        )
    note = (
        "Fleet (`cluster.replicas`, docs/fleet.md): one row per policy, replica count and router. One replica is "
        f"the single engine whatever the router: router `{fleet.ANY_ROUTER}`, shown once (and as the 1-replica "
        "point of every router's line in the plot)."
    )
    return note + "\n\n" + md_table(header, rows)


def _fleet_cell(col: str, value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    return f"{value:.1%}" if col.startswith("hit_rate") or col == "busiest_share" else _fmt(value)


def _contrast(group: tuple[Any, pd.DataFrame]) -> tuple[int, float]:
    """Most policies first, then the widest gap between the fastest and slowest policy: the setting
    where a latency CDF has something to show."""
    g = group[1]
    lat = g.groupby("policy")["workflow_latency_mean_s"].mean() if "workflow_latency_mean_s" in g else pd.Series()
    spread = float(lat.max() / lat.min()) if len(lat) and lat.min() > 0 else 0.0
    return g["policy"].nunique(), spread


def _latencies(edf: pd.DataFrame, problems: list[str]) -> tuple[dict[str, list[float]], str]:
    """requests.csv latencies (timed requests only) of one setting: the one with the most policies."""
    params = [c for c in edf.attrs.get("setting", []) if c in edf.columns]
    groups = list(edf.groupby(params, dropna=False, sort=False)) if params else [((), edf)]
    values, g = max(groups, key=_contrast)
    out: dict[str, list[float]] = {}
    for policy, pg in g.groupby("policy"):
        path = Path(pg["run_dir"].iloc[0]) / "requests.csv"
        if not path.is_file():
            continue
        try:
            req = pd.read_csv(path)
            if "warmup" in req.columns:
                req = req[~req["warmup"].astype(str).str.lower().isin(("true", "1"))]
            out[str(policy)] = pd.to_numeric(req["latency_s"], errors="coerce").dropna().tolist()
        except (OSError, ValueError, KeyError, pd.errors.ParserError) as exc:
            problems.append(f"{path}: unreadable requests table ({' '.join(str(exc).split())[:100]})")
    setting = plots.label(dict(zip(params, values if isinstance(values, tuple) else (values,))))
    return out, setting


def _timeline_run(edf: pd.DataFrame) -> pd.Series | None:
    have = edf[[(Path(d) / "timeline.csv").is_file() for d in edf["run_dir"]]]
    if have.empty:
        return None
    rank = {"kvflow": 0, "clairvoyant": 1}
    return have.iloc[min(range(len(have)), key=lambda i: (rank.get(str(have["policy"].iat[i]), 2), i))]


def experiment_plots(df: pd.DataFrame, long: pd.DataFrame, exp: str, out: Path, problems: list[str]) -> list[Path]:
    """Every plot the experiment's runs support, as files in ``out``."""
    prefix = _slug(exp)
    made = [plots.speedup_vs(long, exp, x, out / f"{prefix}_speedup_vs_{x}.png") for x in SPEEDUP_AXES]
    made.append(plots.speedup_bars(long, exp, out / f"{prefix}_speedup.png"))
    edf = df[df["experiment"] == exp].copy()
    edf.attrs["setting"] = long.attrs.get("params", {}).get(exp, [])
    made.append(plots.hit_rates(edf, exp, out / f"{prefix}_hit_rate.png"))
    made.append(plots.pcie_bytes(edf, exp, out / f"{prefix}_pcie_bytes.png"))
    lat, setting = _latencies(edf, problems)
    made.append(
        plots.latency_cdf(lat, f"{exp}: per-request latency CDF ({setting})", out / f"{prefix}_latency_cdf.png")
    )
    run = _timeline_run(edf)
    if run is not None:
        path = Path(run["run_dir"]) / "timeline.csv"
        try:
            t = pd.read_csv(path)
            setting = plots.label({c: run[c] for c in edf.attrs["setting"] if c in run.index})
            title = f"{exp}: {run['policy']} timeline ({setting}) — H2D prefetch overlapping GPU compute"
            made.append(plots.timeline(t, title, out / f"{prefix}_timeline.png"))
        except (OSError, ValueError, pd.errors.ParserError) as exc:
            problems.append(f"{path}: unreadable timeline ({' '.join(str(exc).split())[:100]})")
    return [p for p in made if p is not None]


def experiment_markdown(
    df: pd.DataFrame,
    longs: Sequence[pd.DataFrame],
    exp: str,
    images: Sequence[Path],
    rel_to: Path,
    level: int = 2,
    fleet_table: pd.DataFrame | None = None,
) -> str:
    edf = df[df["experiment"] == exp]
    h = "#" * level
    parts = [f"{h} Experiment `{exp}` ({len(edf)} runs)"]
    commands = sorted({c for c in edf["command"].dropna().astype(str)}) if "command" in edf.columns else []
    if commands:
        parts.append("Produced by:\n\n```bash\n" + "\n".join(commands) + "\n```")
    for long in longs:
        if exp in set(long["experiment"]):
            parts.append(speedup_markdown(long, exp))
    parts.append(policy_markdown(edf))
    if fleet_table is not None:
        parts.append(fleet_markdown(fleet_table))
    for img in images:
        parts.append(f"![{img.stem}]({Path(os.path.relpath(img, rel_to)).as_posix()})")
    return "\n\n".join(parts)


def _experiments(df: pd.DataFrame) -> list[str]:
    names = sorted(set(df["experiment"].astype(str)))
    return sorted(names, key=lambda n: (EXPERIMENT_ORDER.index(n) if n in EXPERIMENT_ORDER else 99, n))


def _write_tables(df: pd.DataFrame, longs: Sequence[pd.DataFrame], fleets: dict[str, pd.DataFrame], out: Path) -> None:
    write_atomic(out / "results.csv", df.to_csv(index=False))
    if fleets:  # only run sets with fleets: others keep exactly their old files
        write_atomic(out / "fleet.csv", fleet.figures(fleets).to_csv(index=False))
    if importlib.util.find_spec("pyarrow") is not None:
        with atomic_output(out / "results.parquet") as tmp:
            df.to_parquet(tmp, index=False)
    write_atomic(out / "speedups.csv", pd.concat(list(longs), ignore_index=True).to_csv(index=False))


def _splice(path: Path, body: str) -> None:
    """Replace the generated block of ``path`` (between the markers), keeping hand-written text."""
    splice_block(path, body, BEGIN, END, new_file_head="# Results\n\n")


def _check_baselines(baselines: Sequence[str], runs: Sequence[Any]) -> None:
    """A mistyped baseline used to give empty tables (and leave an older report's plots looking
    current): refuse, before writing anything, a name that is neither a configured policy nor in
    the runs, and a list none of whose policies has a run. A known policy missing from some
    settings is fine: its cells show "—"."""
    present = sorted({str(r.summary.get("policy")) for r in runs})
    known = {p.name[:-5] for p in (files("conf") / "policy").iterdir() if p.name.endswith(".yaml")}
    for b in baselines:
        if b not in present and b not in known:
            raise RunError(f"--baseline {b!r}: unknown policy; policies in these runs: {', '.join(present)}")


def _roots(run_dirs_or_root: Path | str | Iterable[Path | str]) -> list[Path]:
    if isinstance(run_dirs_or_root, (str, os.PathLike)):
        return [Path(run_dirs_or_root)]
    return [Path(p) for p in run_dirs_or_root]


def write_report(
    run_dirs_or_root: Path | str | Iterable[Path | str],
    out_dir: Path | str | None = None,
    baseline: str | Sequence[str] = "hicache",
    results_md: Path | str | None = None,
    invocation: str | None = None,
    stream: TextIO | None = None,
) -> Path:
    """Read every complete run under the given dirs and write the report into ``out_dir``
    (default ``<first dir>/report``); returns the path of ``report.md``.

    ``baseline`` may list several policies ("hicache,sglang"): one speedup table each; plots use the
    first. Malformed or partial runs are named on ``stream`` (stderr) one line each and skipped.
    Raises ``RunError`` (one line) when there is nothing to report.
    """
    stream = stream if stream is not None else sys.stderr
    roots = _roots(run_dirs_or_root)
    out = Path(out_dir) if out_dir is not None else roots[0] / "report"
    baselines = [b.strip() for b in (baseline.split(",") if isinstance(baseline, str) else baseline) if b.strip()]
    runs, problems = load_runs(roots, exclude=[out])
    if not runs:
        for p in problems:
            print(f"kvflow-report: skipped {p}", file=stream)
        raise RunError(f"no complete runs (summary.json) under {', '.join(map(str, roots))}")
    _check_baselines(baselines, runs)
    out.mkdir(parents=True, exist_ok=True)
    df = build_frame(runs)
    longs = [speedups(df, b) for b in baselines or ["hicache"]]
    images = {exp: experiment_plots(df, longs[0], exp, out, problems) for exp in _experiments(df)}
    fleets = fleet.fleet_tables(df, runs)
    for exp, table in fleets.items():
        made = plots.fleet(
            table, f"{exp}: latency and GPU hit vs replicas, per router", out / f"{_slug(exp)}_fleet.png"
        )
        images[exp] += [made] if made is not None else []
    for p in problems:
        print(f"kvflow-report: skipped {p}", file=stream)
    _write_tables(df, longs, fleets, out)
    made_by = invocation or f"analysis.report.write_report({', '.join(map(str, roots))})"
    intro = (
        f"Generated by `{made_by}` from {len(df)} runs. Paper numbers: {paper.SOURCE}, shown where "
        "the simulated setting matches the paper's. Per-run values: `results.csv`; speedups: `speedups.csv`."
    )
    skipped = ("\n\nSkipped (malformed or partial):\n\n" + "\n".join(f"- `{p}`" for p in problems)) if problems else ""
    sections = [experiment_markdown(df, longs, exp, images[exp], out, fleet_table=fleets.get(exp)) for exp in images]
    report = out / "report.md"
    write_atomic(report, "# kvflow report\n\n" + intro + skipped + "\n\n" + "\n\n".join(sections) + "\n")
    if results_md is not None:
        md = Path(results_md)
        body = [f"Regenerate with `{made_by}`. {paper.SOURCE}: the paper's numbers beside matching settings."]
        body += [
            experiment_markdown(df, longs, exp, images[exp], md.parent, level=3, fleet_table=fleets.get(exp))
            for exp in images
        ]
        _splice(md, "\n\n".join(body))
    return report
