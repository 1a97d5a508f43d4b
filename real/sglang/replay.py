"""Replay a kvflow trace against a running SGLang server over HTTP and write a run directory.

Release semantics are the simulator's (``kvflow.release.ReleaseRule``, closed loop by default for
traces with dependencies; ``ReplayConfig.replay`` / ``start`` / ``start_rate_per_s``): a root is
ready at its session's start, a later invocation when its dependencies finished, and each is sent
at ``rule.release_s(inv, ready)`` (seconds from the replay start). Gaps derived from timestamps
subtract recorded service times only (the replay has no cost model to estimate one). A client's frontier is its ready or running agents;
every request carries ``steps_to_execution(frontier)`` of its workflow's step graph in
``kv_hints`` (none when the workflow has no graph). Requests stream, so TTFT is the first chunk.

Output: the run-directory contract (``harness.run_dir``, docs/architecture.md; ``backend="sglang"``):
the same writer, rows and summarizer as the other backends. What the server does not report stays 0
(queue/admit times, bytes moved, prefetch counters); cache hits come from
``meta_info.cached_tokens`` (``cached_tokens_details`` device/host when the server sends them).
"""

from __future__ import annotations

import argparse
import heapq
import itertools
import json
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from harness.rows import is_warmup, workflow_rows
from harness.run_dir import write_run_dir
from harness.summary import RunCounters, RunIdentity, summarize
from kvflow.release import ReleaseOptions, ReleaseRule
from kvflow.step_graph import StepGraph
from real.sglang.client import SGLangClient, WorkflowSession


@dataclass
class ReplayConfig:
    base_url: str
    policy: str = "unknown"  # what the server was launched with (for the summary only)
    experiment: str = ""
    model: str = ""
    hardware: str = ""
    seed: int = 0
    concurrency: int = 64  # HTTP requests in flight at most
    vocab_size: int | None = None  # map trace token ids into the model's vocabulary
    timeout_s: float = 600.0
    replay: str | None = None  # open|closed; None: closed when the trace has dependencies
    start: str = "recorded"  # session starts: recorded|together|poisson
    start_rate_per_s: float = 0.0
    params: dict[str, Any] = field(default_factory=dict)


class _Replayer:
    def __init__(self, trace: Any, cfg: ReplayConfig) -> None:
        self.trace, self.cfg = trace, cfg
        self.client = SGLangClient(cfg.base_url, cfg.timeout_s)
        self.by_id = {inv.id: inv for inv in trace.invocations}
        self.rule = ReleaseRule(trace, ReleaseOptions(cfg.replay, cfg.start, cfg.start_rate_per_s, cfg.seed))
        self.waiting_on = {inv.id: len(inv.deps) for inv in trace.invocations}
        self.dependents: dict[str, list[str]] = {inv.id: [] for inv in trace.invocations}
        for inv in trace.invocations:
            for dep in inv.deps:
                self.dependents[dep].append(inv.id)
        self.sessions: dict[str, WorkflowSession] = {}
        for inv in trace.invocations:
            if inv.client_id not in self.sessions:
                wf = trace.workflows.get(inv.workflow)
                graph = StepGraph.from_dict(wf.graph) if wf is not None and wf.graph else None
                self.sessions[inv.client_id] = WorkflowSession(inv.client_id, graph)
        self.rows: dict[str, dict[str, Any]] = {}
        self.ready_s: dict[str, float] = {}
        self.errors: list[str] = []
        self.cond = threading.Condition()
        self.heap: list[tuple[float, int, str]] = []
        self._order = itertools.count()
        self.t0 = 0.0

    def now(self) -> float:
        return time.perf_counter() - self.t0

    def _ready(self, inv: Any) -> None:  # under self.cond
        self.sessions[inv.client_id].running[inv.agent_id] = (
            self.sessions[inv.client_id].running.get(inv.agent_id, 0) + 1
        )
        ready_s = self.rule.root_ready_s(inv) if not inv.deps else self.now()
        self.ready_s[inv.id] = ready_s
        release_at = self.rule.release_s(inv, ready_s)
        heapq.heappush(self.heap, (release_at, next(self._order), inv.id))

    def run(self) -> float:
        self.t0 = time.perf_counter()
        total = len(self.by_id)
        with self.cond, ThreadPoolExecutor(max_workers=self.cfg.concurrency) as pool:
            for inv in self.trace.invocations:
                if not inv.deps:
                    self._ready(inv)
            while len(self.rows) < total and not self.errors:
                now = self.now()
                while self.heap and self.heap[0][0] <= now:
                    _, _, inv_id = heapq.heappop(self.heap)
                    inv = self.by_id[inv_id]
                    hint = self.sessions[inv.client_id].hint(inv.agent_id)
                    pool.submit(self._send, inv, hint)
                timeout = self.heap[0][0] - now if self.heap else None
                self.cond.wait(timeout)
        if self.errors:
            raise RuntimeError(f"replay failed: {self.errors[0]}")
        return self.now()

    def _send(self, inv: Any, hint: Any) -> None:
        try:
            row = self._request(inv, hint)
        except Exception as exc:  # noqa: BLE001 - reported once, ends the replay
            with self.cond:
                self.errors.append(f"{inv.id}: {exc!r}")
                self.cond.notify()
            return
        with self.cond:
            self.rows[inv.id] = row
            self.sessions[inv.client_id].finish(inv.agent_id)
            for succ in self.dependents[inv.id]:
                self.waiting_on[succ] -= 1
                if self.waiting_on[succ] == 0:
                    self._ready(self.by_id[succ])
            self.cond.notify()

    def _request(self, inv: Any, hint: Any) -> dict[str, Any]:
        tokens = self.trace.prompt_tokens(inv)
        if self.cfg.vocab_size:
            tokens = [t % self.cfg.vocab_size for t in tokens]
        sampling = {
            "max_new_tokens": inv.output_tokens,
            "min_new_tokens": inv.output_tokens,
            "ignore_eos": True,
            "temperature": 0.0,
        }
        fixed = self.trace.fixed_tokens(inv)
        hint = type(hint)(hint.client_id, hint.agent_id, fixed, hint.steps)
        sent = time.perf_counter()
        first = last = None
        meta: dict[str, Any] = {}
        for at, chunk in self.client.generate_stream(tokens, sampling, hint):
            first = at if first is None else first
            last = at
            meta = chunk.get("meta_info", meta) or meta
        if first is None:
            raise RuntimeError("server sent no output")
        arrival = sent - self.t0
        cached = int(meta.get("cached_tokens", 0) or 0)
        details = meta.get("cached_tokens_details") or {}
        host = int(details.get("host", 0) or 0)
        gpu = int(details.get("device", cached - host) or 0)
        return {
            "request_id": inv.id,
            "client_id": inv.client_id,
            "agent_id": inv.agent_id,
            "warmup": is_warmup(inv),
            "ready_s": self.ready_s[inv.id],
            "arrival_s": arrival,
            "admit_s": arrival,
            "first_token_s": first - self.t0,
            "finish_s": last - self.t0,
            "queue_s": 0.0,
            "ttft_s": first - sent,
            "latency_s": last - sent,
            "prompt_tokens": len(tokens),
            "fixed_tokens": fixed,
            "output_tokens": int(meta.get("completion_tokens", inv.output_tokens)),
            "hit_gpu_tokens": gpu,
            "loaded_cpu_tokens": host,
            "recomputed_tokens": max(len(tokens) - gpu - host, 0),
            "loaded_bytes": 0,
            "stalled_s": 0.0,
        }


def write_replay(
    out_dir: str | os.PathLike[str],
    trace: Any,
    cfg: ReplayConfig,
    rows: list[dict[str, Any]],
    makespan_s: float,
    wall_s: float,
) -> dict[str, Any]:
    """The run directory of a replay (the contract's writer and summarizer); returns the summary.
    Only the makespan and wall time are counted here: the server reports no copies or prefetches."""
    workflows = workflow_rows(rows)
    workload = str(trace.meta.get("workload", trace.meta.get("name", "")))
    who = RunIdentity(
        "sglang", cfg.policy, cfg.experiment, workload, cfg.hardware, cfg.model, cfg.seed, dict(cfg.params)
    )
    summary = summarize(who, RunCounters(makespan_s=makespan_s, wall_s=wall_s), rows, workflows)
    write_run_dir(Path(out_dir), summary, rows, workflows, {"backend": "sglang", **asdict(cfg)})
    return summary


def replay(trace: Any, out_dir: str | os.PathLike[str], cfg: ReplayConfig) -> dict[str, Any]:
    """Run ``trace`` against the server at ``cfg.base_url``; write the run directory; return the summary."""
    started = time.perf_counter()
    replayer = _Replayer(trace, cfg)
    makespan_s = replayer.run()
    rows = [replayer.rows[inv.id] for inv in trace.invocations]
    return write_replay(out_dir, trace, cfg, rows, makespan_s, time.perf_counter() - started)


def main(argv: list[str] | None = None) -> int:
    from traces import load_trace

    parser = argparse.ArgumentParser(description="Replay a kvflow trace against a running SGLang server.")
    parser.add_argument("trace")
    parser.add_argument("out_dir")
    parser.add_argument("--url", default="http://127.0.0.1:30000")
    parser.add_argument("--policy", default="kvflow", help="what the server runs (recorded only)")
    parser.add_argument("--model", default="")
    parser.add_argument("--hardware", default="")
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--vocab-size", type=int, default=None)
    parser.add_argument("--replay", choices=["open", "closed"], default=None, help="default: closed if deps")
    parser.add_argument("--start", choices=["recorded", "together", "poisson"], default="recorded")
    parser.add_argument("--start-rate", type=float, default=0.0, help="sessions per second (--start poisson)")
    args = parser.parse_args(argv)
    cfg = ReplayConfig(
        args.url,
        policy=args.policy,
        model=args.model,
        hardware=args.hardware,
        concurrency=args.concurrency,
        vocab_size=args.vocab_size,
        replay=args.replay,
        start=args.start,
        start_rate_per_s=args.start_rate,
    )
    summary = replay(load_trace(args.trace), args.out_dir, cfg)
    print(
        json.dumps(
            {k: summary[k] for k in ("requests", "workflows", "workflow_latency_mean_s", "hit_rate_gpu", "makespan_s")}
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
