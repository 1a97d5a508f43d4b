"""Putting a prefix that arrived from outside the engine (a shared remote KV tier) into the CPU tier.

A fleet's remote tier hands a replica KV it never computed; the replica keeps it as a CPU-only run
(``cpu=True, gpu=False``) so that its own path (match, then a CPU->GPU load) serves it like any
backed-up prefix. The run obeys the CPU tier's rules: it hangs below the root or a node with a CPU
copy (prefix closure; a GPU-only node on the path blocks it), and its space comes from
``CpuTier.alloc`` (evicting CPU victims, the path itself locked), so capacity is never exceeded;
what does not fit is not placed.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from kvflow.radix import RadixNode, RadixTree, Token, common_prefix_len

if TYPE_CHECKING:
    from kvflow.cache import KVCacheManager

__all__ = ["add_cpu_prefix", "cpu_fill_start"]


def _walk(tree: RadixTree, tokens: Sequence[Token], end: int, split: bool) -> tuple[RadixNode, int] | None:
    """The deepest node on ``tokens[:end]``'s path whose path has CPU copies all the way, and the
    tokens it ends (a match ending inside a node splits it when ``split``); None when the next node
    on the path exists without a CPU copy (a CPU-only run below it would break prefix closure)."""
    node, pos, page = tree.root, 0, tree.page_size
    while pos < end:
        child = node.children.get(tree.child_key(tokens, pos))
        if child is None:
            break
        if not child.on_cpu_or_offloading:
            return None
        common = common_prefix_len(child.tokens, tokens, pos, end)
        common -= common % page
        if common == 0:
            return None
        if common < len(child.tokens):
            if pos + common < end and split:  # the run forks inside this node: split it to hang below
                child = tree.split(child, common)
            return child, pos + common
        pos += common
        node = child
    return node, pos


def cpu_fill_start(cache: KVCacheManager, tokens: Sequence[Token], end_tokens: int) -> int | None:
    """Read-only: where a CPU-only run of ``tokens[:end_tokens]`` would start now (the tokens the
    tree already holds with CPU copies along that path), or None when it cannot hang there."""
    tree = cache.tree
    found = _walk(tree, tokens, tree.page_floor(min(end_tokens, len(tokens))), split=False)
    return None if found is None else found[1]


def add_cpu_prefix(cache: KVCacheManager, tokens: Sequence[Token], start_tokens: int, end_tokens: int) -> int:
    """Give the cache CPU copies of ``tokens[start_tokens:end_tokens]`` (KV that arrived from
    outside, e.g. a remote tier), the part of it the tree lacks, as one CPU-only node. The tree must
    hold ``tokens[:start_tokens]`` with CPU copies (else nothing is placed: the run would not be
    reachable). Space is reserved under the CPU tier's rules; when less is free, the first tokens
    that fit (page aligned) are placed. Returns the tokens placed."""
    tree = cache.tree
    end = tree.page_floor(min(end_tokens, len(tokens)))
    found = _walk(tree, tokens, end, split=True)
    if found is None or found[1] < start_tokens or found[1] >= end:
        return 0
    anchor, pos = found
    want = end - pos
    tree.lock(anchor)  # the anchor's CPU copy must survive the eviction that makes room
    if not cache.cpu.alloc(want):
        want = tree.page_floor(max(0, cache.cpu.free_tokens))  # alloc evicted all it could: take what is free
        if want and not cache.cpu.alloc(want):
            want = 0
    tree.unlock(anchor)
    if want == 0:
        return 0
    child = tree.insert_below(anchor, tokens[pos : pos + want])
    tree.end_offload(child)  # a CPU copy and nothing in flight: the node joins the CPU tier
    return want
