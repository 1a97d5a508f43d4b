"""Putting a computed sequence into the tree: walk the part already cached, then add new nodes.

One ``Insertion`` carries the walk's state; the two phases and the step they share are small
functions, so the boundaries (the fixed prompt's end, the prompt's end) are handled in one place.
``KVCacheManager.insert`` drives it and owns what happens around it (reservations, tags).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from kvflow.radix import RadixNode, RadixTree, User
from kvflow.tagging import UserTags


class Insertion:
    """Where an insert is (``node`` ends ``tokens[:pos]``), what GPU reservation is left, the node
    where the fixed prompt ends and the deepest node of the prompt's dynamic part."""

    __slots__ = (
        "tree",
        "tokens",
        "user",
        "limit",
        "fixed_end",
        "prompt_end",
        "reserved",
        "node",
        "pos",
        "fixed_node",
        "dynamic_last",
    )

    def __init__(
        self,
        tree: RadixTree,
        tokens: Sequence[int],
        reserved_tokens: int,
        fixed_tokens: int,
        user: User | None,
        prompt_tokens: int | None,
    ) -> None:
        self.tree, self.tokens, self.user = tree, tokens, user
        self.limit = tree.page_floor(len(tokens))
        self.fixed_end = tree.page_floor(min(fixed_tokens, self.limit)) if user else 0
        self.prompt_end = tree.page_floor(len(tokens) if prompt_tokens is None else prompt_tokens)
        self.reserved = reserved_tokens
        self.node: RadixNode = tree.root
        self.pos = 0
        self.fixed_node: RadixNode = tree.root
        self.dynamic_last: RadixNode | None = None


def walk_cached(ins: Insertion, tags: UserTags, known_tokens: int) -> None:
    """Follow the nodes that already hold ``tokens``; a node off the GPU takes its share of the
    reservation (it was recomputed). Stops at a node in flight or one nothing was reserved for."""
    tree = ins.tree
    while ins.pos < ins.limit:
        child = _next_cached(ins, known_tokens)
        if child is None:
            break
        if not child.gpu:
            if child.inflight is not None:
                break  # a copy of this node is in flight: keep the tree consistent, stop here
            if ins.reserved < len(child.tokens):
                break  # nothing reserved for it: leave it to the CPU tier
            tree.join_gpu(child)  # recomputed on the GPU: the reservation becomes its GPU copy
            ins.reserved -= len(child.tokens)
        child.last_access = tree.tick()
        _advance(ins, child, tags)


def _next_cached(ins: Insertion, known_tokens: int) -> RadixNode | None:
    """The child continuing ``tokens`` at ``pos``, split to the common part and at the fixed
    prompt's end; a prefix of ``known_tokens`` (matched and locked since) is not compared again."""
    tree, pos = ins.tree, ins.pos
    child = ins.node.children.get(tree.child_key(ins.tokens, pos))
    if child is None:
        return None
    if pos + len(child.tokens) > known_tokens:
        common = tree.common_len(child.tokens, ins.tokens, pos)
        if common == 0:
            return None
        if common < len(child.tokens):
            child = tree.split(child, common)
    if pos < ins.fixed_end < pos + len(child.tokens):
        tree.split(child, ins.fixed_end - pos)
        child = child.parent
    return child


def add_new(ins: Insertion, tags: UserTags, join_gpu: Callable[[RadixNode], None]) -> None:
    """Attach the rest of ``tokens`` as new GPU nodes (cut at the fixed prompt's and the prompt's
    end), as far as the reservation goes; only below a GPU node (GPU residency is prefix-closed)."""
    tree = ins.tree
    while ins.pos < ins.limit and (ins.node is tree.root or ins.node.gpu):
        pos = ins.pos
        boundary = ins.fixed_end if pos < ins.fixed_end else (ins.prompt_end if pos < ins.prompt_end else ins.limit)
        end = min(boundary, ins.limit, pos + tree.page_floor(ins.reserved))
        if end <= pos:
            break  # the caller reserved less than the tokens it computed: cache what was paid for
        child = tree.insert_below(ins.node, ins.tokens[pos:end])
        ins.reserved -= len(child.tokens)
        _advance(ins, child, tags)
        join_gpu(child)


def _advance(ins: Insertion, child: RadixNode, tags: UserTags) -> None:
    """Tag ``child`` for the insert's user and move past it."""
    if tags.tag(child, ins.pos, ins.fixed_end, ins.prompt_end, ins.user):
        ins.dynamic_last = child
    ins.pos += len(child.tokens)
    ins.node = child
    if ins.pos == ins.fixed_end:
        ins.fixed_node = child
