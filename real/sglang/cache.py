"""The ``kvflow`` radix-cache backend: SGLang's unified radix cache plus workflow tags and hints.

KVFLOW.md 2.2-2.3 inside an unmodified SGLang 0.5.23:
- each request's ``kv_hints`` (a ``kvflow.workflow`` action) is read once: its steps-to-execution
  go to the core policy behind ``--radix-eviction-policy kvflow``, its (client, agent) and
  fixed-prompt boundary are kept for tagging and prefetch;
- after SGLang inserts a request's tokens, the node path is tagged: nodes of the fixed prompt get
  the (client, agent) user (the boundary node is split first, by a prefix walk), nodes past it are
  marked suffix unless another user's fixed prompt passes through them;
- splits copy the tags to the new parent (``KVFlowFullComponent``), as ``kvflow.radix`` does.

Every decision reads only the tree, the requests and the acknowledged load-back set, which are the
same on every tensor-parallel rank, so ranks stay in lockstep without extra collectives.
"""

from __future__ import annotations

import logging
import os
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

from sglang.srt.mem_cache.base_prefix_cache import MatchPrefixParams
from sglang.srt.mem_cache.radix_cache import RadixKey
from sglang.srt.mem_cache.unified_cache.components.base import ComponentType
from sglang.srt.mem_cache.unified_cache.components.full import FullComponent
from sglang.srt.mem_cache.unified_radix_cache import UnifiedRadixCache

from real.sglang.hints import WorkflowHint, parse_envelope
from real.sglang.policy import SUFFIX_ATTR, USERS_ATTR, CorePolicyStrategy
from real.sglang.prefetch import PrefetchGate

logger = logging.getLogger(__name__)
User = tuple[str, str]
_MAX_TRACKED_REQS = 65536


def _common_prefix_len(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


class KVFlowFullComponent(FullComponent):
    """SGLang's full-attention component; a split also copies the workflow tags to the new parent."""

    def redistribute_on_node_split(self, new_parent: Any, child: Any) -> None:
        super().redistribute_on_node_split(new_parent, child)
        users = getattr(child, USERS_ATTR, None)
        if users:
            setattr(new_parent, USERS_ATTR, set(users))
        if getattr(child, SUFFIX_ATTR, False):
            setattr(new_parent, SUFFIX_ATTR, True)


class KVFlowRadixCache(UnifiedRadixCache):
    def __init__(self, params: Any) -> None:
        super().__init__(params)
        self.boundaries: dict[User, RadixKey] = {}  # fixed-prompt key of each known agent
        self._last_prompt: dict[User, list[int]] = {}  # for boundary inference
        self._req_hints: OrderedDict[str, tuple[WorkflowHint, int]] = OrderedDict()
        self.prefetch_wanted: OrderedDict[User, None] = OrderedDict()
        self.prefetch_enabled = os.environ.get("KVFLOW_PREFETCH", "1") != "0"
        self.gate = PrefetchGate(self, max_prefetch=int(os.environ.get("KVFLOW_MAX_PREFETCH", "4")))

    # ----- hints --------------------------------------------------------------------------
    @property
    def strategy(self) -> CorePolicyStrategy | None:
        strategy = getattr(self.tree_core, "eviction_strategy", None)
        return strategy if isinstance(strategy, CorePolicyStrategy) else None

    def ingest(self, req: Any) -> tuple[WorkflowHint, int] | None:
        """Read a request's hint once: feed steps to the policy, fix its fixed-prompt length."""
        rid = req.rid
        if rid in self._req_hints:
            return self._req_hints[rid]
        try:
            hint = parse_envelope(getattr(req, "kv_hints", None))
        except ValueError as exc:
            logger.warning("request %s: ignoring kv_hints: %s", rid, exc)
            hint = None
        if hint is None:
            return None
        prompt = list(req.origin_input_ids)
        fixed = self._fixed_tokens(hint, prompt)
        self._req_hints[rid] = (hint, fixed)
        while len(self._req_hints) > _MAX_TRACKED_REQS:
            self._req_hints.popitem(last=False)
        self.set_hints(hint.client_id, hint.steps)
        return hint, fixed

    def _fixed_tokens(self, hint: WorkflowHint, prompt: list[int]) -> int:
        """The caller's mark, or the prefix shared with the agent's previous prompt (KVFLOW.md 2.2)."""
        if hint.fixed_tokens is not None:
            return min(hint.fixed_tokens, len(prompt))
        previous = self._last_prompt.get(hint.user)
        self._last_prompt[hint.user] = prompt
        return _common_prefix_len(previous, prompt) if previous is not None else 0

    def set_hints(self, client_id: str, steps: dict[str, float]) -> None:
        strategy = self.strategy
        if strategy is not None and strategy.uses_hints:
            strategy.set_hints({(client_id, agent): value for agent, value in steps.items()})
        for agent, value in sorted(steps.items()):
            if value == 1:
                self.prefetch_wanted[(client_id, agent)] = None

    # ----- tagging ------------------------------------------------------------------------
    def checkpoint_into_tree(self, req: Any, *, up_to: int, **kwargs: Any) -> None:
        super().checkpoint_into_tree(req, up_to=up_to, **kwargs)
        known = self.ingest(req)
        if known is None or self.disable:
            return
        hint, fixed = known
        key = RadixKey(
            req.full_untruncated_fill_ids[:up_to],
            req.extra_key,
            is_bigram=self.tree_core.is_eagle,
            cache_salt=req.cache_salt,
        )
        self.tag(key.page_aligned(self.page_size), fixed, hint.user)
        if req.finished():
            self._req_hints.pop(req.rid, None)

    def _walk(self, key: RadixKey) -> Any:
        """Deepest cached node on ``key``'s path; splits the node where the key ends inside it."""
        result = self.tree_core.match_prefix(MatchPrefixParams(key=key))
        self._apply_cache_actions(result.cache_actions)
        return self.tree_core.node_by_id(result.best_match_node)

    def tag(self, key: RadixKey, fixed_tokens: int, user: User) -> None:
        """Tag the cached path of ``key``: ``user`` on [0, fixed), suffix past it."""
        fixed = fixed_tokens - fixed_tokens % self.page_size
        if fixed > 0:
            self._walk(key[:fixed])  # split at the boundary so the tag stops exactly there
            self.boundaries[user] = key[:fixed]
        path = []
        node = self._walk(key)
        while node.parent is not None:
            path.append(node)
            node = node.parent
        end = sum(len(n.key) for n in path)
        for node in path:  # deepest first
            start = end - len(node.key)
            if start < fixed:
                users = getattr(node, USERS_ATTR, None)
                if users is None:
                    users = set()
                    setattr(node, USERS_ATTR, users)
                users.add(user)
                setattr(node, SUFFIX_ATTR, False)
            elif not getattr(node, USERS_ATTR, None):
                setattr(node, SUFFIX_ATTR, True)
            end = start

    # ----- prefetch (KVFLOW.md 2.5) -------------------------------------------------------
    def prefetch_next(self) -> int:
        """Start CPU->GPU loads for agents one step away; returns loads started."""
        if not self.prefetch_enabled or self.cache_controller is None:
            self.prefetch_wanted.clear()
            return 0
        started = 0
        for user in list(self.prefetch_wanted):
            if not self.gate.has_capacity():
                break  # keep the rest for the next scheduler step
            del self.prefetch_wanted[user]
            key = self.boundaries.get(user)
            if key is not None and self.gate.try_prefetch(user, key):
                started += 1
        return started

    def prefetch_fits(self, node_id: Any, need_tokens: int) -> bool:
        """Room for ``need_tokens`` without evicting anything the policy ranks as needed as soon as
        the target (the core's ``limit_key``): free slots plus what eviction would reach first,
        i.e. unlocked leaves ranked lower and the parents they uncover (O(evictable nodes))."""
        free = self._component_available_size(ComponentType.FULL)
        if free >= need_tokens:
            return True
        strategy = self.tree_core.eviction_strategy
        limit = strategy.get_priority(self.tree_core.node_by_id(node_id))
        if isinstance(limit, tuple) and len(limit) == 3:
            limit = limit[:2] + (float("-inf"),)
        core = self.tree_core
        gone: set[int] = set()
        frontier = [n for n in core.evictable_device_leaves if strategy.get_priority(n) < limit]
        while frontier:  # leaves ranked lower, then parents that become such leaves after them
            node = frontier.pop()
            if node.id in gone:
                continue
            gone.add(node.id)
            parent = node.parent
            full = parent.component_data[ComponentType.FULL] if parent is not None else None
            if (
                parent is not None
                and parent is not core.root_node
                and full.value is not None
                and full.lock_ref == 0
                and all(c.id in gone or c.evicted for c in parent.children.values())
                and strategy.get_priority(parent) < limit
            ):
                frontier.append(parent)
        lower = sum(len(core.node_by_id(i).key) for i in gone)
        return free + lower >= need_tokens


def kvflow_cache_factory(ctx: Any) -> UnifiedRadixCache:
    """``--radix-cache-backend kvflow``: the unified radix cache (HiCache included) on the Python
    tree core, which accepts plug-in eviction policies (the bundled Rust core does not)."""
    from sglang.srt.mem_cache.registry import create_unified_radix_cache

    params = ctx.params
    params.tree_core_backend = "python"
    params.component_registry_override = {
        **(params.component_registry_override or {}),
        ComponentType.FULL: KVFlowFullComponent,
    }
    if str(getattr(params, "eviction_policy", "")).lower() != "kvflow":
        logger.warning(
            "--radix-cache-backend kvflow with --radix-eviction-policy %s: workflow hints "
            "only tag nodes and drive prefetch; pass --radix-eviction-policy kvflow to rank "
            "evictions by steps-to-execution",
            params.eviction_policy,
        )
    return create_unified_radix_cache(ctx, cache_class=KVFlowRadixCache)
