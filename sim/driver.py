"""Workflow driver: turns a trace into timed engine requests and step hints (KVFLOW.md 2.2).

An invocation becomes *ready* when all its dependencies finished (or, for a workflow's first
invocation, at its arrival time) and is *released* to the engine ``delay_s`` later (tool time),
never before its own ``arrival_s``. A client's frontier is its ready or running agents; every time
it changes the driver sends ``steps_to_execution(frontier)`` for that client, and once more with
each request. Workflows without a graph get no hints (LRU behaviour, no prefetch).
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from collections.abc import Callable
from typing import Any

import simpy

from kvflow.engine import Request
from kvflow.step_graph import StepGraph

WARMUP_MARK = "warmup"


_WARMUP_PART = re.compile(r"/warmup[^/]*/")


def is_warmup(inv: Any) -> bool:
    """Generators label warm-up invocations ``<client>/warmup<k>/...``; they are excluded from latency."""
    return WARMUP_MARK in inv.id and _WARMUP_PART.search(inv.id) is not None


class WorkflowDriver:
    """Releases a trace's invocations into an engine as their dependencies complete."""

    def __init__(
        self,
        env: simpy.Environment,
        trace: Any,
        engine: Any,
        on_engine_input: Callable[[], None],
        hints: bool = True,
        on_submit: Callable[[Any], None] | None = None,
    ) -> None:
        self.env = env
        self.trace = trace
        self.engine = engine
        self.on_engine_input = on_engine_input  # start queued ops + wake the engine loop
        self.on_submit = on_submit
        self.graphs: dict[str, StepGraph | None] = {}
        if hints:
            for name, wf in trace.workflows.items():
                self.graphs[name] = StepGraph.from_dict(wf.graph) if wf.graph else None
        self.by_id = {inv.id: inv for inv in trace.invocations}
        self.dependents: dict[str, list[str]] = defaultdict(list)
        self.waiting_on: dict[str, int] = {}
        for inv in trace.invocations:
            self.waiting_on[inv.id] = len(inv.deps)
            for dep in inv.deps:
                if dep not in self.by_id:
                    raise ValueError(f"invocation {inv.id!r}: unknown dependency {dep!r}")
                self.dependents[dep].append(inv.id)
        self.frontier: dict[str, dict[str, int]] = defaultdict(dict)  # client -> agent -> running/ready
        self._last_frontier: dict[str, frozenset[str]] = {}
        self.workflow_of = {inv.client_id: inv.workflow for inv in trace.invocations}
        self.client_left = Counter(inv.client_id for inv in trace.invocations)
        self.requests: dict[str, Request] = {}
        self.release_s: dict[str, float] = {}
        self.ready_s: dict[str, float] = {}
        self.finish_s: dict[str, float] = {}
        self.all_done = env.event()
        self._left = len(trace.invocations)
        self._request_ids: dict[int, str] = {}

    def start(self) -> None:
        if not self.trace.invocations:
            self.all_done.succeed()
        for inv in self.trace.invocations:
            if not inv.deps:
                self.env.process(self._root(inv))

    def _root(self, inv: Any):
        yield self.env.timeout(max(0.0, (inv.arrival_s or 0.0) - self.env.now))
        self._ready(inv)
        self._send_hints(inv.client_id)

    # -- state changes -------------------------------------------------------------------------
    def _ready(self, inv: Any) -> None:
        self.ready_s[inv.id] = self.env.now
        agents = self.frontier[inv.client_id]
        agents[inv.agent_id] = agents.get(inv.agent_id, 0) + 1
        release_at = max(self.env.now + inv.delay_s, inv.arrival_s or 0.0)
        if release_at > self.env.now:
            self.env.process(self._release_later(inv, release_at - self.env.now))
        else:
            self._release(inv)  # no tool/think time: no SimPy process needed

    def _release_later(self, inv: Any, wait_s: float):
        yield self.env.timeout(wait_s)
        self._release(inv)

    def _release(self, inv: Any) -> None:
        self.release_s[inv.id] = self.env.now
        req = Request(
            request_id=inv.id,
            client_id=inv.client_id,
            agent_id=inv.agent_id,
            tokens=self.trace.prompt_tokens(inv),
            fixed_tokens=self.trace.fixed_tokens(inv),
            output_tokens=inv.output_tokens,
            app_id=inv.workflow,
        )
        self.requests[inv.id] = req
        self._request_ids[id(req)] = inv.id
        if self.on_submit is not None:
            self.on_submit(inv)
        self._send_hints(inv.client_id)
        self.engine.submit(req, self.env.now)
        self.on_engine_input()

    def on_finished(self, requests: list[Request]) -> None:
        """Called by the engine loop with the requests an iteration finished."""
        clients = set()
        for req in requests:
            inv = self.by_id[self._request_ids[id(req)]]
            self.finish_s[inv.id] = self.env.now
            agents = self.frontier[inv.client_id]
            agents[inv.agent_id] -= 1
            if agents[inv.agent_id] <= 0:
                del agents[inv.agent_id]
            for succ_id in self.dependents[inv.id]:
                self.waiting_on[succ_id] -= 1
                if self.waiting_on[succ_id] == 0:
                    self._ready(self.by_id[succ_id])
            self.client_left[inv.client_id] -= 1
            if self.client_left[inv.client_id] == 0:
                self.engine.finish_client(inv.client_id, self.env.now)
            clients.add(inv.client_id)
            self._left -= 1
        for client in sorted(clients):
            self._send_hints(client)
        if requests:
            self.on_engine_input()
        if self._left == 0 and not self.all_done.triggered:
            self.all_done.succeed()

    def _send_hints(self, client_id: str) -> None:
        graph = self.graphs.get(self.workflow_of[client_id])
        if graph is None:
            return
        frontier = frozenset(a for a in self.frontier[client_id] if a in graph.aggregation)
        if self._last_frontier.get(client_id) == frontier:
            return  # same frontier, same hints: the engine already has them
        self._last_frontier[client_id] = frontier
        self.engine.set_hints(client_id, graph.steps_to_execution(frontier), self.env.now)

    @property
    def pending(self) -> int:
        return self._left
