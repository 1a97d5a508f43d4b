"""The contract between the cache manager and an eviction policy: ``Policy``.

Adding a policy = one module with a ``Policy`` subclass + one ``conf/policy/<name>.yaml`` whose
``eviction._target_`` names the class (``kvflow.policies``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

from mypy_extensions import mypyc_attr

if TYPE_CHECKING:
    from kvflow.radix import RadixNode, User


@mypyc_attr(allow_interpreted_subclasses=True)  # a new policy is plain Python (compiled core too)
class Policy:
    """Ranks radix nodes for eviction; every hook is a no-op here, a subclass overrides what it uses.

    Keys: ``key(node)`` is a tuple, lowest evicted first. The cache files each evictable node in a
    heap under its key and re-files it only when told the key may have dropped, so the **key-order
    rule** is: a key may only *rise* without a refresh (a touch: newer ``last_access``, more hits);
    anything that may *lower* a key must be reported so the cache re-files the node. Hooks report
    it by returning the users whose keys may have dropped (``set_hints``, ``set_next_use``) or True
    (``observe_prompt``: re-file the agent's nodes). A key that rose is corrected when its stale
    entry surfaces, which is exact because it surfaces too early, never too late.

    What a hook may touch: its own state, and the node it is given, *read-only* (``users``,
    ``dynamic_users``, ``suffix``, ``last_access``, ``hits``, ``next_use``, ``tokens``). A policy
    never mutates the tree or a node, never walks the tree and never emits ops; the cache does
    all of that from what the hooks return.

    Declared capabilities (class attributes, read by the cache and the backends instead of probes):
    ``uses_hints``: steps-to-execution hints change its keys (the cache skips ``set_hints`` else);
    ``tracks_dynamic``: the cache tags each agent's latest dynamic prompt in ``node.dynamic_users``;
    ``observes_prompts``: the cache calls ``observe_prompt`` for every tagged prompt;
    ``reads_future``: the backend must feed it next uses read from the trace through
    ``set_next_use`` (``kvflow.workflow.NextUseFeed``); the backends build that feed only for such a
    policy, so the others pay nothing for it;
    ``observes_sessions``: the cache tells it when a session (client) pauses (its last call in the
    engine finished), resumes (its next submit) and ends, with the time (``on_session_pause`` /
    ``on_session_resume`` / ``on_session_end``), and which agent each call is of
    (``on_call_submit``); it may then back up a pausing session's GPU nodes at once
    (``backup_on_pause``) so that evicting them later never waits for a D2H copy.
    """

    name: ClassVar[str] = ""
    uses_hints: ClassVar[bool] = False
    tracks_dynamic: ClassVar[bool] = False
    observes_prompts: ClassVar[bool] = False
    reads_future: ClassVar[bool] = False
    observes_sessions: ClassVar[bool] = False
    backup_on_pause: bool = False

    def key(self, node: RadixNode) -> tuple:
        """Eviction rank of ``node``: lowest first (see the key-order rule)."""
        raise NotImplementedError

    def prefetch_limit(self, node: RadixNode) -> tuple | None:
        """A prefetch for ``node`` may evict only victims whose key is below this; None: no bound."""
        return None

    def set_hints(self, steps: dict[User, float | None]) -> list[User]:
        """New steps-to-execution per (client, agent); None forgets a value. Returns the users
        whose keys may have dropped, for the cache to re-file."""
        return []

    def set_next_use(self, next_use: dict[User, float]) -> list[User]:
        """Next use per (client, agent), in the client's own invocations (``reads_future``
        policies only). Returns the users whose keys may have dropped, as ``set_hints``."""
        return []

    def observe_prompt(self, agent: str, had_previous: bool, created_tokens: int, reused_tokens: int) -> bool:
        """A new prompt of ``agent`` (``observes_prompts``); its client's previous prompt of the same
        agent had ``created_tokens`` dynamic tokens, of which ``reused_tokens`` start the new one.
        Returns True when the agent's keys may have changed (the cache re-files its nodes)."""
        return False

    def observe_evict(self, node: RadixNode, tick: int) -> None:
        """``node`` is leaving the GPU as a victim at access-clock ``tick``."""

    def on_session_pause(self, client: str, context: str, tokens: int, now_s: float) -> list[str]:
        """``client`` has no call left in the engine at ``now_s``; its last call was of agent
        ``context`` with a ``tokens``-token prompt (``observes_sessions``). Returns the clients whose
        keys may have dropped (the cache re-files their users' paths), as every hook below."""
        return []

    def on_session_resume(self, client: str, now_s: float) -> list[str]:
        """A call of paused (or new) session ``client`` arrived at ``now_s``."""
        return []

    def on_call_submit(self, client: str, agent: str, now_s: float) -> list[str]:
        """A call of agent ``agent`` of session ``client`` arrived at ``now_s`` (every submit of a
        tagged call, after ``on_session_resume``): which agent calls, for a policy that tells a
        session's sub-agents from its main agent."""
        return []

    def on_session_end(self, client: str, now_s: float) -> list[str]:
        """Session ``client`` finished its last call: it never calls again."""
        return []

    def worth_keeping(self, node: RadixNode) -> bool:
        """Whether a CPU copy of ``node`` is worth making (False: drop it, never back it up)."""
        return True
