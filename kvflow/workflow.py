"""Clock-free workflow bookkeeping shared by the simulator's and the real backend's drivers.

A trace's invocation is *ready* when all its dependencies finished (a workflow's first one at its
arrival) and is released to the engine ``delay_s`` later; both backends apply these rules with their
own clock. A client's frontier is its ready or running agents; its steps-to-execution hints are
``StepGraph.steps_to_execution(frontier)`` (KVFLOW.md 2.2). ``NextUseFeed`` gives the clairvoyant policy
each (client, agent)'s next use, read from the trace only (STYLE.md section 6).
"""

from __future__ import annotations

import bisect
import re
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from kvflow.step_graph import INF, StepGraph

if TYPE_CHECKING:
    from kvflow.cache import KVCacheManager


class InvocationLike(Protocol):
    """What the core reads of one invocation (``traces.Invocation`` has it; kvflow never imports traces)."""

    id: str
    client_id: str
    agent_id: str
    workflow: str
    deps: Sequence[str]


class WorkflowLike(Protocol):
    graph: Mapping[str, Any] | None  # StepGraph dict (docs/architecture.md), or None: no graph


class TraceLike(Protocol):
    """What the core reads of a trace: invocations in topological order and workflows by name."""

    @property
    def invocations(self) -> Sequence[InvocationLike]: ...

    @property
    def workflows(self) -> Mapping[str, WorkflowLike]: ...


_WARMUP_PART = re.compile(r"/warmup[^/]*/")


def is_warmup(inv: InvocationLike) -> bool:
    """Generators label warm-up invocations ``<client>/warmup<k>/...``; excluded from latency."""
    return "warmup" in inv.id and _WARMUP_PART.search(inv.id) is not None


class WorkflowTracker:
    """Dependencies, frontiers and hints of every workflow instance (client) in a trace."""

    def __init__(self, trace: TraceLike, hints: bool = True) -> None:
        self.graphs: dict[str, StepGraph | None] = {}
        if hints:
            for name, wf in trace.workflows.items():
                self.graphs[name] = StepGraph.from_dict(wf.graph) if wf.graph else None
        self.by_id = {inv.id: inv for inv in trace.invocations}
        dependents: dict[str, list[str]] = defaultdict(list)
        self.waiting_on: dict[str, int] = {}
        for inv in trace.invocations:
            self.waiting_on[inv.id] = len(inv.deps)
            for dep in inv.deps:
                if dep not in self.by_id:
                    raise ValueError(f"invocation {inv.id!r}: unknown dependency {dep!r}")
                dependents[dep].append(inv.id)
        # the one id (most invocations have one successor, or none: no entry), else a tuple: a list
        # per invocation was ~115 B of each simulated request (benchmarks/scale.py)
        self.dependents: dict[str, str | tuple[str, ...]] = {
            dep: ids[0] if len(ids) == 1 else tuple(ids) for dep, ids in dependents.items()
        }
        self.roots = [inv for inv in trace.invocations if not inv.deps]
        self.workflow_of = {inv.client_id: inv.workflow for inv in trace.invocations}
        self.client_left = Counter(inv.client_id for inv in trace.invocations)
        self.frontier: dict[str, dict[str, int]] = defaultdict(dict)  # client -> agent -> ready/running
        self.pending = len(trace.invocations)
        self._last_frontier: dict[str, frozenset[str]] = {}
        self._changed: set[str] = set()  # clients whose frontier moved since their last hints()

    def ready(self, inv: InvocationLike) -> None:
        agents = self.frontier[inv.client_id]
        agents[inv.agent_id] = agents.get(inv.agent_id, 0) + 1
        self._changed.add(inv.client_id)

    def finished(self, inv: InvocationLike) -> tuple[list[InvocationLike], bool]:
        """``inv`` completed: its successors that are now ready, and whether its client is done."""
        agents = self.frontier[inv.client_id]
        agents[inv.agent_id] -= 1
        if agents[inv.agent_id] <= 0:
            del agents[inv.agent_id]
        self._changed.add(inv.client_id)
        ready = []
        after = self.dependents.get(inv.id, ())
        for succ_id in (after,) if isinstance(after, str) else after:
            self.waiting_on[succ_id] -= 1
            if self.waiting_on[succ_id] == 0:
                ready.append(self.by_id[succ_id])
        self.client_left[inv.client_id] -= 1
        self.pending -= 1
        return ready, self.client_left[inv.client_id] == 0

    def hints(self, client_id: str) -> dict[str, float] | None:
        """The client's steps-to-execution if its frontier changed since the last call; None when
        unchanged (the engine has them) or when its workflow declares no graph."""
        if client_id not in self._changed:  # no ready/finished since the last call: unchanged
            return None
        self._changed.discard(client_id)
        graph = self.graphs.get(self.workflow_of[client_id])
        if graph is None:
            return None
        frontier = frozenset(a for a in self.frontier[client_id] if a in graph.aggregation)
        if self._last_frontier.get(client_id) == frontier:
            return None
        self._last_frontier[client_id] = frontier
        return graph.steps_to_execution(frontier)


class NextUseFeed:
    """Keeps the clairvoyant policy's next-use table current as invocations are submitted.

    The clairvoyant policy knows, for every (client, agent) fixed prompt, exactly how many of that client's
    invocations come before its next use: the branch that will be taken, how often a loop repeats,
    whether the agent runs again at all (KVFlow only has the graph's earliest possible occurrence).
    Counting in the client's own invocations, not in estimated seconds, keeps the ranking right
    however fast each workflow progresses among concurrent ones.
    """

    def __init__(self, trace: TraceLike, cache: KVCacheManager) -> None:
        self.cache = cache
        self.position: dict[str, tuple[str, int]] = {}
        counts: dict[str, int] = defaultdict(int)
        self.uses: dict[str, dict[str, list[int]]] = defaultdict(lambda: defaultdict(list))
        for inv in trace.invocations:  # topological order: each client's own invocation sequence
            idx = counts[inv.client_id]
            counts[inv.client_id] += 1
            self.position[inv.id] = (inv.client_id, idx)
            self.uses[inv.client_id][inv.agent_id].append(idx)
        first_uses = {(c, a): float(idx[0]) for c, agents in self.uses.items() for a, idx in agents.items()}
        cache.policy.set_next_use(first_uses)

    def on_submit(self, inv: InvocationLike) -> None:
        client, now = self.position[inv.id]
        table = {}
        for agent, idx in self.uses[client].items():
            k = bisect.bisect_right(idx, now)  # first use strictly after the one starting now
            table[(client, agent)] = float(idx[k] - now) if k < len(idx) else INF
        table[(client, inv.agent_id)] = 0.0  # running now
        # only a next use that moved later lowers a key (evicted sooner): the policy names those
        # users and the cache re-files them at once; a key that rises is re-filed when its stale
        # heap entry surfaces (RadixTree.refresh)
        self.cache.refresh_users(self.cache.policy.set_next_use(table))
