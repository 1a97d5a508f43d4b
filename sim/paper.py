"""``python -m sim.paper``: the KVFlow paper reproduction protocol (issue 14 item 2).

Fits exactly one free parameter, ``engine.host_gather_gbps`` of ``engine=sglang_0.4`` (the CPU
gather of the paper's engine: UNCONFIRMED, docs/engines.md), on one paper number: H100,
Qwen2.5-32B, 4096/32/32, KVFlow vs SGLang+HiCache 1.24x (``experiment=paper_single
setup=h100_qwen32b``). The speedup need not be monotone in the rate, so the fit scans a log-spaced
grid first (the curve is reported), then bisects, on a log scale, the bracket of the crossing at the
highest rate (the least pessimistic data path that reproduces the target); with no crossing, a
golden-section search minimises the distance around the closest grid point. With that one value it
*predicts* every other number of the paper's table (``analysis.paper.REFERENCES``, the mapping
kvflow-report prints beside its tables) from the presets' own sweeps (``paper_single`` on both
setups, ``paper_concurrent``, ``paper_peer``; conf/experiment), and prints predicted vs paper with
the relative error and whether it is within 15%. Nothing else is tuned.

How a paper number is predicted from the settings it matches: "up to" = the maximum over them,
"avg" = their mean, the H100 ablation (lengths not given by the paper) = fixed 8192 / output 32 (the
H100 setting the paper ran besides the fit point), any other number = the mean of its matches.
Writes ``paper_fit.json`` and ``paper_fit.md`` into ``--out`` and, with ``--results-md``, the block
between ``<!-- BEGIN sim.paper -->`` and ``<!-- END sim.paper -->`` of that file. Deterministic;
progress on stderr; ``--quick`` runs a few small settings (tests).
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib.resources import files
from pathlib import Path
from typing import Any

import yaml

from analysis.paper import REFERENCES, SOURCE, Reference, matches
from harness.errors import SetupError
from harness.run_dir import splice_block, write_atomic, write_json_atomic
from harness.setup import build_trace
from sim.runner import simulate

FIT_PARAMETER = "engine.host_gather_gbps"
FIT_EXPERIMENT = "paper_single"
FIT_SETTING = {"setup": "h100_qwen32b", "workload.params.fixed_tokens": "4096", "workload.params.output_tokens": "32"}
FIT_POLICY, FIT_BASELINE = "kvflow", "hicache"
EXPERIMENTS = ("paper_single", "paper_concurrent", "paper_peer")
ABLATION_SETTING = {"fixed_tokens": 8192, "output_tokens": 32}
WITHIN = 0.15  # the acceptance threshold on every predicted ratio
DEFAULT_GRID = "0.125:64:19"  # GB/s, log-spaced: half octaves from 1/8 to 64
QUICK_GRID = "0.5:32:7"
QUICK_OVERRIDES = {  # --quick: a few small settings of each preset (tests; the table stays mostly empty)
    "paper_single": {"workload.params.output_tokens": "32", "workload.params.runs": "2"},
    "paper_concurrent": {"workload.params.workflows": "8", "workload.params.fixed_tokens": "1024"},
    "paper_peer": {"workload.params.workflows": "8"},
}
BEGIN = "<!-- BEGIN sim.paper -->"
END = "<!-- END sim.paper -->"


class UsageError(Exception):
    """A bad command-line argument (one line, exit 2)."""


# -- the 1-D search ------------------------------------------------------------------------------
@dataclass
class Fit:
    """The fitted value, what it gives, the scanned curve and every crossing bracket found."""

    value: float
    achieved: float
    target: float
    curve: list[tuple[float, float]]
    brackets: list[tuple[float, float]]
    method: str
    evaluations: int = 0


def log_grid(lo: float, hi: float, points: int) -> list[float]:
    """``points`` values from ``lo`` to ``hi``, evenly spaced in log."""
    step = math.log(hi / lo) / (points - 1)
    return [lo * math.exp(i * step) for i in range(points)]


def bisect_log(f: Callable[[float], float], lo: float, hi: float, target: float, rel_tol: float = 1e-3) -> float:
    """The crossing of ``f = target`` between ``lo`` and ``hi`` (signs of ``f - target`` differ),
    halving the bracket in log until ``hi / lo <= 1 + rel_tol``; then the end nearer the target."""
    below = f(lo) < target
    while hi / lo > 1 + rel_tol:
        mid = math.sqrt(lo * hi)
        if (f(mid) < target) == below:
            lo = mid
        else:
            hi = mid
    return min((lo, hi), key=lambda x: abs(f(x) - target))  # f may jump: the side nearer the target


def golden_log(f: Callable[[float], float], lo: float, hi: float, rel_tol: float = 1e-3) -> float:
    """The minimiser of ``f`` on [lo, hi] by golden-section search in log."""
    inv_phi = (math.sqrt(5) - 1) / 2
    a, b = math.log(lo), math.log(hi)
    while b - a > math.log1p(rel_tol):
        c, d = b - inv_phi * (b - a), a + inv_phi * (b - a)
        if f(math.exp(c)) <= f(math.exp(d)):
            b = d
        else:
            a = c
    return math.exp((a + b) / 2)


def fit_one(f: Callable[[float], float], target: float, grid: Sequence[float], rel_tol: float = 1e-3) -> Fit:
    """Scan ``grid``, then refine: bisection in the highest crossing bracket, else golden section
    on ``|f - target|`` around the closest grid point."""
    memo: dict[float, float] = {}

    def g(x: float) -> float:
        if x not in memo:
            memo[x] = f(x)
        return memo[x]

    curve = [(x, g(x)) for x in grid]
    brackets = [(a, b) for (a, fa), (b, fb) in zip(curve, curve[1:]) if (fa - target) * (fb - target) <= 0]
    if brackets:
        lo, hi = brackets[-1]
        value, method = bisect_log(g, lo, hi, target, rel_tol), "bisection in the highest crossing bracket"
    else:
        i = min(range(len(curve)), key=lambda k: abs(curve[k][1] - target))
        lo, hi = grid[max(i - 1, 0)], grid[min(i + 1, len(grid) - 1)]
        value, method = golden_log(lambda x: abs(g(x) - target), lo, hi, rel_tol), "golden section (no crossing)"
    return Fit(value, g(value), target, curve, brackets, method, len(memo))


# -- the presets and their runs ------------------------------------------------------------------
@dataclass
class Setting:
    """One point of a preset's sweep: its overrides, the composed config per policy, one trace."""

    experiment: str
    overrides: dict[str, str]
    configs: dict[str, dict[str, Any]]
    trace: Any
    latency_s: dict[str, float] = field(default_factory=dict)

    def context(self) -> dict[str, Any]:
        """What ``analysis.paper.matches`` compares: generator, hardware, model, lengths, workflows."""
        cfg = next(iter(self.configs.values()))
        return {
            "generator": cfg["workload"].get("generator"),
            "hardware": cfg["hardware"]["name"],
            "model": cfg["model"]["name"],
            **dict(cfg["workload"].get("params") or {}),
        }

    def label(self) -> str:
        return " ".join([self.experiment, *(f"{k.rsplit('.', 1)[-1]}={v}" for k, v in self.overrides.items())])


def preset_sweep(experiment: str) -> dict[str, list[str]]:
    """The preset's own ``hydra.sweeper.params`` (conf/experiment/<name>.yaml), values as strings."""
    data = yaml.safe_load((files("conf") / "experiment" / f"{experiment}.yaml").read_text())
    params = ((data.get("hydra") or {}).get("sweeper") or {}).get("params") or {}
    return {str(k): [v.strip() for v in str(vals).split(",")] for k, vals in params.items()}


def needed_policies() -> set[str]:
    return {r.policy for r in REFERENCES} | {r.baseline for r in REFERENCES}


def sweep_points(experiment: str, quick: bool) -> list[dict[str, str]]:
    """Every combination of the preset's sweep (policies apart), narrowed by ``--quick``."""
    sweep = {k: v for k, v in preset_sweep(experiment).items() if k != "policy"}
    if quick:
        sweep.update({k: [v] for k, v in QUICK_OVERRIDES.get(experiment, {}).items()})
    points: list[dict[str, str]] = [{}]
    for key, values in sweep.items():
        points = [{**p, key: v} for p in points for v in values]
    return points


def policies_of(experiment: str) -> list[str]:
    """The preset's policies that some paper number compares (the clairvoyant column is not one)."""
    return [p for p in preset_sweep(experiment).get("policy", []) if p in needed_policies()]


def compose_all(requests: Iterable[tuple[str, dict[str, str], str]]) -> list[dict[str, Any]]:
    """Hydra's composition of conf/config.yaml for each (experiment, overrides, policy), as kvflow-sim
    would run it (timeline off: nothing here reads it); every config checked by the schema."""
    from hydra import compose, initialize_config_module
    from omegaconf import OmegaConf

    from harness.config_schema import validate_config

    out = []
    with initialize_config_module(config_module="conf", version_base=None):
        for experiment, overrides, policy in requests:
            args = [f"experiment={experiment}", f"policy={policy}", "sim.timeline=false"]
            cfg = compose(config_name="config", overrides=args + [f"{k}={v}" for k, v in overrides.items()])
            plain: dict[str, Any] = OmegaConf.to_container(cfg, resolve=True)  # type: ignore[assignment]
            validate_config(plain)
            if plain["engine"].get("kind") != "sglang_0.4":
                raise SetupError(f"experiment {experiment!r}: engine {plain['engine'].get('kind')!r}, not sglang_0.4")
            out.append(plain)
    return out


def build_settings(quick: bool) -> tuple[Setting, list[Setting]]:
    """The fit setting (kvflow and hicache) and every predicted setting, composed and traced."""
    plan = [(FIT_EXPERIMENT, FIT_SETTING, [FIT_POLICY, FIT_BASELINE])]
    plan += [(e, point, policies_of(e)) for e in EXPERIMENTS for point in sweep_points(e, quick)]
    if quick:
        plan[0] = (FIT_EXPERIMENT, {**FIT_SETTING, **QUICK_OVERRIDES[FIT_EXPERIMENT]}, plan[0][2])
    configs = iter(compose_all((e, point, p) for e, point, policies in plan for p in policies))
    settings = []
    for experiment, point, policies in plan:
        by_policy = {p: next(configs) for p in policies}
        first = next(iter(by_policy.values()))
        settings.append(Setting(experiment, point, by_policy, build_trace(first["workload"], first["seed"])))
    return settings[0], settings[1:]


def run_setting(setting: Setting, gather_gbps: float) -> dict[str, float]:
    """Mean end-to-end workflow latency of each policy with the 0.4 gather rate set to ``gather_gbps``."""
    out = {}
    for policy, cfg in setting.configs.items():
        cfg = {**cfg, "engine": {**cfg["engine"], "host_gather_gbps": gather_gbps}}
        out[policy] = float(simulate(cfg, trace=setting.trace).summary["workflow_latency_mean_s"])
    return out


# -- predictions against the paper ---------------------------------------------------------------
@dataclass
class Row:
    """One paper number, its prediction and the settings it came from."""

    ref: Reference
    predicted: float | None
    how: str
    settings: list[str]
    fitted: bool = False

    @property
    def rel_error(self) -> float | None:
        return None if self.predicted is None else self.predicted / self.ref.speedup - 1

    @property
    def within(self) -> bool | None:
        err = self.rel_error
        return None if err is None else abs(err) <= WITHIN


def fit_reference() -> Reference:
    """The paper number the one parameter is fitted on (H100, Qwen2.5-32B, 4096/32/32, vs HiCache)."""
    return next(
        r
        for r in REFERENCES
        if r.policy == FIT_POLICY and r.baseline == FIT_BASELINE and r.match.get("fixed_tokens") == 4096
    )


def predict(ref: Reference, settings: Sequence[Setting]) -> Row:
    """Aggregate the speedups of the settings ``ref`` matches (see the module docstring)."""
    found = []
    for s in settings:
        ctx, lat = s.context(), s.latency_s
        if ref.qualifier == "ablation" and any(ctx.get(k) != v for k, v in ABLATION_SETTING.items()):
            continue
        if ref.policy in lat and ref.baseline in lat and ref in matches(ctx, ref.policy, ref.baseline):
            found.append((s.label(), lat[ref.baseline] / lat[ref.policy]))
    fitted = ref == fit_reference()
    if not found:
        return Row(ref, None, "no matching setting run", [], fitted)
    values = [v for _, v in found]
    labels = [label for label, _ in found]
    if ref.qualifier == "up to":
        return Row(ref, max(values), f"max over {len(values)} setting{'s' * (len(values) > 1)}", labels, fitted)
    how = "1 setting" if len(values) == 1 else f"mean of {len(values)} settings"
    return Row(ref, statistics.fmean(values), how, labels, fitted)


# -- the protocol, its files and its command line ------------------------------------------------
def run_protocol(
    grid: Sequence[float], quick: bool = False, log: Callable[[str], None] | None = None
) -> dict[str, Any]:
    """Fit the one parameter, predict every paper number; everything the files need, as plain data."""
    say = log or (lambda line: print(f"sim.paper: {line}", file=sys.stderr))
    fit_setting, settings = build_settings(quick)
    say(f"{len(settings)} settings, {sum(len(s.configs) for s in settings)} runs to predict with; fitting first")

    def speedup(gather_gbps: float) -> float:
        lat = run_setting(fit_setting, gather_gbps)
        value = lat[FIT_BASELINE] / lat[FIT_POLICY]
        say(f"fit: host_gather_gbps {gather_gbps:8.4f} GB/s -> {FIT_POLICY} vs {FIT_BASELINE} {value:.4f}x")
        return value

    fit = fit_one(speedup, fit_reference().speedup, grid, rel_tol=1e-2 if quick else 1e-3)
    say(f"fitted host_gather_gbps = {fit.value:.4g} GB/s ({fit.method}, {fit.evaluations} evaluations)")
    for i, s in enumerate(settings, 1):
        s.latency_s = run_setting(s, fit.value)
        say(f"[{i}/{len(settings)}] {s.label()}: " + ", ".join(f"{p} {v:.2f} s" for p, v in s.latency_s.items()))
    rows = [predict(r, settings) for r in REFERENCES]
    return _as_data(fit, rows, settings, quick)


def _as_data(fit: Fit, rows: Sequence[Row], settings: Sequence[Setting], quick: bool) -> dict[str, Any]:
    ref = fit_reference()
    return {
        "source": SOURCE,
        "quick": quick,
        "fit": {
            "parameter": FIT_PARAMETER,
            "engine": "sglang_0.4",
            "target": {"setting": ref.setting, "policy": ref.policy, "baseline": ref.baseline, "paper": ref.speedup},
            "fit_setting": {"experiment": FIT_EXPERIMENT, **FIT_SETTING},
            "value_gbps": fit.value,
            "achieved": fit.achieved,
            "method": fit.method,
            "evaluations": fit.evaluations,
            "curve": [{"gbps": g, "speedup": s} for g, s in fit.curve],
            "crossing_brackets_gbps": [list(b) for b in fit.brackets],
        },
        "rows": [
            {
                "setting": r.ref.setting,
                "policy": r.ref.policy,
                "baseline": r.ref.baseline,
                "qualifier": r.ref.qualifier,
                "paper": r.ref.speedup,
                "predicted": r.predicted,
                "rel_error": r.rel_error,
                "within_15pct": r.within,
                "fitted": r.fitted,
                "how": r.how,
                "from_settings": r.settings,
            }
            for r in rows
        ],
        "settings": [
            {"label": s.label(), "experiment": s.experiment, **s.overrides, "latency_s": s.latency_s} for s in settings
        ],
    }


def _x(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f}x"


def markdown(data: Mapping[str, Any]) -> str:
    """The fit, the table of paper numbers (predicted vs paper) and each setting's latencies."""
    fit, rows = data["fit"], data["rows"]
    predicted = [r for r in rows if r["predicted"] is not None and not r["fitted"]]
    ok = sum(1 for r in predicted if r["within_15pct"])
    lines = [
        f"One fitted parameter: `{fit['parameter']}` = **{fit['value_gbps']:.3g} GB/s** (`engine={fit['engine']}`), "
        f"fitted on {fit['target']['setting']}, {fit['target']['policy']} vs {fit['target']['baseline']}: paper "
        f"{fit['target']['paper']:.2f}x, simulated {fit['achieved']:.3f}x ({fit['method']}, {fit['evaluations']} "
        "evaluations). Everything else is as committed in conf/; nothing else was fitted. "
        f"{ok} of {len(predicted)} predicted numbers are within {WITHIN:.0%} of the paper's."
        + (" (`--quick`: a few small settings; not the protocol's numbers.)" if data["quick"] else ""),
        "",
        "| paper number | policy vs baseline | paper | predicted | error | within 15% | from |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        err = "—" if r["rel_error"] is None else f"{round(100 * r['rel_error']):+d}%"
        within = "fit target" if r["fitted"] else {True: "yes", False: "**no**", None: "—"}[r["within_15pct"]]
        qual = f" ({r['qualifier']})" if r["qualifier"] else ""
        paper = f"{'up to ' if r['qualifier'] == 'up to' else ''}{r['paper']:.2f}x"
        lines.append(
            f"| {r['setting']}{qual} | {r['policy']} vs {r['baseline']} | {paper} | {_x(r['predicted'])} | {err} "
            f"| {within} | {r['how']} |"
        )
    lines += ["", "Fit curve (the fit setting, kvflow vs hicache at each scanned rate):", ""]
    lines += ["| host_gather_gbps | " + " | ".join(f"{p['gbps']:.3g}" for p in fit["curve"]) + " |"]
    lines += ["|---|" + "---|" * len(fit["curve"])]
    lines += ["| speedup | " + " | ".join(f"{p['speedup']:.3f}" for p in fit["curve"]) + " |"]
    return "\n".join(lines + ["", *_settings_table(data["settings"])])


def _settings_table(settings: Sequence[Mapping[str, Any]]) -> list[str]:
    order = ("sglang", "hicache", "kvflow_evict_only", "kvflow")  # baselines first, as kvflow-report
    policies = sorted(
        {p for s in settings for p in s["latency_s"]},
        key=lambda p: (p not in order, order.index(p) if p in order else 0, p),
    )
    lines = [
        "Every setting at the fitted value (mean end-to-end workflow latency, s):",
        "",
        "| setting | " + " | ".join(policies) + " |",
        "|---|" + "---|" * len(policies),
    ]
    for s in settings:
        cells = [f"{s['latency_s'][p]:.2f}" if p in s["latency_s"] else "—" for p in policies]
        lines.append(f"| {s['label']} | " + " | ".join(cells) + " |")
    return lines


def splice(path: Path, body: str) -> None:
    """Replace the block between ``BEGIN`` and ``END`` of ``path``, keeping the hand-written rest (a
    file without the markers gets the block appended; a missing file is created)."""
    splice_block(path, body, BEGIN, END)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(message)


def parse_grid(text: str) -> list[float]:
    """``LO:HI:N`` (GB/s): N >= 2 log-spaced rates, 0 < LO < HI."""
    parts = text.split(":")
    try:
        if len(parts) != 3:
            raise ValueError(text)
        lo, hi, n = float(parts[0]), float(parts[1]), int(parts[2])
    except (ValueError, IndexError):
        raise UsageError(f"--grid {text!r}: expected LO:HI:N, e.g. {DEFAULT_GRID}") from None
    if not (0 < lo < hi and math.isfinite(hi) and n >= 2):
        raise UsageError(f"--grid {text!r}: needs 0 < LO < HI and N >= 2")
    return log_grid(lo, hi, n)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = _Parser(
        prog="python -m sim.paper", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="a few small settings and a coarse grid (tests)")
    parser.add_argument("--out", type=Path, default=Path("docs/results"), help="where paper_fit.json/.md go")
    parser.add_argument("--results-md", type=Path, help="also rewrite the sim.paper block of this markdown file")
    parser.add_argument(
        "--grid", help=f"fit scan LO:HI:N in GB/s, log-spaced (default {DEFAULT_GRID}, quick {QUICK_GRID})"
    )
    args = parser.parse_args(argv)
    args.grid_gbps = parse_grid(args.grid or (QUICK_GRID if args.quick else DEFAULT_GRID))
    for path, flag in ((args.out, "--out"), (args.results_md, "--results-md")):
        if path is not None and (path.is_file() if flag == "--out" else path.is_dir()):
            raise UsageError(f"{flag} {str(path)!r}: is a {'file' if flag == '--out' else 'directory'}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = parse_args(argv)
    except UsageError as exc:
        print(f"sim.paper: error: {exc}", file=sys.stderr)
        return 2
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    wall0 = time.perf_counter()
    try:
        data = run_protocol(args.grid_gbps, quick=args.quick)
        body = markdown(data)
        args.out.mkdir(parents=True, exist_ok=True)
        write_json_atomic(args.out / "paper_fit.json", data)
        write_atomic(args.out / "paper_fit.md", f"# Paper reproduction protocol (`python -m sim.paper`)\n\n{body}\n")
        if args.results_md:
            regen = f"Regenerate with `python -m sim.paper --results-md {args.results_md}` (also writes {args.out}/paper_fit.json and .md)."
            splice(args.results_md, f"{regen}\n\n{body}")
    except (SetupError, ValueError, OSError, HydraException, OmegaConfBaseException) as exc:
        print(f"sim.paper: error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2
    print(body)
    print(f"sim.paper: done in {time.perf_counter() - wall0:.1f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
