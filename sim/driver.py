"""Workflow driver: turns a trace into timed engine requests and step hints (KVFLOW.md 2.2).

The release rule (closed or open loop, session starts: ``kvflow.release.ReleaseRule``) and the hints
(``kvflow.workflow.WorkflowTracker``) are the core's, shared with the real backend and the SGLang
replay; this driver only supplies SimPy time: a root becomes ready at ``rule.root_ready_s``, a later
invocation when its dependencies finish, each is released at ``rule.release_s(inv, ready)``, and the
client's hints go to the engine whenever its frontier changes. Workflows without a graph get no
hints (LRU behaviour, no prefetch).
"""

from __future__ import annotations

from array import array
from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import Any

import simpy

from harness.rows import RequestRow, request_row
from kvflow.engine import Request
from kvflow.release import ReleaseRule
from kvflow.workflow import WorkflowTracker
from traces.tokens import TOKEN_TYPECODE

__all__ = ["SimRequest", "WorkflowDriver"]


_NO_TOKENS = array(TOKEN_TYPECODE)


def _nothing() -> None:
    """No engine loop yet (before ``start``)."""


@dataclass(eq=False, slots=True)
class SimRequest(Request):
    """An engine request that knows its invocation and when it became ready, which its finish
    needs: looking both up by id in dicts of every invocation (~30k at 1,024 workflows) cost more
    than the two slots."""

    invocation: Any = None
    ready_s: float = 0.0


class WorkflowDriver:
    """Releases a trace's invocations into an engine as their dependencies complete."""

    def __init__(
        self,
        env: simpy.Environment,
        trace: Any,
        engine: Any,
        hints: bool = True,
        on_submit: Callable[[Any], None] | None = None,
        rule: ReleaseRule | None = None,
    ) -> None:
        self.env = env
        self.trace = trace
        self.engine = engine
        self.on_engine_input: Callable[[], None] = _nothing  # set by start(): the engine loop's poke
        self.on_submit = on_submit
        self.tracker = WorkflowTracker(trace, hints)
        self.rule = rule or ReleaseRule(trace)
        # a finished request's row (its counters and times); the request itself is not kept, so a
        # run keeps ~170 B per finished request instead of the request, its prompt and its ready time
        self.finished_rows: dict[str, RequestRow] = {}
        self.all_done = env.event()

    @property
    def pending(self) -> int:
        return self.tracker.pending

    def start(self, on_engine_input: Callable[[], None]) -> None:
        """Begin releasing; ``on_engine_input()`` (start queued ops + wake the engine loop) runs after
        every submit and finish. Given here, not to the constructor: the loop is built after the
        driver, since the loop reports finished requests to it."""
        self.on_engine_input = on_engine_input
        if not self.trace.invocations:
            self.all_done.succeed()
        for inv in self.tracker.roots:
            self.env.process(self._root(inv))

    def _root(self, inv: Any) -> Generator[simpy.Event, Any, None]:
        yield self.env.timeout(max(0.0, self.rule.root_ready_s(inv) - self.env.now))
        self._ready(inv)
        self._send_hints(inv.client_id)

    # -- state changes -------------------------------------------------------------------------
    def _ready(self, inv: Any) -> None:
        now = self.env.now
        self.tracker.ready(inv)
        release_at = self.rule.release_s(inv, now)
        if release_at > now:
            self.env.process(self._release_later(inv, now, release_at - now))
        else:
            self._release(inv, now)  # no tool/think time: no SimPy process needed

    def _release_later(self, inv: Any, ready_s: float, wait_s: float) -> Generator[simpy.Event, Any, None]:
        yield self.env.timeout(wait_s)
        self._release(inv, ready_s)

    def _release(self, inv: Any, ready_s: float) -> None:
        req = SimRequest(
            request_id=inv.id,
            client_id=inv.client_id,
            agent_id=inv.agent_id,
            tokens=self.trace.prompt_array(inv),  # machine ints: cheap to slice and compare
            fixed_tokens=self.trace.fixed_tokens(inv),
            output_tokens=max(1, inv.output_tokens),  # a call returns at least one token (logs may say 0)
            app_id=inv.workflow,
            invocation=inv,
            ready_s=ready_s,
        )
        if self.on_submit is not None:
            self.on_submit(inv)
        self._send_hints(inv.client_id)
        self.engine.submit(req, self.env.now)
        self.on_engine_input()

    def rows(self) -> list[RequestRow]:
        """One row per invocation in trace order (``harness.rows.ROW_FIELDS``), after the run."""
        finished = self.finished_rows
        return [finished[inv.id] for inv in self.trace.invocations]

    def on_finished(self, requests: list[SimRequest]) -> None:
        """Called by the engine loop with the requests an iteration finished (this driver's)."""
        clients = set()
        for req in requests:
            inv = req.invocation
            req.tokens = _NO_TOKENS  # whoever still holds it (a router's view) needs no 100K-token prompt
            self.finished_rows[inv.id] = request_row(inv, req, req.ready_s)
            ready, client_done = self.tracker.finished(inv)
            for succ in ready:
                self._ready(succ)
            if client_done:
                self.engine.finish_client(inv.client_id, self.env.now)
            clients.add(inv.client_id)
        for client in sorted(clients):
            self._send_hints(client)
        if requests:
            self.on_engine_input()
        if self.tracker.pending == 0 and not self.all_done.triggered:
            self.all_done.succeed()

    def _send_hints(self, client_id: str) -> None:
        steps = self.tracker.hints(client_id)
        if steps is not None:
            self.engine.set_hints(client_id, steps, self.env.now)
