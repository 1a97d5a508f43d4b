"""Pause-aware eviction for agent sessions that think, run tools and resume (issue 15 item 1).

A coding-agent session's context (~100K tokens) is reused by its next call, which comes after a
pause of seconds to minutes. What predicts reuse is *when each paused session calls again*:
- nodes no session's latest prompt uses (outputs, abandoned branches) go first;
- then nodes of paused sessions, the one predicted to call *last* first; the predicted call is the
  pause start plus the session's learned pause (``kvflow.session_gaps.GapLearner``: per session and
  per agent whose call ended, population prior); a session still paused past its prediction is
  re-predicted with the median *remaining* pause given how long it has waited (a long pause
  predicts a longer one), checked at every session event; a session that ended never calls;
- nodes of sessions with a call in the engine (running or queued) are kept.
Ties: LRU (within running sessions too). A node shared by several sessions takes the soonest.
(Ranking queued sessions by arrival instead, as FCFS would serve them, lost GPU hits on the
training sessions: 8.7% vs 16.4%; docs/sessions.md.) With ``backup_on_pause`` the cache backs a
pausing session's GPU nodes up at once, so evicting them later never waits for a D2H copy.

Key-order rule: a pause, a later re-prediction and a session's end lower its nodes' keys, so
those hooks return the session (the cache re-files its users' paths); a resume only raises them.
"""

from __future__ import annotations

import heapq
from typing import TYPE_CHECKING

from kvflow.policies.base import Policy
from kvflow.session_gaps import GapLearner
from kvflow.step_graph import INF

if TYPE_CHECKING:
    from kvflow.radix import RadixNode

NO_USER, PAUSED, RUNNING = 0, 1, 2


class PauseAwarePolicy(Policy):
    name = "pause_aware"
    tracks_dynamic = True  # a session's latest prompt path carries its (client, agent) users
    observes_sessions = True

    def __init__(self, prior_gap_s: float = 10.0, shrink_n: float = 3.0, backup_on_pause: bool = True) -> None:
        self.gaps = GapLearner(prior_gap_s=prior_gap_s, shrink_n=shrink_n)
        self.backup_on_pause = backup_on_pause
        self.resume_s: dict[str, float] = {}  # paused or ended client -> predicted next call (INF: none)
        self.paused: dict[str, tuple[float, str]] = {}  # paused client -> (pause start s, context)
        self._due: list[tuple[float, str]] = []  # (predicted call, client), to re-predict once passed

    # ----- session hooks --------------------------------------------------------------------------
    def on_session_pause(self, client: str, context: str, tokens: int, now_s: float) -> list[str]:
        self.paused[client] = (now_s, context)
        self._predict(client, now_s + self.gaps.predict_s(client, context))
        return [client, *self._overdue(now_s)]

    def on_session_resume(self, client: str, now_s: float) -> list[str]:
        start = self.paused.pop(client, None)
        self.resume_s.pop(client, None)  # a call in the engine: its keys rise, no re-filing
        if start is not None:
            self.gaps.observe(client, start[1], now_s - start[0])
        return self._overdue(now_s)

    def on_session_end(self, client: str, now_s: float) -> list[str]:
        self.paused.pop(client, None)
        self.resume_s[client] = INF
        self.gaps.forget(client)
        return [client, *self._overdue(now_s)]

    def _predict(self, client: str, call_s: float) -> None:
        self.resume_s[client] = call_s
        heapq.heappush(self._due, (call_s, client))

    def _overdue(self, now_s: float) -> list[str]:
        """Re-predict the paused sessions whose predicted call has passed (their keys drop)."""
        due, late = self._due, []
        while due and due[0][0] < now_s:
            call_s, client = heapq.heappop(due)
            start = self.paused.get(client)
            if start is None or self.resume_s.get(client) != call_s:
                continue  # resumed, ended or re-predicted since: a stale entry
            start_s, context = start
            self._predict(client, start_s + self.gaps.residual_median_s(client, context, now_s - start_s))
            late.append(client)
        return late

    # ----- ranking --------------------------------------------------------------------------------
    def node_call_s(self, node: RadixNode) -> float | None:
        """Soonest predicted call of the node's sessions; -INF if one has a call in the engine;
        None if no session uses the node."""
        resume, best = self.resume_s, None
        for users in (node.users, node.dynamic_users):
            for client, _ in users:
                value = resume.get(client)
                if value is None:
                    return -INF
                if best is None or value < best:
                    best = value
        return best

    def key(self, node: RadixNode) -> tuple:
        call_s = self.node_call_s(node)
        if call_s is None:
            return (NO_USER, 0.0, node.last_access)
        if call_s == -INF:
            return (RUNNING, 0.0, node.last_access)
        return (PAUSED, -call_s, node.last_access)

    def prefetch_limit(self, node: RadixNode) -> tuple | None:
        """A prefetch may only evict what is needed later than the node it loads."""
        return self.key(node)[:2] + (-INF,)
