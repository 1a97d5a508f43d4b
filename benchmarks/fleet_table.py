"""Fleet table: Weka coding-agent sessions on 1/2/4/8 replicas x each router x {hicache, kvflow, kvflow_sessions}.

Prints, per (replicas, router, policy), mean and p99 session latency, mean TTFT and queueing, GPU and
CPU hit and the most loaded replica's share of requests, then the winners per replica count (the
best router+policy pair by mean session latency, its margin over the runner-up and over
round_robin+hicache). One replica is the single engine whatever the router (tests/test_fleet.py),
so it runs once per policy (router ``any``). The workload is ``experiment=coding_agents``: the
held-out ``--split test`` sessions (every 5th session file) of the first ``--files`` files of the
folder (default: all of them), started faster than the preset (``--rate``) so that the split still
loads eight replicas. Runs in ``--jobs`` forked processes (the imported trace is shared).

Usage: python benchmarks/fleet_table.py [--files N] [--rate 0.1] [--replicas 1,2,4,8]
    [--policies hicache,kvflow,kvflow_sessions] [--jobs 2] [--json PATH] [--results-md PATH] [--plot PATH]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra import compose, initialize_config_module
from omegaconf import OmegaConf

from harness.run_dir import splice_block, write_atomic
from harness.setup import build_trace
from sim.routers import ROUTERS
from sim.runner import simulate

REPO = Path(__file__).resolve().parents[1]
BEGIN, END = "<!-- BEGIN fleet_table -->", "<!-- END fleet_table -->"
ANY = "any"  # the 1-replica run: the single engine, whatever the router
LRU, BASE_ROUTER = "hicache", "round_robin"
_STATE: dict[str, Any] = {}  # per-policy configs and the trace, inherited by forked workers


@dataclass(frozen=True)
class Job:
    policy: str
    replicas: int
    router: str  # ANY for one replica


def base_config(policy: str, files: list[str], rate: float, split: str = "test") -> dict[str, Any]:
    overrides = ["experiment=coding_agents", f"policy={policy}", f"workload.sessions={split}"]
    overrides += [f"workload.start_rate_per_s={rate}", "sim.timeline=false"]
    with initialize_config_module(config_module="conf", version_base=None):
        cfg = compose(config_name="config", overrides=overrides)
    plain: dict[str, Any] = OmegaConf.to_container(cfg, resolve=False)  # type: ignore[assignment]
    plain.pop("hydra", None)
    plain["workload"]["import_from"] = ",".join(files)  # a comma list is a sweep to Hydra: set it after
    return OmegaConf.to_container(OmegaConf.create(plain), resolve=True)  # type: ignore[return-value]


def session_files(count: int | None) -> list[str]:
    folder = Path(os.environ.get("KVFLOW_WEKA_SESSIONS", REPO.parent / "shared" / "data" / "weka"))
    return [str(p) for p in sorted(folder.glob("trace_*.json*"))[:count]]


def jobs_for(policies: Sequence[str], replicas: Sequence[int], routers: Sequence[str]) -> list[Job]:
    """Every (policy, replicas, router); one replica once per policy. The slowest runs first
    (prefix_aware's router index, then the largest fleets), so the pool's processes finish together."""
    todo = [Job(p, n, r) for p in policies for n in replicas if n > 1 for r in routers]
    todo += [Job(p, 1, ANY) for p in policies if 1 in replicas]
    return sorted(todo, key=lambda j: (j.router != "prefix_aware", -j.replicas))


def run_job(job: Job) -> tuple[Job, dict[str, Any]]:
    """One run's figures, or ``{"error": one line}`` (the other runs are kept and written)."""
    start = time.perf_counter()
    try:
        cfg = _STATE["configs"][job.policy]
        router = BASE_ROUTER if job.router == ANY else job.router
        result = simulate(
            {**cfg, "cluster": {**cfg["cluster"], "replicas": job.replicas, "router": router}}, _STATE["trace"]
        )
    except Exception as exc:  # reported per job; the rest of the table still runs
        return job, {"error": f"{type(exc).__name__}: {exc}".splitlines()[0]}
    s, details = result.summary, result.summary["details"]
    per_replica = [int(r["requests"]) for r in result.replica_rows] or [int(s["requests"])]
    out = {k: s[k] for k in ("workflow_latency_mean_s", "workflow_latency_p99_s", "hit_rate_gpu", "hit_rate_cpu")}
    out.update(
        ttft_mean_s=details["ttft_s"]["mean"],
        ttft_p99_s=details["ttft_s"]["p99"],
        queue_mean_s=details["queue_s_mean"],
        recompute_rate=s["recompute_rate"],
        gpu_evicted_tokens=details["evicted_tokens"]["gpu"],
        gpu_busy_fraction=details["gpu_busy_fraction"],
        requests=s["requests"],
        replica_requests=per_replica,
        busiest_share=max(per_replica) / max(1, sum(per_replica)),
        wall_s=time.perf_counter() - start,
    )
    return job, out


def run_all(
    configs: dict[str, dict[str, Any]],
    trace: Any,
    todo: Sequence[Job],
    jobs: int,
    done: Sequence[dict[str, Any]] = (),
    checkpoint: Any = None,
) -> list[dict[str, Any]]:
    """Run ``todo`` (minus the jobs whose rows are in ``done``); ``checkpoint(rows)`` after each run,
    so an interrupted table keeps what it finished (``--resume``)."""
    _STATE.update(configs=configs, trace=trace)
    have = {(r["policy"], r["replicas"], r["router"]) for r in done}
    rows: list[dict[str, Any]] = [dict(r) for r in done]
    todo = [j for j in todo if (j.policy, j.replicas, j.router) not in have]
    with multiprocessing.get_context("fork").Pool(max(1, jobs)) as workers:
        for job, out in workers.imap_unordered(run_job, todo):
            rows.append({"policy": job.policy, "replicas": job.replicas, "router": job.router, **out})
            if checkpoint is not None:
                checkpoint(rows)
            name = f"{job.replicas} x {job.router} {job.policy}"
            if "error" in out:
                print(f"[{len(rows)}/{len(todo) + len(have)}] {name}: FAILED: {out['error']}", file=sys.stderr)
            else:
                print(
                    f"[{len(rows)}/{len(todo) + len(have)}] {name:<40} mean {out['workflow_latency_mean_s']:>9,.0f} s  "
                    f"ttft {out['ttft_mean_s']:7.2f} s  gpu hit {out['hit_rate_gpu']:.1%}  ({out['wall_s']:.0f} s)",
                    file=sys.stderr,
                )
    return sorted(rows, key=order_key)


def order_key(row: Mapping[str, Any]) -> tuple[int, int, int, str]:
    policies = _STATE.get("policies") or [row["policy"]]
    rank = policies.index(row["policy"]) if row["policy"] in policies else len(policies)
    return (int(row["replicas"]), rank, row["router"] != ANY, str(row["router"]))


def winners(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Per replica count: the best (router, policy) by mean session latency, the runner-up, and
    round_robin+hicache (the single hicache engine at one replica) with the best's margins over them."""
    out = []
    for n in sorted({int(r["replicas"]) for r in rows}):
        ok = sorted(
            (r for r in rows if r["replicas"] == n and "error" not in r), key=lambda r: r["workflow_latency_mean_s"]
        )
        if not ok:
            continue
        best, second = ok[0], ok[1] if len(ok) > 1 else None
        base = next((r for r in ok if r["policy"] == LRU and r["router"] in (BASE_ROUTER, ANY)), None)
        entry = {"replicas": n, "best": _pair(best), "best_latency_s": best["workflow_latency_mean_s"]}
        for name, other in (("runner_up", second), ("baseline", base)):
            if other is not None:
                entry[name] = _pair(other)
                entry[f"{name}_latency_s"] = other["workflow_latency_mean_s"]
                entry[f"margin_over_{name}"] = other["workflow_latency_mean_s"] / best["workflow_latency_mean_s"]
        out.append(entry)
    return out


def _pair(row: Mapping[str, Any]) -> str:
    return f"{row['router']}+{row['policy']}"


def table_markdown(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    lines = [
        "| replicas | router | policy | mean session s | p99 session s | mean TTFT s | p99 TTFT s | mean queue s "
        "| GPU hit | CPU load | GPU evicted (M tokens) | busiest replica share |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['replicas']} | {r['router']} | {r['policy']} | failed: {r['error']} |")
            continue
        lines.append(
            f"| {r['replicas']} | {r['router']} | {r['policy']} | {r['workflow_latency_mean_s']:,.0f} | "
            f"{r['workflow_latency_p99_s']:,.0f} | {r['ttft_mean_s']:.2f} | {r['ttft_p99_s']:.1f} | "
            f"{r['queue_mean_s']:.2f} | {r['hit_rate_gpu']:.1%} | {r['hit_rate_cpu']:.1%} | "
            f"{r['gpu_evicted_tokens'] / 1e6:,.1f} | {r['busiest_share']:.0%} |"
        )
    return lines


def winners_markdown(wins: Sequence[Mapping[str, Any]]) -> list[str]:
    lines = [
        "| replicas | best pair | its mean session s | runner-up | best's margin | round_robin+hicache | best's margin |",
        "|---|---|---|---|---|---|---|",
    ]
    for w in wins:
        up = f"{w['runner_up']} ({w['runner_up_latency_s']:,.0f} s)" if "runner_up" in w else "—"
        base = f"{w['baseline']} ({w['baseline_latency_s']:,.0f} s)" if "baseline" in w else "—"
        lines.append(
            f"| {w['replicas']} | **{w['best']}** | {w['best_latency_s']:,.0f} | {up} | "
            f"{_margin(w, 'runner_up')} | {base} | {_margin(w, 'baseline')} |"
        )
    return lines


def _margin(w: Mapping[str, Any], name: str) -> str:
    key = f"margin_over_{name}"
    return f"{w[key]:.3f}x ({w[key] - 1:+.1%})" if key in w else "—"


def _kept(meta: Mapping[str, Any]) -> str:
    kept = int(meta.get("resumed_runs", 0) or 0)
    return f"; {kept} runs kept from an earlier run of it (--resume)" if kept else ""


def markdown(meta: Mapping[str, Any], rows: Sequence[Mapping[str, Any]]) -> str:
    head = (
        f"Regenerate with `{meta['command']}` ({meta['wall_s']:.0f} s wall on {meta['jobs']} processes{_kept(meta)}). "
        f"Split `{meta['split']}`: {meta['sessions']} sessions, {meta['calls']:,} calls, from {meta['files']} "
        f"session files, started at {meta['rate']} per second. Session latency = a session's end-to-end time; "
        f"margin = the other pair's mean session latency / the best's. Router `{ANY}`: one replica, the single "
        "engine (every router gives the same run)."
    )
    parts = [head, "", "Winners per replica count:", ""] + winners_markdown(winners(rows))
    parts += ["", "Every run:", ""] + table_markdown(rows)
    return "\n".join(parts) + "\n"


def plot(rows: Sequence[Mapping[str, Any]], path: Path, title: str) -> Path | None:
    """The figure kvflow-report draws for a fleet run set (analysis.plots.fleet), from these rows."""
    import pandas as pd

    from analysis.plots import fleet

    ok = [r for r in rows if "error" not in r]
    table = pd.DataFrame(
        [{k: v for k, v in r.items() if k != "replica_requests"} for r in ok],
        columns=["policy", "replicas", "router", "workflow_latency_mean_s", "hit_rate_gpu"],
    )
    table["router"] = table["router"].astype(str)
    return fleet(table, title, path) if len(table) else None


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:  # one line, exit 2 (argparse prints its usage first otherwise)
        print(f"fleet_table: error: {message}", file=sys.stderr)
        sys.exit(2)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    ap = _Parser(description=__doc__.splitlines()[0])
    ap.add_argument("--files", type=int, default=None, help="first N session files of the folder (default: all)")
    ap.add_argument("--split", default="test", choices=("test", "train", "all"), help="session split (default test)")
    ap.add_argument("--rate", type=float, default=0.1, help="session starts per second (Poisson; default 0.1)")
    ap.add_argument("--replicas", default="1,2,4,8")
    ap.add_argument("--policies", default="hicache,kvflow,kvflow_sessions")
    ap.add_argument("--routers", default=",".join(ROUTERS), help="routers for > 1 replica (default: every router)")
    ap.add_argument("--jobs", type=int, default=2, help="parallel processes (default 2)")
    ap.add_argument("--json", type=Path, default=None, help="also write every figure as JSON here")
    ap.add_argument("--results-md", type=Path, default=None, help="rewrite the fleet_table block of this file")
    ap.add_argument("--plot", type=Path, default=None, help="latency and GPU hit vs replicas per router (PNG)")
    ap.add_argument("--resume", action="store_true", help="keep the finished runs of an interrupted --json")
    ap.add_argument("--from-json", type=Path, default=None, help="no runs: rewrite the outputs from an earlier --json")
    args = ap.parse_args(argv)
    args.replica_counts = [int(x) for x in args.replicas.split(",") if x.strip()]
    args.policy_names = [p.strip() for p in args.policies.split(",") if p.strip()]
    args.router_names = [r.strip() for r in args.routers.split(",") if r.strip()]
    unknown = [r for r in args.router_names if r not in ROUTERS]
    if unknown or any(n < 1 for n in args.replica_counts) or args.jobs < 1:
        ap.error(f"--routers/--replicas/--jobs: bad value ({', '.join(unknown) or 'counts and jobs must be >= 1'})")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.from_json is not None:
        try:
            saved = json.loads(args.from_json.read_text())
            meta, rows = saved["meta"], saved["rows"]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            print(f"fleet_table: error: --from-json {args.from_json}: {type(exc).__name__}: {exc}", file=sys.stderr)
            return 2
        _STATE["policies"] = args.policy_names
        return write_outputs(args, meta, sorted(rows, key=order_key))
    wall0 = time.perf_counter()
    files = session_files(args.files)
    configs = {p: base_config(p, files, args.rate, args.split) for p in args.policy_names}
    first = configs[args.policy_names[0]]
    trace = build_trace(first["workload"], int(first.get("seed", 0)))
    _STATE["policies"] = args.policy_names
    shown = [a for a in (sys.argv[1:] if argv is None else argv) if a != "--resume"]
    done = resumed_rows(args.json, shown) if args.resume else []

    def checkpoint(rows: Sequence[Mapping[str, Any]]) -> None:
        if args.json is not None:
            payload = {"meta": {"command_args": shown, "partial": True}, "rows": list(rows)}
            write_atomic(args.json, json.dumps(payload, indent=1, sort_keys=True, default=str) + "\n")

    todo = jobs_for(args.policy_names, args.replica_counts, args.router_names)
    rows = run_all(configs, trace, todo, args.jobs, done, checkpoint)
    meta = {
        "command": "python benchmarks/fleet_table.py" + "".join(" " + a for a in shown),
        "split": args.split,
        "files": len(files),
        "sessions": len({inv.client_id for inv in trace.invocations}),
        "calls": len(trace.invocations),
        "rate": args.rate,
        "jobs": args.jobs,
        "wall_s": time.perf_counter() - wall0,
        "resumed_runs": len(done),
        "command_args": shown,
    }
    return write_outputs(args, meta, rows)


def resumed_rows(path: Path | None, shown: Sequence[str]) -> list[dict[str, Any]]:
    """The finished rows of an interrupted run of the same command (none otherwise)."""
    if path is None or not path.is_file():
        return []
    saved = json.loads(path.read_text())
    same = saved.get("meta", {}).get("command_args") == list(shown)
    return [r for r in saved.get("rows", []) if "error" not in r] if same else []


def write_outputs(args: argparse.Namespace, meta: Mapping[str, Any], rows: Sequence[Mapping[str, Any]]) -> int:
    """Print the section, and write the JSON, the plot and the results.md block where asked."""
    text = markdown(meta, rows)
    print(text)
    if args.json is not None:
        payload = {"meta": meta, "winners": winners(rows), "rows": rows}
        write_atomic(args.json, json.dumps(payload, indent=1, sort_keys=True, default=str) + "\n")
    if args.plot is not None:
        plot(rows, args.plot, f"Weka coding-agent sessions ({args.split} split): latency and GPU hit vs replicas")
    if args.results_md is not None:
        splice_block(args.results_md, text, BEGIN, END)
    return 1 if any("error" in r for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
