"""User tagging: which (client, agent) users a node serves, which nodes are suffixes, and each
user's latest dynamic prompt; plus re-filing a user's nodes when the policy says their keys dropped.

A fixed-prompt node records its users in ``node.users`` (``tree.user_nodes[user]`` is where the
fixed prompt ends); a node past a tagged request's fixed prompt is a ``suffix``. For a policy with
``tracks_dynamic``, ``node.dynamic_users`` tags the path of each user's latest dynamic prompt.

Both ends follow evictions: when an end node leaves the tree (``RadixTree.on_detach``) it is
re-pointed at its parent, the deepest node of that prompt still cached, so the path above it is
still re-filed when a key drops and untagged when the next prompt arrives. A reverse index (node id
-> users whose end it is) keeps that O(users ending there) per eviction.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

from kvflow.radix import RadixNode, RadixTree, Token, User, common_prefix_len

if TYPE_CHECKING:
    from kvflow.policies.base import Policy


class UserTags:
    def __init__(self, tree: RadixTree, policy: Policy) -> None:
        self.tree, self.policy = tree, policy
        self.dynamic_ends: dict[User, RadixNode] = {}  # user -> end of its latest dynamic prompt
        self.last_prompt: dict[User, tuple[Sequence[Token], int]] = {}
        self._fixed_at: dict[int, set[User]] = {}  # node id -> users whose tree.user_nodes it is
        self._dynamic_at: dict[int, set[User]] = {}  # node id -> users whose dynamic_ends it is
        # user -> ends of its earlier fixed prompts off its latest one's path (node id -> node): their
        # nodes keep the user's tag, so a key change of the user must re-file them too
        self._older_fixed: dict[User, dict[int, RadixNode]] = {}
        self._older_at: dict[int, set[User]] = {}  # node id -> users with an earlier fixed end there
        tree.on_detach = self.on_detach

    def set_fixed_end(self, user: User, node: RadixNode) -> None:
        """``user``'s fixed prompt ends at ``node`` (``tree.user_nodes``). A previous end off the new
        path (the fixed prompt changed) is kept as an earlier end: its path stays tagged."""
        old = self.tree.user_nodes.get(user)
        if old is node:
            return
        if old is not None and old.parent is not None and not any(n is old for n in node.path_to_root()):
            _add_older(self._older_fixed, self._older_at, user, old)
        _drop_older(self._older_fixed, self._older_at, user, node)  # current again
        _point(self.tree.user_nodes, self._fixed_at, user, node)

    def fixed_ends(self, user: User) -> list[RadixNode]:
        """Every cached end of ``user``'s fixed prompts: the latest, then earlier ones still tagged."""
        latest = self.tree.user_nodes.get(user)
        ends = [latest] if latest is not None and latest.parent is not None else []
        return ends + list(self._older_fixed.get(user, {}).values())

    def on_detach(self, node: RadixNode, parent: RadixNode) -> None:
        """``node`` left the tree: ends there move up to ``parent``. A dynamic end that reaches the
        root is dropped (nothing of that prompt is cached); a fixed end stays on the detached node
        then, as the record that the user ran (``KVFlowEngine.finish_client`` reads the keys)."""
        if node.node_id in self._dynamic_at:
            _repoint(self.dynamic_ends, self._dynamic_at, node, parent, drop_at_root=True)
        if node.node_id in self._fixed_at:
            _repoint(self.tree.user_nodes, self._fixed_at, node, parent, drop_at_root=False)
        if node.node_id in self._older_at:
            for user in self._older_at.pop(node.node_id):
                _drop_older(self._older_fixed, self._older_at, user, node)
                if parent.parent is not None and parent is not self.tree.user_nodes.get(user):
                    _add_older(self._older_fixed, self._older_at, user, parent)

    def tag(self, node: RadixNode, start: int, fixed_end: int, prompt_end: int, user: User | None) -> bool:
        """Record ``user`` on a fixed-prompt node, or mark a later node as a suffix; returns True for
        a node of the prompt's dynamic part."""
        if user is None:
            return False
        if start < fixed_end:
            if user not in node.users:
                node.add_user(user)
                self.tree.refresh(node)
            return False
        if not node.users and not node.suffix:
            node.suffix = True
            self.tree.refresh(node)  # its class changed: re-file it in the eviction heaps
        return start < prompt_end

    def set_latest_dynamic(self, user: User, deepest: RadixNode) -> None:
        """``user``'s latest dynamic prompt now ends at ``deepest``: tag that path (between the
        fixed part and ``deepest``) with ``user`` and untag the previous one. Only the latest
        prompt of an agent is a candidate for reuse by its next turn (a conversation it extends);
        older versions live on only as the shared prefix of the latest."""
        new_path: list[RadixNode] = []
        node: RadixNode | None = deepest
        while node is not None and node.parent is not None and user not in node.users:
            new_path.append(node)
            node = node.parent
        on_new = {n.node_id for n in new_path}
        node = self.dynamic_ends.get(user)
        while node is not None and node.parent is not None and user in node.dynamic_users:
            if node.node_id not in on_new:
                node.discard_dynamic_user(user)
                self.tree.refresh(node)
            node = node.parent
        for node in new_path:
            if user not in node.dynamic_users:
                node.add_dynamic_user(user)
                self.tree.refresh(node)
        _point(self.dynamic_ends, self._dynamic_at, user, deepest)

    def observe_prompt(self, user: User | None, tokens: Sequence[Token], fixed_tokens: int) -> None:
        """Tell a learning policy how much of ``user``'s previous dynamic prompt its new prompt
        repeats (a conversation it extends), whatever the cache holds."""
        if user is None or not self.policy.observes_prompts:
            return
        previous = self.last_prompt.get(user)
        self.last_prompt[user] = (tokens, fixed_tokens)
        if previous is None:
            changed = self.policy.observe_prompt(user[1], False, 0, 0)
        else:
            prev_tokens, prev_fixed = previous
            common = common_prefix_len(prev_tokens, tokens)
            changed = self.policy.observe_prompt(
                user[1], True, max(0, len(prev_tokens) - prev_fixed), max(0, common - prev_fixed)
            )
        if changed:  # the agent's reuse estimates moved: re-file its nodes (every client's)
            self._refresh_agent(user[1])

    def _refresh_agent(self, agent: str) -> None:
        for (_, a), end in self.dynamic_ends.items():
            if a == agent and end.parent is not None:
                for node in end.path_to_root():
                    self.tree.refresh(node)
        self.refresh_users([user for user in self.tree.user_nodes if user[1] == agent])

    def refresh_users(self, users: Iterable[User]) -> None:
        """Re-file the fixed-prompt paths of each user, earlier fixed prompts' too (its key may have
        dropped)."""
        refresh = self.tree.refresh
        for user in users:
            for end in self.fixed_ends(user):
                for node in end.path_to_root():
                    refresh(node)


def _add_older(older: dict[User, dict[int, RadixNode]], at: dict[int, set[User]], user: User, node: RadixNode) -> None:
    """Record ``node`` as an earlier fixed end of ``user`` (both indexes)."""
    older.setdefault(user, {})[node.node_id] = node
    at.setdefault(node.node_id, set()).add(user)


def _drop_older(older: dict[User, dict[int, RadixNode]], at: dict[int, set[User]], user: User, node: RadixNode) -> None:
    """Forget ``node`` as an earlier fixed end of ``user`` (both indexes)."""
    ends = older.get(user)
    if ends is None or ends.pop(node.node_id, None) is None:
        return
    if not ends:
        del older[user]
    _unindex(at, node, user)


def _unindex(at: dict[int, set[User]], node: RadixNode, user: User) -> None:
    """Remove ``user`` from reverse index ``at`` under ``node`` (and the entry once empty)."""
    users = at.get(node.node_id)
    if users is not None:
        users.discard(user)
        if not users:
            del at[node.node_id]


def _point(index: dict[User, RadixNode], at: dict[int, set[User]], user: User, node: RadixNode) -> None:
    """Set ``index[user] = node`` and keep the reverse index ``at`` in step."""
    old = index.get(user)
    if old is node:
        return
    if old is not None:
        _unindex(at, old, user)
    index[user] = node
    at.setdefault(node.node_id, set()).add(user)


def _repoint(
    index: dict[User, RadixNode], at: dict[int, set[User]], node: RadixNode, parent: RadixNode, drop_at_root: bool
) -> None:
    """Move every end at the detached ``node`` to ``parent`` (at the root: drop it, or leave it)."""
    users = [user for user in at.pop(node.node_id) if index.get(user) is node]  # (in step, unless set directly)
    if parent.parent is None:
        if drop_at_root:
            for user in users:
                del index[user]
        return
    for user in users:
        index[user] = parent
    if users:
        at.setdefault(parent.node_id, set()).update(users)
