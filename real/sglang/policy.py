"""The core's eviction policies as an SGLang ``EvictionStrategy`` (``--radix-eviction-policy kvflow``).

No ranking logic lives here: ``get_priority`` shows an SGLang tree node to the core policy through
``NodeView`` (the three attributes a ``kvflow.policies`` key reads) and returns the core's key
tuple unchanged, so SGLang evicts the lowest key first exactly as ``kvflow.radix`` does. SGLang
rebuilds its eviction heap on every evict call, so new hints take effect at the next eviction.

Tags are plain attributes on SGLang's ``UnifiedTreeNode`` (set by the ``kvflow`` radix-cache
backend, see ``real.sglang.cache``); a node without them is "no workflow info".
"""

from __future__ import annotations

from typing import Any

from kvflow.policies import make_policy

USERS_ATTR = "kvflow_users"  # set[(client_id, agent_id)] whose fixed prompt passes through the node
SUFFIX_ATTR = "kvflow_suffix"  # True: dynamic part / output of a tagged request
_NO_USERS: frozenset = frozenset()

try:  # a real subclass when SGLang is importable; the adapter also works without it (tests)
    from sglang.srt.mem_cache.evict_policy import EvictionStrategy as _Base
except ImportError:  # pragma: no cover - exercised only outside the SGLang venv
    _Base = object  # type: ignore[assignment,misc]


class NodeView:
    """What a core policy reads from a node, taken from an SGLang tree node."""

    __slots__ = ("users", "suffix", "last_access", "next_use")

    def __init__(self, node: Any) -> None:
        self.users = getattr(node, USERS_ATTR, _NO_USERS)
        self.suffix = getattr(node, SUFFIX_ATTR, False)
        self.last_access = node.last_access_time
        self.next_use = None


class CorePolicyStrategy(_Base):  # type: ignore[misc,valid-type]
    """``get_priority(node) = core_policy.key(NodeView(node))``; hints go to the core policy."""

    def __init__(self, policy: str = "kvflow", **policy_kwargs: Any) -> None:
        self.policy = make_policy(policy, **policy_kwargs)

    @property
    def uses_hints(self) -> bool:
        return self.policy.uses_hints

    def set_hints(self, steps: dict[tuple[str, str], float | None]) -> None:
        self.policy.set_hints(steps)  # (SGLang rebuilds its heap per evict: no re-filing to do)

    def get_priority(self, node: Any) -> tuple:
        return self.policy.key(NodeView(node))


def kvflow_strategy(**config: Any) -> CorePolicyStrategy:
    """Factory registered as ``kvflow``; ``--radix-eviction-policy-config`` keys are passed to the
    core policy (``KVFlowPolicy`` takes none, so any key fails at startup, naming it)."""
    return CorePolicyStrategy("kvflow", **config)
