"""Wall-clock workflow driver: releases a trace's invocations as their dependencies finish.

The same rules as the simulator's driver (sim/ and real/ never import each other, so the logic is
repeated here on a real clock): an invocation is *ready* when all its dependencies finished (a
workflow's first one at its ``arrival_s``) and is *released* to the engine ``delay_s`` later, never
before its own arrival. A client's frontier is its ready or running agents; each change sends
``steps_to_execution(frontier)`` to the engine (KVFLOW.md 2.2). Workflows without a graph get no
hints. For the oracle policy the driver also feeds each (client, agent)'s next use as the
simulator's oracle feed does: the number of the client's own invocations until that agent runs
again, read from the trace.
"""

from __future__ import annotations

import bisect
import heapq
import itertools
from collections import Counter, defaultdict
from collections.abc import Callable
from typing import Any

from kvflow.engine import Request
from kvflow.step_graph import INF, StepGraph

WARMUP_MARK = "warmup"


def is_warmup(inv: Any) -> bool:
    """Generators label warm-up invocations ``<client>/warmup<k>/...``; excluded from latency."""
    return any(part.startswith(WARMUP_MARK) for part in inv.id.split("/")[1:-1])


class RealRequest(Request):
    """An engine request that remembers the synthetic output ids the engine inserted into the tree
    (the KV store walks them to find the output node) and the tokens the model generated."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.inserted_output_ids: list[int] = []
        self.generated: list[int] = []
        self.kv: Any = None  # working KV buffer while running

    def output_ids(self) -> list[int]:
        self.inserted_output_ids = super().output_ids()
        return self.inserted_output_ids


class WallClockDriver:
    """Submits invocations into ``engine`` when their time comes; ``on_finished`` advances workflows."""

    def __init__(self, trace: Any, engine: Any, hints: bool = True, oracle_policy: Any = None,
                 on_submit: Callable[[Any], None] | None = None) -> None:
        self.trace = trace
        self.engine = engine
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
        self.frontier: dict[str, Counter[str]] = defaultdict(Counter)
        self.workflow_of = {inv.client_id: inv.workflow for inv in trace.invocations}
        self.client_left = Counter(inv.client_id for inv in trace.invocations)
        self.requests: dict[str, RealRequest] = {}
        self.ready_s: dict[str, float] = {}
        self._queue: list[tuple[float, int, str, str]] = []  # (time, seq, kind ready|release, inv id)
        self._seq = itertools.count()
        self._left = len(trace.invocations)
        self._inv_of: dict[int, str] = {}
        self.oracle = oracle_policy
        if oracle_policy is not None:
            self._init_oracle()
        for inv in trace.invocations:
            if not inv.deps:
                self._push(inv.arrival_s or 0.0, "ready", inv.id)

    # ----- oracle -----------------------------------------------------------------------------
    def _init_oracle(self) -> None:
        counts: dict[str, int] = defaultdict(int)
        self._position: dict[str, tuple[str, int]] = {}
        self._uses: dict[str, dict[str, list[int]]] = defaultdict(lambda: defaultdict(list))
        for inv in self.trace.invocations:  # topological order: each client's own sequence
            idx = counts[inv.client_id]
            counts[inv.client_id] += 1
            self._position[inv.id] = (inv.client_id, idx)
            self._uses[inv.client_id][inv.agent_id].append(idx)
        self.oracle.set_next_use({(c, a): float(idx[0]) for c, agents in self._uses.items()
                                  for a, idx in agents.items()})

    def _oracle_submit(self, inv: Any) -> None:
        client, now = self._position[inv.id]
        table = {}
        for agent, idx in self._uses[client].items():
            k = bisect.bisect_right(idx, now)  # first use strictly after the one starting now
            table[(client, agent)] = float(idx[k] - now) if k < len(idx) else INF
        table[(client, inv.agent_id)] = 0.0
        self.oracle.set_next_use(table)
        tree = self.engine.cache.tree
        for user in table:
            boundary = tree.user_nodes.get(user)
            if boundary is not None and boundary.parent is not None:
                for node in boundary.path_to_root():
                    tree.refresh(node)

    # ----- time ---------------------------------------------------------------------------------
    def _push(self, at_s: float, kind: str, inv_id: str) -> None:
        heapq.heappush(self._queue, (at_s, next(self._seq), kind, inv_id))

    def next_event_s(self) -> float | None:
        return self._queue[0][0] if self._queue else None

    def due(self, now_s: float) -> bool:
        return bool(self._queue) and self._queue[0][0] <= now_s

    def advance(self, now_s: float) -> int:
        """Process every ready/release event due at ``now_s``; returns requests submitted."""
        submitted = 0
        while self._queue and self._queue[0][0] <= now_s:
            _, _, kind, inv_id = heapq.heappop(self._queue)
            inv = self.by_id[inv_id]
            if kind == "ready":
                self._ready(inv, now_s)
            else:
                self._release(inv, now_s)
                submitted += 1
        return submitted

    def _ready(self, inv: Any, now_s: float) -> None:
        self.ready_s[inv.id] = now_s
        self.frontier[inv.client_id][inv.agent_id] += 1
        if not inv.deps:
            self._send_hints(inv.client_id, now_s)
        self._push(max(now_s + inv.delay_s, inv.arrival_s or 0.0), "release", inv.id)

    def _release(self, inv: Any, now_s: float) -> None:
        req = RealRequest(request_id=inv.id, client_id=inv.client_id, agent_id=inv.agent_id, app_id=inv.workflow,
                          tokens=self.trace.prompt_tokens(inv), fixed_tokens=self.trace.fixed_tokens(inv),
                          output_tokens=inv.output_tokens)
        self.requests[inv.id] = req
        self._inv_of[id(req)] = inv.id
        if self.oracle is not None:
            self._oracle_submit(inv)
        if self.on_submit is not None:
            self.on_submit(inv)
        self._send_hints(inv.client_id, now_s)
        self.engine.submit(req, now_s)

    def on_finished(self, requests: list[Request], now_s: float) -> None:
        clients = set()
        for req in requests:
            inv = self.by_id[self._inv_of[id(req)]]
            self.frontier[inv.client_id][inv.agent_id] -= 1
            if self.frontier[inv.client_id][inv.agent_id] <= 0:
                del self.frontier[inv.client_id][inv.agent_id]
            for succ_id in self.dependents[inv.id]:
                self.waiting_on[succ_id] -= 1
                if self.waiting_on[succ_id] == 0:
                    self._ready(self.by_id[succ_id], now_s)
            self.client_left[inv.client_id] -= 1
            if self.client_left[inv.client_id] == 0:
                self.engine.finish_client(inv.client_id, now_s)
            clients.add(inv.client_id)
            self._left -= 1
        for client in sorted(clients):
            self._send_hints(client, now_s)

    def _send_hints(self, client_id: str, now_s: float) -> None:
        graph = self.graphs.get(self.workflow_of[client_id])
        if graph is None:
            return
        frontier = [a for a in self.frontier[client_id] if a in graph.aggregation]
        self.engine.set_hints(client_id, graph.steps_to_execution(frontier), now_s)

    @property
    def pending(self) -> int:
        return self._left
