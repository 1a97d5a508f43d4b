"""Sub-agent awareness (issue 15 item 4): a finished sub-agent's private KV goes first and is never
backed up; a parent waiting on its sub-agents keeps its prefix. On top of ``kvflow_sessions``.

A coding-agent session spawns sub-agents (Explore, Plan, ...: often another model, so their KV
shares nothing with the parent's); the parent's next call joins them, and a sub-agent's context is
then dead weight, while the parent's ~100K-token prefix is reused right after the join. Known
online only, from which agent each call is of (``Policy.on_call_submit``):
- the session's *main* agent is ``main_agent``, or (None) the agent of its first call;
- a call of another agent marks that agent *running*: the parent waits on it;
- the parent's next call (the join) marks every running sub-agent *finished* (a later call of the
  same agent, a new sub-agent of that type, makes it running again).
Node attribution: the (session, agent) users on the node (``node.users``, and ``node.dynamic_users``:
the path of each agent's latest prompt). A node is *finished* when it has users and every one is
a finished sub-agent (a prefix still used by a live agent is not); it ranks first (tier FINISHED)
and ``worth_keeping`` vetoes its CPU copy. A node of a waiting parent ranks in tier PARENT: above
every other tier (``protect_over_running``, default) or just above the paused sessions' KV;
otherwise it is backed up as any session node (``backup_on_pause``, the write policy).
The tier replaces ``kvflow_sessions``' session tier only, after KVFlow's class and steps, so on
workflows with steps hints KVFlow's order stays first.

Key-order rule: a join lowers its session's keys (parent unprotected, sub-agents finished), and an
end forgets the session, so those hooks return it; a sub-agent's call only raises keys.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from kvflow.policies.kvflow_sessions import KVFlowSessionsPolicy
from kvflow.policies.pause_aware import PAUSED, RUNNING

if TYPE_CHECKING:
    from kvflow.radix import RadixNode

FINISHED = -1  # below pause_aware's NO_USER (0)
PARENT_OVER_RUNNING, PARENT_OVER_PAUSED = RUNNING + 1, (PAUSED + RUNNING) / 2


class SubagentAwarePolicy(KVFlowSessionsPolicy):
    name = "subagent_aware"

    def __init__(
        self,
        prior_gap_s: float = 10.0,
        shrink_n: float = 3.0,
        backup_on_pause: bool = True,
        main_agent: str | None = None,
        protect_over_running: bool = True,
    ) -> None:
        super().__init__(prior_gap_s=prior_gap_s, shrink_n=shrink_n, backup_on_pause=backup_on_pause)
        self.main_agent = main_agent
        self.parent_tier = PARENT_OVER_RUNNING if protect_over_running else PARENT_OVER_PAUSED
        self.main: dict[str, str] = {}  # session -> its main agent
        self.running: dict[str, set[str]] = {}  # session -> sub-agents called since the parent's last call
        self.finished: dict[str, set[str]] = {}  # session -> sub-agents joined by the parent
        # what it did: joins seen, sub-agents they finished, GPU victims that were finished sub-agent KV
        # (each before a partial eviction trims it), GPU victims of a waiting parent (only when nothing
        # else could go), CPU copies vetoed (asked once per copy tried)
        self.counts = {
            "joins": 0,
            "subagents_finished": 0,
            "finished_victims": 0,
            "parent_victims": 0,
            "backup_vetoes": 0,
        }

    # ----- which agent calls ----------------------------------------------------------------------
    def on_call_submit(self, client: str, agent: str, now_s: float) -> list[str]:
        main = self.main.setdefault(client, self.main_agent or agent)
        if agent != main:  # a sub-agent runs: its KV is live again, the parent waits (keys rise)
            self.running.setdefault(client, set()).add(agent)
            self.finished.get(client, set()).discard(agent)
            return []
        running = self.running.pop(client, None)
        if not running:
            return []
        self.counts["joins"] += 1
        self.counts["subagents_finished"] += len(running)
        self.finished.setdefault(client, set()).update(running)
        return [client]  # joined: sub-agents' keys drop to FINISHED, the parent's to its own tier

    def on_session_end(self, client: str, now_s: float) -> list[str]:
        for state in (self.main, self.running, self.finished):
            state.pop(client, None)
        return super().on_session_end(client, now_s)

    # ----- ranking --------------------------------------------------------------------------------
    def subagent_tier(self, node: RadixNode) -> float | None:
        """PARENT for a waiting parent's node, FINISHED for a node only finished sub-agents use,
        None otherwise (the session tier decides)."""
        live = False
        seen = False
        for users in (node.users, node.dynamic_users):
            for client, agent in users:
                seen = True
                if agent == self.main.get(client):
                    if self.running.get(client):
                        return self.parent_tier
                    live = True
                elif agent not in self.finished.get(client, ()):
                    live = True
        return FINISHED if seen and not live else None

    def key(self, node: RadixNode) -> tuple:
        key = KVFlowSessionsPolicy.key(self, node)
        tier = self.subagent_tier(node) if self.main else None
        return key if tier is None else (*key[:2], tier, 0.0, node.last_access)

    def worth_keeping(self, node: RadixNode) -> bool:
        """A finished sub-agent's private KV is never reused: no CPU copy."""
        if self.subagent_tier(node) == FINISHED:
            self.counts["backup_vetoes"] += 1
            return False
        return True

    def observe_evict(self, node: RadixNode, tick: int) -> None:
        tier = self.subagent_tier(node) if self.main else None
        if tier == FINISHED:
            self.counts["finished_victims"] += 1
        elif tier is not None:
            self.counts["parent_victims"] += 1
