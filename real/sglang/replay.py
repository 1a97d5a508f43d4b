"""Replay a kvflow trace against a running SGLang server over HTTP and write a run directory.

Release semantics follow the simulator's driver: an invocation is *ready* when its dependencies
finished (a workflow's first one at once), is sent ``delay_s`` later and never before its own
``arrival_s`` (seconds from the replay start). A client's frontier is its ready or running agents;
every request carries ``steps_to_execution(frontier)`` of its workflow's step graph in
``kv_hints`` (none when the workflow has no graph). Requests stream, so TTFT is the first chunk.

Output (docs/architecture.md run-directory format, ``backend="sglang"``): ``requests.csv``,
``workflows.csv``, ``config.yaml`` and, last and atomically, ``summary.json``. What the server does
not report stays 0 (queue/admit times, bytes moved, prefetch counters); cache hits come from
``meta_info.cached_tokens`` (``cached_tokens_details`` device/host when the server sends them).
"""

from __future__ import annotations

import argparse
import csv
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

from kvflow.step_graph import StepGraph
from real.sglang.client import SGLangClient, WorkflowSession

WARMUP_MARK = "warmup"
ROW_FIELDS = (
    "request_id", "client_id", "agent_id", "warmup", "arrival_s", "admit_s", "first_token_s",
    "finish_s", "queue_s", "ttft_s", "latency_s", "prompt_tokens", "fixed_tokens", "output_tokens",
    "hit_gpu_tokens", "loaded_cpu_tokens", "recomputed_tokens", "loaded_bytes", "stalled_s",
)


def is_warmup(inv: Any) -> bool:
    """Same labelling as the generators/simulator: ``<client>/warmup<k>/...`` is warm-up."""
    return any(part.startswith(WARMUP_MARK) for part in inv.id.split("/")[1:-1])


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
    params: dict[str, Any] = field(default_factory=dict)


class _Replayer:
    def __init__(self, trace: Any, cfg: ReplayConfig) -> None:
        self.trace, self.cfg = trace, cfg
        self.client = SGLangClient(cfg.base_url, cfg.timeout_s)
        self.by_id = {inv.id: inv for inv in trace.invocations}
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
        self.errors: list[str] = []
        self.cond = threading.Condition()
        self.heap: list[tuple[float, int, str]] = []
        self._order = itertools.count()
        self.t0 = 0.0

    def now(self) -> float:
        return time.perf_counter() - self.t0

    def _ready(self, inv: Any) -> None:  # under self.cond
        self.sessions[inv.client_id].running[inv.agent_id] = (
            self.sessions[inv.client_id].running.get(inv.agent_id, 0) + 1)
        release_at = max(self.now() + inv.delay_s, inv.arrival_s or 0.0)
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
        sampling = {"max_new_tokens": inv.output_tokens, "min_new_tokens": inv.output_tokens,
                    "ignore_eos": True, "temperature": 0.0}
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
            "request_id": inv.id, "client_id": inv.client_id, "agent_id": inv.agent_id,
            "warmup": is_warmup(inv), "arrival_s": arrival, "admit_s": arrival,
            "first_token_s": first - self.t0, "finish_s": last - self.t0, "queue_s": 0.0,
            "ttft_s": first - sent, "latency_s": last - sent, "prompt_tokens": len(tokens),
            "fixed_tokens": fixed, "output_tokens": int(meta.get("completion_tokens", inv.output_tokens)),
            "hit_gpu_tokens": gpu, "loaded_cpu_tokens": host,
            "recomputed_tokens": max(len(tokens) - gpu - host, 0), "loaded_bytes": 0, "stalled_s": 0.0,
        }


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100.0
    lo, hi = int(pos), min(int(pos) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def workflow_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    spans: dict[str, list[float]] = {}
    for r in rows:
        if r["warmup"]:
            continue
        span = spans.setdefault(r["client_id"], [r["arrival_s"], r["finish_s"]])
        span[0], span[1] = min(span[0], r["arrival_s"]), max(span[1], r["finish_s"])
    return [{"client_id": c, "start_s": lo, "end_s": hi, "latency_s": hi - lo}
            for c, (lo, hi) in sorted(spans.items())]


def summarize(rows: list[dict[str, Any]], workflows: list[dict[str, Any]], cfg: ReplayConfig,
              trace: Any, makespan_s: float, wall_s: float) -> dict[str, Any]:
    measured = [r for r in rows if not r["warmup"]]
    prompt = sum(r["prompt_tokens"] for r in measured)
    latencies = [w["latency_s"] for w in workflows]

    def ratio(key: str) -> float:
        return sum(r[key] for r in measured) / prompt if prompt else 0.0

    return {
        "backend": "sglang", "policy": cfg.policy, "experiment": cfg.experiment,
        "workload": str(trace.meta.get("workload", trace.meta.get("name", ""))),
        "hardware": cfg.hardware, "model": cfg.model, "seed": cfg.seed,
        "requests": len(rows), "workflows": len(workflows),
        "workflow_latency_mean_s": sum(latencies) / len(latencies) if latencies else 0.0,
        "workflow_latency_p50_s": _percentile(latencies, 50),
        "workflow_latency_p99_s": _percentile(latencies, 99),
        "makespan_s": makespan_s, "throughput_req_s": len(rows) / makespan_s if makespan_s else 0.0,
        "hit_rate_gpu": ratio("hit_gpu_tokens"), "hit_rate_cpu": ratio("loaded_cpu_tokens"),
        "recompute_rate": ratio("recomputed_tokens"),
        "h2d_bytes": 0, "d2h_bytes": 0, "h2d_utilization": 0.0, "d2h_utilization": 0.0,
        "prefetch_issued": 0, "prefetch_used": 0, "prefetch_wasted": 0, "prefetch_late": 0,
        "wall_s": wall_s, "params": dict(cfg.params),
    }


def _write_csv(path: Path, fields: tuple[str, ...] | list[str], rows: list[dict[str, Any]]) -> None:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(fields))
        writer.writeheader()
        writer.writerows(rows)


def replay(trace: Any, out_dir: str | os.PathLike[str], cfg: ReplayConfig) -> dict[str, Any]:
    """Run ``trace`` against the server at ``cfg.base_url``; write the run directory; return the summary."""
    import yaml

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.yaml").write_text(yaml.safe_dump({"backend": "sglang", **asdict(cfg)}, sort_keys=True))
    started = time.perf_counter()
    replayer = _Replayer(trace, cfg)
    makespan_s = replayer.run()
    rows = [replayer.rows[inv.id] for inv in trace.invocations]
    workflows = workflow_rows(rows)
    _write_csv(out / "requests.csv", ROW_FIELDS, rows)
    _write_csv(out / "workflows.csv", ("client_id", "start_s", "end_s", "latency_s"), workflows)
    summary = summarize(rows, workflows, cfg, trace, makespan_s, time.perf_counter() - started)
    tmp = out / "summary.json.tmp"
    tmp.write_text(json.dumps(summary, indent=2, sort_keys=True))
    os.replace(tmp, out / "summary.json")
    return summary


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
    args = parser.parse_args(argv)
    cfg = ReplayConfig(args.url, policy=args.policy, model=args.model, hardware=args.hardware,
                       concurrency=args.concurrency, vocab_size=args.vocab_size)
    summary = replay(load_trace(args.trace), args.out_dir, cfg)
    print(json.dumps({k: summary[k] for k in ("requests", "workflows", "workflow_latency_mean_s",
                                              "hit_rate_gpu", "makespan_s")}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
