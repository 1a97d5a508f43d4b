"""``python -m sim.sessions``: the coding-agent sessions table of docs/results.md (issue 15).

Runs every policy on the Weka coding-agent sessions (``experiment=coding_agents``: closed loop,
Poisson session starts, H200 with measured SGLang step times, ``engine=sglang_0.5``, 64-token pages)
at three GPU pools (the profile's pool, half of it and twice it; the CPU tier follows the engine's
host ratio), plus the bounds that are bounds: the ``engine=ideal`` run (hicache with every copy
free) as the latency floor and exact Belady (``sim.bounds``) over the hicache run's own admission
order, once with the GPU pool only (the bound on GPU hits: the "hit-rate gap" of the issue) and
once with GPU + CPU (the bound on reuse). Prints one markdown table per pool and the targets: the
best session-aware policy's mean session latency vs hicache (>= 1.3x) and the share of the
LRU -> Belady GPU-hit gap it closes (>= 50%).

Split: ``--split test`` (default: every 5th session file, never used for tuning) or ``train``;
``--sessions N`` keeps the first N sessions of the split (quick looks, tests). Runs in parallel
over ``--jobs`` processes (fork: the imported trace is shared). Deterministic. ``--subagents`` only
prints how much of the split its sub-agents are (sessions, calls, prompt tokens) and exits.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra.errors import HydraException

from harness.engines import load_engine
from harness.errors import SetupError
from harness.run_dir import splice_block, write_atomic
from harness.setup import build_trace, page_size
from sim.bounds import reuse_bound
from sim.runner import simulate
from traces.schema import Trace

BASELINES = ("sglang", "hicache", "kvflow", "kvflow_inferred", "kvflow_cost", "kvflow_gd", "clairvoyant")
SESSION_POLICIES = ("pause_aware", "pause_aware_prefetch", "ttl_pin", "kvflow_sessions", "subagent_aware")
POLICIES = BASELINES + SESSION_POLICIES
LRU = "hicache"
POOL_FACTORS = (0.5, 1.0, 2.0)
LATENCY_TARGET = 1.3
GAP_TARGET = 0.5
BEGIN, END = "<!-- BEGIN sim.sessions -->", "<!-- END sim.sessions -->"


class UsageError(Exception):
    """A bad command-line value: one line, exit 2."""


@dataclass(frozen=True)
class Job:
    policy: str
    pool_tokens: int
    engine: str | None  # None: the preset's engine; "ideal": the latency floor


_STATE: dict[str, Any] = {}  # the base config and the trace, inherited by forked workers


def compose(split: str, import_from: str | None = None) -> dict[str, Any]:
    """``experiment=coding_agents`` as kvflow-sim composes it (policy set per job)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_module
    from omegaconf import OmegaConf

    from harness.config_schema import validate_config

    with initialize_config_module(config_module="conf", version_base=None):
        cfg = hydra_compose(
            config_name="config",
            overrides=["experiment=coding_agents", f"workload.sessions={split}", "sim.timeline=false"]
            + ([f"workload.import_from='{import_from}'"] if import_from else []),
        )
    plain: dict[str, Any] = OmegaConf.to_container(cfg, resolve=True)  # type: ignore[assignment]
    validate_config(plain)
    return plain


def first_sessions(trace: Trace, n: int | None) -> Trace:
    """The first ``n`` sessions (clients, in trace order) of ``trace``; all when ``n`` is None."""
    if n is None:
        return trace
    order = list(dict.fromkeys(inv.client_id for inv in trace.invocations))
    chosen = set(order[:n])
    keep = [inv for inv in trace.invocations if inv.client_id in chosen]
    return Trace({**trace.meta, "sessions_kept": len(chosen)}, trace.workflows, keep)


def subagent_share(trace: Trace) -> dict[str, Any]:
    """How much of ``trace`` its sub-agents are: sessions that spawn any, their calls and prompt
    tokens (every agent but the importer's main agent), and in how many sessions each type runs."""
    from traces.importers.weka import MAIN_AGENT

    agents: dict[str, set[str]] = {}
    calls, tokens = [0, 0], [0, 0]
    for inv in trace.invocations:
        sub = int(inv.agent_id != MAIN_AGENT)
        calls[sub] += 1
        tokens[sub] += trace.prompt_len(inv)
        agents.setdefault(inv.client_id, set()).add(inv.agent_id)
    types: dict[str, int] = {}
    for names in agents.values():
        for name in names - {MAIN_AGENT}:
            types[name] = types.get(name, 0) + 1
    return {
        "sessions": len(agents),
        "sessions_with_subagents": sum(1 for names in agents.values() if names - {MAIN_AGENT}),
        "calls": sum(calls),
        "subagent_calls": calls[1],
        "prompt_tokens": sum(tokens),
        "subagent_prompt_tokens": tokens[1],
        "sessions_per_type": dict(sorted(types.items())),
    }


def subagent_text(split: str, share: Mapping[str, Any]) -> str:
    def pct(part: int, whole: int) -> str:
        return f"{part / whole:.1%}" if whole else "-"

    return (
        f"split {split}: {share['sessions_with_subagents']} of {share['sessions']} sessions spawn sub-agents "
        f"({pct(share['sessions_with_subagents'], share['sessions'])}); sub-agent calls {share['subagent_calls']:,} "
        f"of {share['calls']:,} ({pct(share['subagent_calls'], share['calls'])}), prompt tokens "
        f"{share['subagent_prompt_tokens']:,} of {share['prompt_tokens']:,} "
        f"({pct(share['subagent_prompt_tokens'], share['prompt_tokens'])}); sessions per type "
        + (", ".join(f"{k} {v}" for k, v in share["sessions_per_type"].items()) or "-")
    )


def largest_call_tokens(trace: Trace, page_tokens: int = 64) -> int:
    """The KV a single call needs (prompt + output), rounded up to whole pages: no pool below it can
    run the trace, so a pool factor that would go below is clamped to it (and the table says so)."""
    need = max(trace.prompt_len(inv) + inv.output_tokens for inv in trace.invocations)
    return -(-need // page_tokens) * page_tokens


def job_config(base: Mapping[str, Any], job: Job) -> dict[str, Any]:
    from sim.runner import load_conf

    cfg = job_config_policy(base, job.policy)
    cfg["cache"] = {**(base.get("cache") or {}), "gpu_capacity_tokens": job.pool_tokens}
    if job.engine is not None:
        cfg["engine"] = {**load_conf("engine", job.engine)}
    return cfg


def run_job(job: Job) -> tuple[Job, dict[str, Any]]:
    """``measure(job)``, or ``{"error": one line}`` when it fails: one broken run must not throw
    away the others' minutes of work (they are written to ``--json`` all the same)."""
    try:
        return measure(job)
    except Exception as exc:  # reported per job by run_all; the rest of the table still runs
        return job, {"error": f"{type(exc).__name__}: {exc}".splitlines()[0]}


def measure(job: Job) -> tuple[Job, dict[str, Any]]:
    """One run's figures (and, for the LRU run at the preset's engine, the two Belady bounds)."""
    base, trace = _STATE["base"], _STATE["trace"]
    start = time.perf_counter()
    cfg = job_config(base, job)
    run = simulate(cfg, trace=trace)
    s = run.summary
    details = s.get("details", {})
    out = {k: s[k] for k in SUMMARY_FIELDS}
    out["resume_prefetch"] = details.get("resume_prefetch", {})
    out["gpu_pool_tokens"] = int(details["gpu_capacity_tokens"])
    out["cpu_pool_tokens"] = int(details.get("cpu_capacity_tokens") or 0)
    if job.policy == LRU and job.engine is None:
        page = page_size(cfg, load_engine(cfg.get("engine")), trace)  # the run's own pages
        out["page_tokens"] = page
        out["belady_gpu"] = reuse_bound(trace, run.rows, out["gpu_pool_tokens"], page).rate
        both = out["gpu_pool_tokens"] + out["cpu_pool_tokens"]
        out["belady_reuse"] = reuse_bound(trace, run.rows, both, page).rate
    out["wall_s"] = time.perf_counter() - start
    return job, out


SUMMARY_FIELDS = (
    "workflow_latency_mean_s",
    "workflow_latency_p50_s",
    "workflow_latency_p99_s",
    "hit_rate_gpu",
    "hit_rate_cpu",
    "recompute_rate",
    "h2d_bytes",
    "d2h_bytes",
    "prefetch_issued",
    "prefetch_used",
    "prefetch_late",
    "prefetch_wasted",
    "workflows",
    "requests",
)


def profile_pool_tokens(base: Mapping[str, Any], trace: Trace) -> int:
    """The preset's GPU pool (the profile's, derived from memory, weights and KV bytes per token)."""
    from harness.setup import prepare

    return prepare(job_config_policy(base, LRU), trace).gpu_tokens


def job_config_policy(base: Mapping[str, Any], policy: str) -> dict[str, Any]:
    from sim.runner import load_conf

    return {**base, "policy": load_conf("policy", policy)}


def run_all(base: dict[str, Any], trace: Trace, pools: Sequence[int], jobs: int) -> dict[int, dict[str, Any]]:
    todo = [Job(p, pool, None) for pool in pools for p in POLICIES] + [Job(LRU, pool, "ideal") for pool in pools]
    _STATE.update(base=base, trace=trace)
    results: dict[int, dict[str, Any]] = {pool: {} for pool in pools}
    done = 0
    ctx = multiprocessing.get_context("fork")
    with ctx.Pool(max(1, jobs)) as workers:
        for job, out in workers.imap_unordered(run_job, todo):
            done += 1
            name = "ideal" if job.engine == "ideal" else job.policy
            results[job.pool_tokens][name] = out
            if "error" in out:
                print(f"[{done}/{len(todo)}] pool {job.pool_tokens:,} {name}: FAILED: {out['error']}", file=sys.stderr)
                continue
            print(
                f"[{done}/{len(todo)}] pool {job.pool_tokens:,} {name:<22} mean {out['workflow_latency_mean_s']:>10,.0f} s"
                f"  gpu hit {out['hit_rate_gpu']:.1%}  ({out['wall_s']:.0f} s)",
                file=sys.stderr,
            )
    return results


def gap_closed(value: float, lru: float, bound: float) -> float | None:
    """Share of the LRU -> bound gap that ``value`` closes (None when there is no gap)."""
    return (value - lru) / (bound - lru) if bound - lru > 1e-12 else None


def pool_table(pool: int, runs: Mapping[str, Mapping[str, Any]]) -> list[str]:
    lru = runs[LRU]
    ideal = runs["ideal"]
    lines = [
        f"**GPU pool {pool:,} tokens** (CPU {lru['cpu_pool_tokens']:,}); bounds: latency floor (`engine=ideal`) "
        f"{ideal['workflow_latency_mean_s']:,.0f} s mean; exact Belady over the hicache run's admission order: "
        f"GPU hit <= {lru['belady_gpu']:.1%} (GPU pool only), reuse <= {lru['belady_reuse']:.1%} (GPU + CPU), "
        f"in {lru['page_tokens']}-token pages.",
        "",
        "| policy | mean s | p50 s | p99 s | vs hicache | GPU hit | CPU load | recompute | H2D GB | D2H GB "
        "| prefetch used/issued | late | wasted | resume early/late/wasted | GPU-hit gap closed |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name in POLICIES:
        r = runs[name]
        closed = gap_closed(r["hit_rate_gpu"], lru["hit_rate_gpu"], lru["belady_gpu"])
        resume = r["resume_prefetch"]
        lines.append(
            f"| {name} | {r['workflow_latency_mean_s']:,.0f} | {r['workflow_latency_p50_s']:,.0f} | "
            f"{r['workflow_latency_p99_s']:,.0f} | {lru['workflow_latency_mean_s'] / r['workflow_latency_mean_s']:.2f}x | "
            f"{r['hit_rate_gpu']:.1%} | {r['hit_rate_cpu']:.1%} | {r['recompute_rate']:.1%} | "
            f"{r['h2d_bytes'] / 1e9:,.0f} | {r['d2h_bytes'] / 1e9:,.0f} | {r['prefetch_used']}/{r['prefetch_issued']} | "
            f"{r['prefetch_late']} | {r['prefetch_wasted']} | "
            + (f"{resume.get('early', 0)}/{resume.get('late', 0)}/{resume.get('wasted', 0)}" if resume else "-")
            + f" | {'-' if closed is None else f'{closed:.0%}'} |"
        )
    lines.append(
        f"| ideal floor (hicache, `engine=ideal`) | {ideal['workflow_latency_mean_s']:,.0f} | "
        f"{ideal['workflow_latency_p50_s']:,.0f} | {ideal['workflow_latency_p99_s']:,.0f} | "
        f"{lru['workflow_latency_mean_s'] / ideal['workflow_latency_mean_s']:.2f}x | {ideal['hit_rate_gpu']:.1%} | "
        f"{ideal['hit_rate_cpu']:.1%} | {ideal['recompute_rate']:.1%} | - | - | - | - | - | - | - |"
    )
    return lines


def targets(pool: int, runs: Mapping[str, Mapping[str, Any]]) -> str:
    lru = runs[LRU]
    best = min(SESSION_POLICIES, key=lambda p: runs[p]["workflow_latency_mean_s"])
    b = runs[best]
    speed = lru["workflow_latency_mean_s"] / b["workflow_latency_mean_s"]
    floor = lru["workflow_latency_mean_s"] / runs["ideal"]["workflow_latency_mean_s"]
    closed = gap_closed(b["hit_rate_gpu"], lru["hit_rate_gpu"], lru["belady_gpu"])
    closed_txt = "no gap" if closed is None else f"{closed:.0%}"
    return (
        f"pool {pool:,}: best session-aware policy `{best}`: {speed:.2f}x hicache's mean session latency "
        f"(target >= {LATENCY_TARGET}x: {'met' if speed >= LATENCY_TARGET else 'missed'}; the ideal floor is "
        f"{floor:.2f}x), GPU-hit gap to Belady closed {closed_txt} (target >= {GAP_TARGET:.0%}: "
        f"{'met' if closed is not None and closed >= GAP_TARGET else 'missed'})"
    )


def markdown(meta: Mapping[str, Any], results: Mapping[int, Mapping[str, Any]]) -> str:
    lines = [
        f"Regenerate with `{meta['command']}` ({meta['wall_s']:.0f} s on {meta['jobs']} processes). "
        f"Split `{meta['split']}`: {meta['sessions']} sessions, {meta['requests']:,} calls; every figure is from "
        "that run (nothing tuned on these sessions). Session latency = a session's end-to-end time.",
        "",
    ]
    for pool, runs in results.items():
        if pool == meta["largest_call_tokens"]:
            lines += [
                f"(This pool is clamped to the largest call's KV, {pool:,} tokens: a smaller one cannot run it.)",
                "",
            ]
        lines += pool_table(pool, runs) + [""]
    lines += ["Targets (issue 15):", ""] + [f"- {targets(pool, runs)}" for pool, runs in results.items()]
    return "\n".join(lines) + "\n"


def splice(path: Path, body: str) -> None:
    """Replace the sim.sessions block of ``path`` (appended when absent)."""
    splice_block(path, body, BEGIN, END)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:  # one line, exit 2 (argparse prints usage first otherwise)
        raise UsageError(message)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = _Parser(
        prog="python -m sim.sessions", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--split", default="test", choices=("test", "train", "all"), help="session split (default test)")
    p.add_argument("--sessions", type=int, default=None, help="keep the first N sessions of the split")
    p.add_argument("--pools", default="0.5,1,2", help="GPU pools as factors of the profile's pool (default 0.5,1,2)")
    p.add_argument("--pool-tokens", type=int, default=None, help="the base GPU pool (default: the profile's)")
    p.add_argument(
        "--import-from", default=None, help="session files/folders (default: the preset's, ../shared/data/weka)"
    )
    p.add_argument("--jobs", type=int, default=2, help="parallel processes (default 2)")
    p.add_argument("--json", type=Path, default=None, help="also write every figure as JSON here")
    p.add_argument("--results-md", type=Path, default=None, help="rewrite the sim.sessions block of this file")
    p.add_argument(
        "--subagents", action="store_true", help="only print how much of the split its sub-agents are, and exit"
    )
    args = p.parse_args(argv)
    try:
        args.pool_factors = [float(x) for x in args.pools.split(",") if x.strip()]
    except ValueError:
        raise UsageError(f"--pools: {args.pools!r} is not a comma-separated list of numbers") from None
    if not args.pool_factors or any(f <= 0 for f in args.pool_factors):
        raise UsageError(f"--pools: {args.pools!r}: every factor must be > 0")
    if args.sessions is not None and args.sessions < 1:
        raise UsageError(f"--sessions: {args.sessions} must be >= 1")
    if args.pool_tokens is not None and args.pool_tokens < 1:
        raise UsageError(f"--pool-tokens: {args.pool_tokens} must be >= 1")
    if args.jobs < 1:
        raise UsageError(f"--jobs: {args.jobs} must be >= 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = parse_args(argv)
        start = time.perf_counter()
        base = compose(args.split, args.import_from)
        trace = first_sessions(build_trace(base["workload"], base["seed"]), args.sessions)
        if args.subagents:
            print(subagent_text(args.split, subagent_share(trace)))
            return 0
        pool = args.pool_tokens or profile_pool_tokens(base, trace)
        need = largest_call_tokens(trace)
        pools = [max(int(round(pool * f)), need) for f in args.pool_factors]
        results = run_all(base, trace, pools, args.jobs)
    except (UsageError, SetupError, HydraException, OSError, ValueError) as exc:
        print(f"sim.sessions: error: {exc}", file=sys.stderr)
        return 2
    shown = list(sys.argv[1:] if argv is None else argv)
    command = "python -m sim.sessions" + ("".join(" " + a for a in shown))
    meta = {
        "command": command,
        "split": args.split,
        "sessions": len({inv.client_id for inv in trace.invocations}),
        "requests": len(trace.invocations),
        "jobs": args.jobs,
        "largest_call_tokens": need,
        "pool_factors": args.pool_factors,
        "profile_pool_tokens": pool,
        "wall_s": time.perf_counter() - start,
    }
    if args.json is not None:  # first: whatever happened to some runs, the others are kept
        payload = {"meta": meta, "results": {str(k): v for k, v in results.items()}}
        write_atomic(args.json, json.dumps(payload, indent=1, sort_keys=True, default=str) + "\n")
    failed = [(pool, name, r["error"]) for pool, runs in results.items() for name, r in runs.items() if "error" in r]
    if failed:
        for pool, name, error in failed:
            print(f"sim.sessions: error: pool {pool:,}, {name}: {error}", file=sys.stderr)
        kept = (
            f" (the {sum(map(len, results.values())) - len(failed)} other runs are in {args.json})" if args.json else ""
        )
        print(f"sim.sessions: {len(failed)} run(s) failed; no table written{kept}", file=sys.stderr)
        return 1
    text = markdown(meta, results)
    print(text)
    if args.results_md is not None:
        splice(args.results_md, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
