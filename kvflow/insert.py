"""Putting a computed sequence into the tree: walk the part already cached, then add new nodes.

One ``Insertion`` carries the walk's state; the two phases and the step they share are small
functions, so the boundaries (the fixed prompt's end, the prompt's end) are handled in one place.
``KVCacheManager.insert`` drives it and owns what happens around it (reservations, tags).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from kvflow.radix import RadixNode, RadixTree, Token, User, page_key
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
        tokens: Sequence[Token],
        reserved_tokens: int,
        fixed_tokens: int,
        user: User | None,
        prompt_tokens: int | None,
    ) -> None:
        self.tree, self.tokens, self.user = tree, tokens, user
        page = tree.page_size  # (page_floor inlined: one Insertion per request)
        limit = self.limit = len(tokens) - len(tokens) % page
        fixed_end = min(fixed_tokens, limit)
        self.fixed_end = fixed_end - fixed_end % page if user else 0
        prompt_end = len(tokens) if prompt_tokens is None else prompt_tokens
        self.prompt_end = prompt_end - prompt_end % page
        self.reserved = reserved_tokens
        self.node: RadixNode = tree.root
        self.pos = 0
        self.fixed_node: RadixNode = tree.root
        self.dynamic_last: RadixNode | None = None


def walk_cached(
    ins: Insertion, tags: UserTags, known_tokens: int, count: Callable[[RadixNode], None] | None = None
) -> None:
    """Follow the nodes that already hold ``tokens``, split to the common part and at the fixed
    prompt's end (a prefix of ``known_tokens``, matched and locked since, is not compared again);
    a node off the GPU takes its share of the reservation (it was recomputed), ``count`` (if given)
    is called on each one already on the GPU. Stops at a node in flight or one nothing was reserved
    for. (One loop over locals: this runs per cached node.)"""
    tree, tokens, user, limit, fixed_end, prompt_end = (
        ins.tree,
        ins.tokens,
        ins.user,
        ins.limit,
        ins.fixed_end,
        ins.prompt_end,
    )
    page, node, pos = tree.page_size, ins.node, ins.pos
    while pos < limit:
        child = node.children.get(tokens[pos] if page == 1 else page_key(tokens, pos, page))
        if child is None:
            break
        if pos + len(child.tokens) > known_tokens:
            common = tree.common_len(child.tokens, tokens, pos)
            if common == 0:
                break
            if common < len(child.tokens):
                child = tree.split(child, common)
        if pos < fixed_end < pos + len(child.tokens):
            child = tree.split(child, fixed_end - pos)
        n_tokens = len(child.tokens)
        if not child.gpu:
            if child.inflight is not None:
                break  # a copy of this node is in flight: keep the tree consistent, stop here
            if ins.reserved < n_tokens:
                break  # nothing reserved for it: leave it to the CPU tier
            tree.join_gpu(child)  # recomputed on the GPU: the reservation becomes its GPU copy
            ins.reserved -= n_tokens
        elif count is not None:
            count(child)
        child.last_access = tree.tick()
        if tags.tag(child, pos, fixed_end, prompt_end, user):
            ins.dynamic_last = child
        pos += n_tokens
        node = child
        if pos == fixed_end:
            ins.fixed_node = child
    ins.node, ins.pos = node, pos


def add_new(ins: Insertion, tags: UserTags, join_gpu: Callable[[RadixNode], None]) -> None:
    """Attach the rest of ``tokens`` as new GPU nodes (cut at the fixed prompt's and the prompt's
    end), as far as the reservation goes; only below a GPU node (GPU residency is prefix-closed)."""
    tree, tokens, user, limit, fixed_end, prompt_end = (
        ins.tree,
        ins.tokens,
        ins.user,
        ins.limit,
        ins.fixed_end,
        ins.prompt_end,
    )
    root, page, node, pos, compact = tree.root, tree.page_size, ins.node, ins.pos, tree.compact_run
    while pos < limit and (node is root or node.gpu):
        boundary = fixed_end if pos < fixed_end else (prompt_end if pos < prompt_end else limit)
        end = min(boundary, limit, pos + ins.reserved - ins.reserved % page)
        if end <= pos:
            break  # the caller reserved less than the tokens it computed: cache what was paid for
        run = compact(tokens, pos, end) if compact is not None else None
        child = tree.insert_below(node, tokens[pos:end] if run is None else run)
        ins.reserved -= end - pos
        if tags.tag(child, pos, fixed_end, prompt_end, user):
            ins.dynamic_last = child
        pos = end
        node = child
        if pos == fixed_end:
            ins.fixed_node = child
        join_gpu(child)
    ins.node, ins.pos = node, pos
