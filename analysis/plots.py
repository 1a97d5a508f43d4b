"""PNG plots meant to be read at a glance: labelled axes with units, a legend, a title, and a dashed
baseline at 1.0 on every speedup plot.

Uses ``matplotlib.figure.Figure`` directly (the Agg canvas, no pyplot state), so plotting works
headless, in threads and inside Hydra jobs without touching the user's backend.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from analysis.speedup import policy_order, sort_key, varying
from harness.run_dir import atomic_output

DPI = 110
AXIS_LABELS = {
    "fixed_tokens": "fixed-prompt length per agent (tokens)",
    "output_tokens": "output length per request (tokens)",
    "workflows": "concurrent workflows",
}
TIMELINE_COLORS = {
    "prefill": "tab:blue",
    "decode": "tab:cyan",
    "load": "tab:red",
    "prefetch": "tab:green",
    "offload": "tab:orange",
}
TIMELINE_ROWS = ("d2h", "h2d", "gpu")  # bottom to top
TIMELINE_MAX_INTERVALS = 3000  # beyond this the bars blur: show the first window that fits
POLICY_COLORS = {
    "sglang": "tab:purple",
    "hicache": "tab:blue",
    "kvflow_evict_only": "tab:cyan",
    "kvflow": "tab:orange",
    "clairvoyant": "tab:green",
    "kvflow_inferred": "tab:brown",
    "kvflow_cost": "tab:red",
    "kvflow_gd": "tab:pink",
}  # same colour for a policy in every plot, no two alike
SPARE_COLORS = ("tab:olive", "tab:gray", "black", "gold", "navy", "teal", "maroon", "lime")
# markers and dashes too, so policies with identical results (kvflow and clairvoyant) stay visible
POLICY_STYLES = {
    "sglang": ("v", ":"),
    "hicache": ("s", "-."),
    "kvflow_evict_only": ("^", "--"),
    "kvflow": ("o", "-"),
    "clairvoyant": ("x", (0, (4, 3))),
    "kvflow_inferred": ("D", (0, (1, 1))),
    "kvflow_cost": ("P", (0, (5, 1, 1, 1))),
    "kvflow_gd": ("*", (0, (3, 1, 1, 1, 1, 1))),
}


def policy_color(policy: str, others: Sequence[str] = ()) -> str:
    """The policy's fixed colour; a policy without one gets the first spare colour not taken by
    another unknown policy among ``others`` (the policies of the same plot, in plot order)."""
    if policy in POLICY_COLORS:
        return POLICY_COLORS[policy]
    unknown = [p for p in dict.fromkeys(others) if p not in POLICY_COLORS]
    index = unknown.index(policy) if policy in unknown else len(unknown)
    return SPARE_COLORS[index % len(SPARE_COLORS)]


def runs_note(edf: pd.DataFrame) -> str:
    """What each bar is: one run, or a mean over several runs of that policy."""
    counts = set(edf.groupby("policy").size().tolist()) if "policy" in edf.columns else set()
    if counts == {1}:
        return "one run per policy"
    if len(counts) == 1:
        return f"mean over {counts.pop()} runs per policy"
    return "mean over each policy's runs"


MAX_PANELS = 9
MAX_BAR_SETTINGS = 12


def short(name: str) -> str:
    """``workload.params.fixed_tokens`` -> ``fixed_tokens`` (labels must fit under a bar)."""
    return str(name).rsplit(".", 1)[-1]


def value_text(v: Any) -> str:
    """128.0 -> "128": integer parameters turn float when other runs lack them (NaN)."""
    return str(int(v)) if isinstance(v, float) and v.is_integer() else str(v)


def label(values: Mapping[str, Any]) -> str:
    return ", ".join(f"{short(k)}={value_text(v)}" for k, v in values.items()) or "all runs"


def _save(fig: Figure, path: Path) -> Path:
    with atomic_output(path) as tmp:  # a failed save keeps the previous plot
        fig.savefig(tmp, dpi=DPI, bbox_inches="tight", format=path.suffix.lstrip(".") or "png")
    return path


def _baseline_line(ax: Any, baseline: str) -> None:
    ax.axhline(1.0, color="gray", linestyle="--", linewidth=1.2, label=f"{baseline} (1.0x)")


def _same_as(e: pd.DataFrame, col: str, x: str) -> bool:
    """A swept column that just restates the x axis (``workload.params.fixed_tokens`` vs
    ``fixed_tokens``) must not split the plot into panels."""
    if short(col) == x:
        return True
    pairs = e[[col, x]].astype(str).drop_duplicates()
    return len(pairs) == e[col].astype(str).nunique() == e[x].astype(str).nunique()


def speedup_vs(long: pd.DataFrame, experiment: str, x: str, path: Path) -> Path | None:
    """Speedup over the baseline vs ``x``: one line per policy, one panel per combination of the
    other varying parameters. None when the experiment does not vary ``x``."""
    baseline = long.attrs.get("baseline", "baseline")
    e = long[(long["experiment"] == experiment) & (long["policy"] != baseline)].dropna(subset=["speedup"])
    if e.empty or x not in e.columns or e[x].astype(str).nunique() < 2:
        return None
    e = e[pd.to_numeric(e[x], errors="coerce").notna()]
    facets = [c for c in varying(e, long.attrs.get("params", {}).get(experiment, [])) if not _same_as(e, c, x)]
    panels = [((), e)] if not facets else list(e.groupby(facets, dropna=False, sort=False))
    panels = sorted(panels, key=lambda p: [sort_key(v) for v in (p[0] if isinstance(p[0], tuple) else (p[0],))])
    shown = panels[:MAX_PANELS]
    cols = min(3, len(shown))
    rows = math.ceil(len(shown) / cols)
    fig = Figure(figsize=(5.2 * cols, 3.8 * rows), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax, (values, g) in zip(axes, shown):
        values = values if isinstance(values, tuple) else (values,)
        for policy in policy_order(g["policy"].astype(str).tolist()):
            p = g[g["policy"] == policy].assign(_x=lambda d: pd.to_numeric(d[x]))
            p = p.groupby("_x", as_index=False)["speedup"].mean().sort_values("_x")
            marker, dashes = POLICY_STYLES.get(policy, ("o", "-"))
            ax.plot(
                p["_x"],
                p["speedup"],
                marker=marker,
                linestyle=dashes,
                label=policy,
                color=policy_color(policy, g["policy"].astype(str).tolist()),
                markersize=7,
                linewidth=1.6,
            )
        _baseline_line(ax, baseline)
        ax.set_xlabel(AXIS_LABELS.get(x, x))
        ax.set_ylabel(f"speedup over {baseline} (x)")
        if facets:
            ax.set_title(label(dict(zip(facets, values))), fontsize=9)
        ax.grid(alpha=0.3)
    for ax in axes[len(shown) :]:
        ax.set_visible(False)
    handles, names = axes[0].get_legend_handles_labels()
    fig.legend(handles, names, loc="outside right upper", fontsize=8, title="policy")
    more = f" (first {MAX_PANELS} of {len(panels)} panels)" if len(panels) > len(shown) else ""
    fig.suptitle(f"{experiment}: speedup over {baseline} vs {AXIS_LABELS.get(x, x)}{more}")
    return _save(fig, path)


def speedup_bars(long: pd.DataFrame, experiment: str, path: Path) -> Path | None:
    """Speedup of every policy at every setting as grouped bars (the one plot a single setting gets)."""
    baseline = long.attrs.get("baseline", "baseline")
    e = long[(long["experiment"] == experiment) & (long["policy"] != baseline)].dropna(subset=["speedup"])
    if e.empty:
        return None
    vary = varying(e, long.attrs.get("params", {}).get(experiment, []))
    settings = [((), e)] if not vary else list(e.groupby(vary, dropna=False, sort=False))
    settings = sorted(settings, key=lambda s: [sort_key(v) for v in (s[0] if isinstance(s[0], tuple) else (s[0],))])
    if len(settings) > MAX_BAR_SETTINGS:
        return None
    policies = policy_order(e["policy"].astype(str).tolist())
    width = min(0.8, 0.25 * len(policies)) / len(policies)
    fig = Figure(figsize=(min(14.0, max(6.0, 0.45 * len(settings) * len(policies) + 2)), 4.4), layout="constrained")
    ax = fig.subplots()
    for i, policy in enumerate(policies):
        heights = [g.loc[g["policy"] == policy, "speedup"].mean() for _, g in settings]
        xs = [j + (i - (len(policies) - 1) / 2) * width for j in range(len(settings))]
        bars = ax.bar(xs, heights, width, label=policy, color=policy_color(policy, policies))
        ax.bar_label(bars, fmt="%.2f", fontsize=7)
    names = [label(dict(zip(vary, v if isinstance(v, tuple) else (v,)))) for v, _ in settings]
    ax.set_xticks(range(len(settings)), [n.replace(", ", "\n") for n in names], fontsize=8)
    _baseline_line(ax, baseline)
    ax.set_ylabel(f"speedup over {baseline} (x)")
    ax.set_title(f"{experiment}: speedup over {baseline} per setting (end-to-end workflow latency)")
    fig.legend(loc="outside right upper", fontsize=8, title="policy")
    ax.grid(axis="y", alpha=0.3)
    return _save(fig, path)


def _per_policy_means(edf: pd.DataFrame, columns: Sequence[str]) -> pd.DataFrame:
    cols = [c for c in columns if c in edf.columns]
    means = edf.groupby("policy")[cols].mean(numeric_only=True)
    return means.reindex(policy_order(means.index.astype(str).tolist()))


def hit_rates(edf: pd.DataFrame, experiment: str, path: Path) -> Path | None:
    """Where each policy's prompt tokens came from: GPU hit, CPU load-back, recompute (stacked)."""
    tiers = {
        "hit_rate_gpu": ("GPU hit", "tab:green"),
        "hit_rate_cpu": ("loaded from CPU", "gold"),
        "recompute_rate": ("recomputed", "tab:red"),
    }
    m = _per_policy_means(edf, list(tiers))
    if m.empty or m.shape[1] == 0:
        return None
    fig = Figure(figsize=(max(5.5, 1.2 * len(m) + 2), 4.2), layout="constrained")
    ax = fig.subplots()
    bottom = [0.0] * len(m)
    for col, (name, color) in tiers.items():
        if col in m.columns:
            vals = (m[col].fillna(0) * 100).tolist()
            ax.bar(m.index.astype(str), vals, bottom=bottom, label=name, color=color)
            bottom = [b + v for b, v in zip(bottom, vals)]
    ax.set_ylabel("share of prompt tokens (%)")
    ax.set_xlabel("policy")
    ax.set_ylim(0, 105)
    ax.set_title(f"{experiment}: prompt tokens by tier ({runs_note(edf)})")
    fig.legend(fontsize=8, loc="outside right upper")  # outside the axes: never over bars or title
    return _save(fig, path)


def pcie_bytes(edf: pd.DataFrame, experiment: str, path: Path) -> Path | None:
    """PCIe traffic per policy and direction (H2D loads/prefetches, D2H offloads), GB per run."""
    m = _per_policy_means(edf, ["h2d_bytes", "d2h_bytes"])
    if m.empty or m.shape[1] == 0:
        return None
    fig = Figure(figsize=(max(5.5, 1.2 * len(m) + 2), 4.2), layout="constrained")
    ax = fig.subplots()
    names = {"h2d_bytes": "H2D (CPU->GPU: load, prefetch)", "d2h_bytes": "D2H (GPU->CPU: offload)"}
    width = 0.8 / m.shape[1]
    for i, col in enumerate(m.columns):
        xs = [j + (i - (m.shape[1] - 1) / 2) * width for j in range(len(m))]
        bars = ax.bar(xs, (m[col].fillna(0) / 1e9).tolist(), width, label=names.get(col, col))
        ax.bar_label(bars, fmt="%.1f", fontsize=7)
    ax.set_xticks(range(len(m)), m.index.astype(str))
    ax.set_ylabel("PCIe traffic per run (GB)")
    ax.set_xlabel("policy")
    ax.set_title(f"{experiment}: PCIe bytes per policy ({runs_note(edf)})")
    fig.legend(fontsize=8, loc="outside right upper")
    return _save(fig, path)


def latency_cdf(latencies: Mapping[str, Sequence[float]], title: str, path: Path) -> Path | None:
    """Per-request latency CDF, one line per policy (requests of one setting)."""
    if not any(len(v) for v in latencies.values()):
        return None
    fig = Figure(figsize=(6.4, 4.2), layout="constrained")
    ax = fig.subplots()
    right = 0.0
    for policy in policy_order(list(latencies)):
        vals = sorted(float(v) for v in latencies[policy])
        if vals:
            right = max(right, vals[-1])
            ax.step(
                [vals[0]] + vals,
                [0.0] + [(i + 1) / len(vals) for i in range(len(vals))],
                where="post",
                label=policy,
                color=policy_color(policy, list(latencies)),
                linestyle=POLICY_STYLES.get(policy, ("", "-"))[1],
            )
    ax.set_xlabel("request latency (s, arrival to last token)")
    ax.set_ylabel("fraction of requests")
    ax.set_ylim(0, 1.02)
    ax.set_xlim(0, right * 1.08 or 1.0)
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    fig.legend(fontsize=8, loc="outside right upper", title="policy")
    return _save(fig, path)


def _window(t: pd.DataFrame) -> pd.DataFrame:
    t = t.sort_values("start_s")
    if len(t) <= TIMELINE_MAX_INTERVALS:
        return t
    end = t["start_s"].iloc[TIMELINE_MAX_INTERVALS - 1]
    return t[t["start_s"] <= end]


def timeline(t: pd.DataFrame, title: str, path: Path) -> Path | None:
    """Gantt-like view of GPU compute, H2D and D2H copies: prefetch bars on the H2D row that sit
    under GPU bars are the overlap KVFlow is built for."""
    need = {"resource", "start_s", "end_s", "label"}
    if t.empty or not need <= set(t.columns):
        return None
    t = _window(t.assign(resource=t["resource"].astype(str).str.lower(), label=t["label"].astype(str)))
    fig = Figure(figsize=(11, 3.4), layout="constrained")
    ax = fig.subplots()
    seen: dict[str, str] = {}
    for y, res in enumerate(TIMELINE_ROWS):
        r = t[t["resource"] == res]
        for lab, g in r.groupby("label"):
            color = TIMELINE_COLORS.get(str(lab), "tab:gray")
            spans = list(zip(g["start_s"], (g["end_s"] - g["start_s"]).clip(lower=0)))
            ax.broken_barh(spans, (y - 0.38, 0.76), facecolors=color, edgecolors="white", linewidth=0.4)
            seen[str(lab)] = color
    ax.set_yticks(range(len(TIMELINE_ROWS)), ["D2H copy", "H2D copy", "GPU compute"])
    ax.set_xlabel("simulated time (s)")
    ax.set_title(title, fontsize=10)
    ax.legend(
        handles=[Patch(color=c, label=lab) for lab, c in seen.items()],
        fontsize=8,
        loc="upper left",
        bbox_to_anchor=(1.0, 1.0),
    )
    ax.grid(axis="x", alpha=0.3)
    return _save(fig, path)


ROUTER_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")


def fleet(table: pd.DataFrame, title: str, path: Path) -> Path | None:
    """Mean workflow latency (top) and GPU hit rate (bottom) vs replicas (``analysis.fleet``'s
    table): a column of panels per policy (and setting), one line per router."""
    from analysis.fleet import router_lines

    setting = list(table.attrs.get("setting", []))
    panels = list(table.groupby(setting + ["policy"], sort=False)) if len(table) else []
    if not panels or "workflow_latency_mean_s" not in table.columns:
        return None
    fig = Figure(figsize=(3.6 * len(panels) + 1.8, 6.2), layout="constrained")
    axes = fig.subplots(2, len(panels), squeeze=False, sharex=True)
    for j, (values, p) in enumerate(panels):
        values = values if isinstance(values, tuple) else (values,)
        name = label(dict(zip(setting, values[:-1]))) if setting else ""
        _fleet_panel(axes[:, j], router_lines(p), f"{values[-1]}" + (f" ({name})" if name else ""))
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, title="router", fontsize=8, loc="outside right upper")
    fig.suptitle(title)
    return _save(fig, path)


def _fleet_panel(axes: Any, lines: Mapping[str, pd.DataFrame], name: str) -> None:
    top, bottom = axes
    replicas: set[int] = set()
    for i, (router, line) in enumerate(lines.items()):
        style = {"marker": ROUTER_MARKERS[i % len(ROUTER_MARKERS)], "label": router, "linewidth": 1.4}
        top.plot(line["replicas"], line["workflow_latency_mean_s"], **style)
        if "hit_rate_gpu" in line.columns:
            bottom.plot(line["replicas"], line["hit_rate_gpu"] * 100, **style)
        replicas |= {int(n) for n in line["replicas"]}
    top.set_title(name, fontsize=9)
    top.set_ylabel("mean workflow latency (s)")
    bottom.set_ylabel("GPU hit (% of prompt tokens)")
    bottom.set_xlabel("replicas")
    bottom.set_xscale("log", base=2)
    bottom.set_xticks(sorted(replicas), [str(t) for t in sorted(replicas)])
    for ax in axes:
        ax.grid(True, alpha=0.3)
