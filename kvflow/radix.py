"""Token-level radix tree with a GPU and a CPU tier (SGLang RadixAttention + HiCache shape).

A node holds a run of tokens (a multiple of ``page_size``), its tier state, a lock count, its last
access tick and the (client, agent) users whose fixed prompt passes through it. GPU residency is
prefix-closed (a node on the GPU has its parent on the GPU), so a match is a GPU run followed by a
CPU-only run. Eviction candidates are kept in one heap per tier with lazy invalidation: an entry
is valid only if the node's version and key still match, so nothing ever scans the whole tree.
"""

from __future__ import annotations

import heapq
import itertools
from array import array
from collections.abc import Callable, Hashable, Iterator, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from enum import Enum
from typing import Protocol, cast

from mypy_extensions import mypyc_attr

from kvflow.tier_heap import KEY_END, CpuHeap, GpuHeap

User = tuple[str, str]  # (client_id, agent_id)
# one unit of a prompt as the tree keys it: a token id (int) from the engines, or a block hash
# (str / bytes / int) in the cache-only replay (sim.replay); compared and hashed, never computed on
Token = Hashable
_COMPARE_CHUNK = 64


@mypyc_attr(allow_interpreted_subclasses=True)
class TokenRun:
    """A compact stand-in for a run of 32-bit token ids that a node may hold instead of an
    ``array("i")`` (``RadixTree.compact_run``; the simulator's ``traces.table_run.TableRun``). It must
    read as the array of its ids does (``len``, indexing, slicing, iteration, ``==``), and give the
    ids' bytes, which a paged tree keys children by."""

    __slots__ = ()

    def ids(self) -> array:
        """The ids as a new ``array("i")``."""
        raise NotImplementedError

    def tobytes(self) -> bytes:
        raise NotImplementedError


def page_key(tokens: Sequence[Token], start: int, page: int) -> Hashable:
    """A child's key in its parent's ``children`` on a paged tree: the page ``tokens[start:start +
    page]`` as the bytes of its 32-bit ids when every id fits (one object: a tuple of a 512-token page
    made 512 int objects per lookup and kept ~20 KB per node), else a tuple (the simulator's output
    ids, the replay's block hashes). The same ids give the same key in any container (array, list,
    range), so a list prompt finds what an array prompt inserted."""
    chunk = tokens[start : start + page]
    if isinstance(chunk, array) and chunk.typecode == "i":
        return chunk.tobytes()
    if isinstance(chunk, TokenRun):  # (the same bytes as its ids' array)
        return chunk.tobytes()
    if not isinstance(chunk, (bytes, bytearray, str)):  # (an array would read those as raw bytes)
        try:
            return array("i", cast("Sequence[int]", chunk)).tobytes()
        except (TypeError, OverflowError):
            pass
    return tuple(chunk)


def common_prefix_len(a: Sequence[Token], b: Sequence[Token], start: int = 0, end: int | None = None) -> int:
    """Length of the common prefix of ``a`` and ``b[start:end]``: whole-slice then chunked slice
    comparisons (C speed), a Python loop only inside the first differing chunk."""
    n = min(len(a), (len(b) if end is None else end) - start)
    if (a if n == len(a) else a[:n]) == b[start : start + n]:  # a node's whole run: no copy of it
        return n
    if isinstance(a, TokenRun):  # a compact run that differs somewhere: search its ids' array
        a = a.ids()
    if type(a) is not type(b):  # an array node against a list (a released request's prompt + output ids):
        a, b, start = list(a[:n]), list(b[start : start + n]), 0  # unequal types never compare equal
    i = 0
    while i + _COMPARE_CHUNK <= n and a[i : i + _COMPARE_CHUNK] == b[start + i : start + i + _COMPARE_CHUNK]:
        i += _COMPARE_CHUNK
    while i < n and a[i] == b[start + i]:
        i += 1
    return i


class Tier(str, Enum):
    GPU = "gpu"
    CPU = "cpu"
    GPU_CPU = "gpu+cpu"
    LOADING = "loading"
    OFFLOADING = "offloading"


class InFlight(str, Enum):
    """A copy of a node's KV is running; compare with ``is`` (a str value for readers of old code)."""

    LOAD = "load"  # CPU -> GPU
    OFFLOAD = "offload"  # GPU -> CPU


# the members as module constants: an Enum member's class-attribute lookup costs ~10x a global's
_LOAD, _OFFLOAD = InFlight.LOAD, InFlight.OFFLOAD


class KeyPolicy(Protocol):
    def key(self, node: RadixNode) -> tuple: ...


_node_ids = itertools.count()

# the users of a node that no prompt tags: one shared empty set, replaced by the node's own set on
# its first user (``RadixNode.add_user``): two empty sets per node were ~430 B of every cached node,
# most of them (suffixes, outputs) never tagged (benchmarks/scale.py)
NO_USERS: frozenset[User] = frozenset()


class RadixNode:
    """One edge of the tree: ``tokens`` plus state. Attributes are public for policies (read-only)."""

    __slots__ = (
        "node_id",
        "tokens",
        "parent",
        "children",
        "gpu",
        "cpu",
        "inflight",
        "lock_ref",
        "last_access",
        "users",
        "suffix",
        "next_use",
        "gpu_children",
        "cpu_children",
        "gpu_version",
        "cpu_version",
        "hits",
        "prefetched",
        "dynamic_users",
        "gpu_filed",
        "cpu_filed",
        "key",
    )

    def __init__(self, tokens: Sequence[Token], parent: RadixNode | None) -> None:
        self.node_id = next(_node_ids)
        self.tokens = tokens
        self.parent = parent
        self.children: dict[Hashable, RadixNode] = {}
        self.gpu = False  # valid KV on the GPU
        self.cpu = False  # valid KV in CPU memory
        self.inflight: InFlight | None = None  # while a copy runs
        self.lock_ref = 0
        self.last_access = 0
        self.users: AbstractSet[User] = NO_USERS  # (read-only: ``add_user``)
        self.suffix = False  # beyond a tagged request's fixed prompt: dynamic part or output
        self.next_use: float | None = None  # oracle annotation (trace order); None = unknown
        self.gpu_children = 0  # children on (or loading onto) the GPU
        self.cpu_children = 0  # children with a CPU copy (or one being written)
        self.gpu_version = 0
        self.cpu_version = 0
        self.hits = 0
        self.prefetched = False  # loaded by a prefetch and not yet used
        # (client, agent) whose latest *dynamic* prompt passes here (``add_dynamic_user``)
        self.dynamic_users: AbstractSet[User] = NO_USERS
        # key of this node's live heap entry at its current version (None: no live entry); lets a
        # refresh that would file the same key again (e.g. after a transient lock) skip the push
        self.gpu_filed: tuple | None = None
        self.cpu_filed: tuple | None = None
        # this node's key in its parent's ``children`` (set when attached): leaving the tree makes no
        # new page key (``page_key``: a Mooncake page is 512 ids)
        self.key: Hashable = None

    def __len__(self) -> int:
        return len(self.tokens)

    def add_user(self, user: User) -> None:
        """Tag ``user``'s fixed prompt as passing here (the first user gives the node its own set)."""
        if self.users is NO_USERS:
            self.users = {user}
        else:
            cast("set[User]", self.users).add(user)

    def add_dynamic_user(self, user: User) -> None:
        if self.dynamic_users is NO_USERS:
            self.dynamic_users = {user}
        else:
            cast("set[User]", self.dynamic_users).add(user)

    def discard_dynamic_user(self, user: User) -> None:
        if user in self.dynamic_users:
            cast("set[User]", self.dynamic_users).discard(user)

    def __lt__(self, other: RadixNode) -> bool:  # deterministic heap tie-break
        return self.node_id < other.node_id

    def __hash__(self) -> int:  # identity, spelled out: a compiled class with ``__lt__`` has no default
        return self.node_id

    def __repr__(self) -> str:
        return f"RadixNode(id={self.node_id}, len={len(self.tokens)}, tier={self.tier})"

    @property
    def tier(self) -> Tier | None:
        if self.inflight is _LOAD:
            return Tier.LOADING
        if self.inflight is _OFFLOAD:
            return Tier.OFFLOADING
        if self.gpu and self.cpu:
            return Tier.GPU_CPU
        if self.gpu:
            return Tier.GPU
        if self.cpu:
            return Tier.CPU
        return None

    @property
    def on_gpu_or_loading(self) -> bool:
        return self.gpu or self.inflight is _LOAD

    @property
    def on_cpu_or_offloading(self) -> bool:
        return self.cpu or self.inflight is _OFFLOAD

    def path_to_root(self) -> Iterator[RadixNode]:
        node: RadixNode | None = self
        while node is not None and node.parent is not None:
            yield node
            node = node.parent


@dataclass
class MatchResult:
    """Longest cached prefix: ``gpu_tokens`` valid on the GPU, then ``cpu_nodes`` (CPU-only or loading)."""

    gpu_tokens: int
    gpu_node: RadixNode  # deepest node on the GPU (root when none)
    cpu_nodes: list[RadixNode]
    cpu_tokens: int

    @property
    def total_tokens(self) -> int:
        return self.gpu_tokens + self.cpu_tokens

    @property
    def last_node(self) -> RadixNode:
        return self.cpu_nodes[-1] if self.cpu_nodes else self.gpu_node


class RadixTree:
    """Prefix tree over token ids; the cache manager owns capacity, the tree owns structure and heaps."""

    def __init__(self, policy: KeyPolicy, page_size: int = 1) -> None:
        if page_size < 1:
            raise ValueError(f"page_size must be >= 1, got {page_size}")
        self.page_size = page_size
        self.policy = policy
        self.root = RadixNode([], None)
        self.root.gpu = self.root.cpu = True
        self.root.lock_ref = 1
        self._tick = 0
        self._key_of = policy.key  # (bound once: refresh is the hottest caller)
        self.gpu_heap = GpuHeap(policy.key)
        # The CPU heap is built on the first CPU eviction (one walk) and kept from then on: many
        # runs never fill the CPU tier, and filing every backup and demotion was wasted work.
        self._cpu_heap: CpuHeap | None = None
        self.user_nodes: dict[User, RadixNode] = {}
        # Optional observer of splits, called as on_split(head, tail) after ``split``: a backend that
        # keeps data per node (real/: KV tensors) follows the tree with it. The core never sets it.
        self.on_split: Callable[[RadixNode, RadixNode], None] | None = None
        # Optional observer of a node leaving the tree, called as on_detach(node, parent): an index
        # that points at nodes (UserTags: where each user's prompts end) re-points at the parent.
        self.on_detach: Callable[[RadixNode, RadixNode], None] | None = None
        # Optional compact stand-in for a new node's tokens: ``compact_run(tokens, start, end)``
        # returns a sequence equal to ``tokens[start:end]`` that costs less to keep than a copy, or
        # None (then the node keeps the slice). The simulator sets it (``traces.table_run.table_run``:
        # its synthetic prompts are windows of one table); the core never does.
        self.compact_run: Callable[[Sequence[Token], int, int], Sequence[Token] | None] | None = None

    # ----- keys, clock and structure ------------------------------------------------------------
    def child_key(self, tokens: Sequence[Token], start: int = 0) -> Hashable:
        """Key of the child that ``tokens[start:]`` continues into: its first token (or page)."""
        if self.page_size == 1:
            return tokens[start]
        return page_key(tokens, start, self.page_size)

    def page_floor(self, n_tokens: int) -> int:
        return n_tokens - n_tokens % self.page_size

    def tick(self) -> int:
        """Advance the access clock (one tick per node access) and return the new time."""
        self._tick += 1
        return self._tick

    @property
    def current_tick(self) -> int:
        """The access clock's present time (the last access stamped)."""
        return self._tick

    def touch_path(self, last: RadixNode) -> list[RadixNode]:
        """Stamp an access of root..``last`` (root first; a newer access only raises a key, so
        nothing is re-filed) and count a hit on each; returns the path, ``last`` first."""
        path = []
        node = last
        while node.parent is not None:  # (loops, not path_to_root: a hot path)
            path.append(node)
            node = node.parent
        tick = self._tick = self._tick + len(path)
        for node in path:  # last first, so it gets the newest tick
            node.last_access = tick
            node.hits += 1
            tick -= 1
        return path

    def stamp_path(self, last: RadixNode) -> None:
        """Stamp an access of root..``last`` without counting hits (a sequence used until now)."""
        depth, node = 0, last
        while node.parent is not None:
            depth += 1
            node = node.parent
        tick = self._tick = self._tick + depth
        node = last
        while node.parent is not None:  # last first, so it gets the newest tick
            node.last_access = tick
            tick -= 1
            node = node.parent

    def common_len(self, node_tokens: Sequence[Token], tokens: Sequence[Token], start: int) -> int:
        """Length of the common prefix of node_tokens and tokens[start:], page aligned."""
        return self.page_floor(common_prefix_len(node_tokens, tokens, start))

    def split(self, node: RadixNode, at: int) -> RadixNode:
        """Split ``node`` so that its first ``at`` tokens become a new parent; returns the parent."""
        assert 0 < at < len(node.tokens) and at % self.page_size == 0
        parent = node.parent
        assert parent is not None
        head = RadixNode(node.tokens[:at], parent)
        head.gpu, head.cpu, head.inflight = node.gpu, node.cpu, node.inflight
        head.lock_ref, head.last_access, head.hits = node.lock_ref, node.last_access, node.hits
        head.users = set(node.users) if node.users else NO_USERS
        head.dynamic_users = set(node.dynamic_users) if node.dynamic_users else NO_USERS
        head.suffix, head.next_use = node.suffix, node.next_use
        head.key = node.key  # the same first page: head takes node's place
        parent.children[head.key] = head
        node.tokens = node.tokens[at:]
        node.parent = head
        node.key = self.child_key(node.tokens)
        head.children[node.key] = node
        head.gpu_children = 1 if node.on_gpu_or_loading else 0
        head.cpu_children = 1 if node.on_cpu_or_offloading else 0
        if self.on_split is not None:
            self.on_split(head, node)
        self.refresh(head)  # a new node: it may be CPU-evictable (its tail has no CPU copy)
        return head

    # ----- lookups ----------------------------------------------------------------------------
    def match(self, tokens: Sequence[Token], touch: bool = True, max_tokens: int | None = None) -> MatchResult:
        """Longest cached prefix of ``tokens`` (page aligned), of at most ``max_tokens`` if given (no
        copy of ``tokens`` needed). Splits a node where the match ends inside it (as SGLang does),
        so the matched part can be locked and timestamped alone."""
        node, pos = self.root, 0
        gpu_node, gpu_tokens = self.root, 0
        cpu_nodes: list[RadixNode] = []
        cpu_tokens = 0
        limit = self.page_floor(len(tokens) if max_tokens is None else min(max_tokens, len(tokens)))
        page = self.page_size
        while pos < limit:  # child_key inlined: one call less per level on the admission path
            child = node.children.get(tokens[pos] if page == 1 else page_key(tokens, pos, page))
            if child is None:
                break
            common = common_prefix_len(child.tokens, tokens, pos, limit)
            if page > 1:
                common -= common % page
            if common == 0:
                break
            if common < len(child.tokens):
                child = self.split(child, common)
            if touch:  # a newer access only raises the key: no re-filing needed (see refresh)
                self._tick += 1
                child.last_access = self._tick
                child.hits += 1
            if child.gpu and not cpu_nodes:
                gpu_node, gpu_tokens = child, gpu_tokens + len(child.tokens)
            else:
                cpu_nodes.append(child)
                cpu_tokens += len(child.tokens)
            pos += common
            node = child
            if common < len(child.tokens):
                break
        return MatchResult(gpu_tokens, gpu_node, cpu_nodes, cpu_tokens)

    @staticmethod
    def depth_tokens(node: RadixNode) -> int:
        """Tokens on the path from the root to ``node`` (included)."""
        n = 0
        while node.parent is not None:
            n += len(node.tokens)
            node = node.parent
        return n

    def insert_below(self, node: RadixNode, tokens: Sequence[Token]) -> RadixNode:
        """Attach a new leaf holding ``tokens`` (page multiple) under ``node``; state set by caller."""
        child = RadixNode(tokens, node)
        self._tick += 1
        child.last_access = self._tick
        child.key = self.child_key(tokens)
        node.children[child.key] = child
        return child

    def walk(self) -> Iterator[RadixNode]:
        """All nodes except the root (tests and debugging only: O(tree))."""
        stack = list(self.root.children.values())
        while stack:
            node = stack.pop()
            yield node
            stack.extend(node.children.values())

    # ----- tier changes: paired verbs, one state change each ----------------------------------
    # Each verb sets the node's state and says how it moved in its parent's counts: ``dg`` for "on
    # (or loading onto) the GPU", ``dc`` for "has (or is writing) a CPU copy", each -1, 0 or +1,
    # derived from the state before, so every verb is valid in any state. Only a move calls
    # ``_recount``; a node that may have become evictable (no copy in flight) is re-filed.
    def join_gpu(self, node: RadixNode, backup: bool = False) -> None:
        """KV of ``node`` was computed on the GPU; with ``backup`` its CPU copy starts at once."""
        state = node.inflight
        dg = 0 if node.gpu or state is _LOAD else 1
        dc = 1 if backup and not (node.cpu or state is _OFFLOAD) else 0
        node.gpu = True
        if backup:
            node.inflight = _OFFLOAD
        if dg or dc:
            self._recount(node, dg, dc)
        if node.inflight is None and not node.lock_ref:
            self.refresh(node)

    def leave_gpu(self, node: RadixNode) -> None:
        """The GPU copy of ``node`` is dropped (a CPU copy, if any, stays)."""
        moved = node.gpu and node.inflight is not _LOAD
        node.gpu = False
        if moved:
            self._recount(node, -1, 0)
        # off the GPU it can only be a CPU victim: no call while there is no CPU heap
        if self._cpu_heap is not None and node.inflight is None and not node.lock_ref and node.parent is not None:
            self.refresh(node)

    def leave_cpu(self, node: RadixNode) -> None:
        """The CPU copy of ``node`` is dropped."""
        moved = node.cpu and node.inflight is not _OFFLOAD
        node.cpu = False
        if moved:
            self._recount(node, 0, -1)
        if node.inflight is None and not node.lock_ref and node.parent is not None:
            self.refresh(node)

    def begin_offload(self, node: RadixNode, demote: bool = False) -> None:
        """A GPU -> CPU copy of ``node`` starts; ``demote``: its GPU copy is given up (write-back)."""
        state = node.inflight
        gpu = node.gpu and not demote
        dg = gpu - (node.gpu or state is _LOAD)
        dc = 0 if node.cpu or state is _OFFLOAD else 1
        node.gpu, node.inflight = gpu, _OFFLOAD
        if dg or dc:
            self._recount(node, dg, dc)

    def end_offload(self, node: RadixNode) -> None:
        state = node.inflight
        dg = -1 if state is _LOAD and not node.gpu else 0
        dc = 0 if node.cpu or state is _OFFLOAD else 1
        node.cpu, node.inflight = True, None
        if dg or dc:
            self._recount(node, dg, dc)
        if not node.lock_ref:
            self.refresh(node)

    def begin_load(self, node: RadixNode) -> None:
        """A CPU -> GPU copy of ``node`` starts (its GPU memory was reserved)."""
        state = node.inflight
        dg = 0 if node.gpu or state is _LOAD else 1
        dc = -1 if state is _OFFLOAD and not node.cpu else 0
        node.inflight = _LOAD
        if dg or dc:
            self._recount(node, dg, dc)

    def end_load(self, node: RadixNode) -> None:
        state = node.inflight
        dg = 0 if node.gpu or state is _LOAD else 1
        dc = -1 if state is _OFFLOAD and not node.cpu else 0
        node.gpu, node.inflight = True, None
        if dg or dc:
            self._recount(node, dg, dc)
        if not node.lock_ref:
            self.refresh(node)

    def _recount(self, node: RadixNode, dg: int, dc: int) -> None:
        """Move the parent's child counts by ``dg``/``dc``; a node left with no copy leaves the tree
        (only a leaf can). The parent is re-filed only when its evictability can change: a count
        crosses zero, or it loses a child."""
        parent = node.parent
        if parent is None:
            return
        changed = False
        if dg:
            parent.gpu_children += dg
            changed = parent.gpu_children == (1 if dg > 0 else 0)
        if dc:
            parent.cpu_children += dc
            changed = changed or parent.cpu_children == (1 if dc > 0 else 0)
        if not (node.gpu or node.cpu or node.inflight is not None):
            assert not node.children, "a node leaves the tree only when it has no children"
            del parent.children[node.key]
            node.parent = None
            changed = True
            if self.on_detach is not None:
                self.on_detach(node, parent)
        if changed and parent.parent is not None and not parent.lock_ref:
            self.refresh(parent)  # (a locked or in-flight node is never filed: no call)

    def lock(self, node: RadixNode) -> None:
        while node.parent is not None:  # the path to the root (a loop: hot, no generator)
            node.lock_ref += 1
            node = node.parent

    def relock(self, old: RadixNode, new: RadixNode) -> None:
        """``lock(new)`` then ``unlock(old)``, touching only the nodes between them when ``new``
        lies below ``old`` (a request's path grew: the shared part keeps its count)."""
        node = new
        while node is not old and node.parent is not None:
            node.lock_ref += 1
            node = node.parent
        if node is not old:  # not below old: new's whole path is locked now, release old's
            self.unlock(old)

    def unlock(self, node: RadixNode) -> None:
        while node.parent is not None:
            assert node.lock_ref > 0, "unlock without lock"
            node.lock_ref -= 1
            if node.lock_ref == 0 and (node.gpu and not node.gpu_children or self._cpu_heap is not None):
                self.refresh(node)  # (only a possible victim: most of a path has GPU children)
            node = node.parent

    # ----- eviction heaps -------------------------------------------------------------------
    def refresh(self, node: RadixNode) -> None:
        """Re-file ``node`` in the heaps after anything that may *lower* its key or make it
        evictable. A key that only rises (a touch: newer last access) needs no call: its old entry
        surfaces too early and ``TierHeap.top`` re-files it, so the victim order is the same."""
        if node.lock_ref or node.inflight is not None or node.parent is None:
            return
        gpu = node.gpu and not node.gpu_children
        cpu_heap = self._cpu_heap
        cpu = cpu_heap is not None and node.cpu and not node.cpu_children and (node.gpu or not node.children)
        if not (gpu or cpu):
            return
        key = self._key_of(node)
        if gpu and node.gpu_filed != key:  # GpuHeap.push inlined (the hottest re-filing path)
            node.gpu_version += 1
            node.gpu_filed = key
            heapq.heappush(self.gpu_heap.entries, (*key, KEY_END, node.node_id, node.gpu_version, node))
        if cpu and node.cpu_filed != key:
            cpu_heap.push(node, key)  # type: ignore[union-attr]

    @property
    def cpu_heap(self) -> CpuHeap:
        """The CPU tier's heap, built with one walk on first use (the first CPU eviction)."""
        if self._cpu_heap is None:
            self._cpu_heap = CpuHeap(self.policy.key)
            for node in self.walk():
                self.refresh(node)
        return self._cpu_heap
