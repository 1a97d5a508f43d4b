"""Two-tier KV cache manager: the facade backends call; emits ops.

The manager decides, the backend moves bytes. Every transfer is an op (``Load``/``Offload``) that
stays in flight until the backend calls ``complete(op)``; a node in flight is never evicted.
The concepts live in their own modules and the manager wires them together: capacity and eviction
per tier (``kvflow.tiers``), backups (``kvflow.write_policy``), user tags and re-filing a user's
nodes (``kvflow.tagging``), the insert walk (``kvflow.insert``); prefetch decisions are the
engine's prefetcher's (``kvflow.prefetch``), ranking the policy's (``kvflow.policies.base.Policy``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from kvflow.insert import Insertion, add_new, walk_cached
from kvflow.ops import Load, Offload, Op
from kvflow.policies.base import Policy
from kvflow.radix import InFlight, MatchResult, RadixNode, RadixTree, Token, User
from kvflow.session_gaps import SessionActivity
from kvflow.tagging import UserTags
from kvflow.tiers import CpuTier, GpuTier
from kvflow.write_policy import WritePolicy

_LOAD = InFlight.LOAD  # (a global: an Enum member's lookup is slow on the hot path)
WRITE_POLICIES = ("write_through", "write_back", "none")


@dataclass
class CacheConfig:
    gpu_capacity_tokens: int
    cpu_capacity_tokens: int = 0
    page_size: int = 1
    kv_bytes_per_token: int = 1
    write_policy: str = "write_through"  # HiCache default: back up on insert
    write_through_hits: int = 1  # hits before a node is backed up (a new node's insert counts as one ...
    insert_is_hit: bool = True  # ... unless this is False: SGLang 0.4 counts only inc_hit_count's events)
    backup_dynamic: bool = True  # back up dynamic suffixes and outputs too (False: KVFlow, KVFLOW.md 2.4)
    evict_partial: bool = True  # trim a leaf's tail pages instead of dropping the whole leaf
    max_prefetch: int = 4  # concurrent prefetch loads (KVFLOW.md 2.5)
    free_ops: bool = True  # emit Free ops (a backend holding memory per node needs them; the
    #                        simulator counts tokens only and turns them off)

    def __post_init__(self) -> None:
        if self.write_policy not in WRITE_POLICIES:
            raise ValueError(f"write_policy '{self.write_policy}'; valid: {', '.join(WRITE_POLICIES)}")
        if self.gpu_capacity_tokens <= 0:
            raise ValueError(f"gpu_capacity_tokens must be > 0, got {self.gpu_capacity_tokens}")
        if self.cpu_capacity_tokens < 0:
            raise ValueError(f"cpu_capacity_tokens must be >= 0, got {self.cpu_capacity_tokens}")


@dataclass
class CacheStats:
    h2d_bytes: int = 0
    d2h_bytes: int = 0
    gpu_evicted_tokens: int = 0
    cpu_evicted_tokens: int = 0
    prefetch_issued: int = 0
    prefetch_used: int = 0
    prefetch_wasted: int = 0
    prefetch_late: int = 0
    # session prefetches before resume (kvflow.prefetch.resume), counted when the session resumes
    resume_early: int = 0  # every load had finished, the KV still on the GPU
    resume_late: int = 0  # a load was still running
    resume_wasted: int = 0  # evicted again before the call, or the session never called


class KVCacheManager:
    """GPU/CPU tiers over one radix tree, ranked by ``policy``; ``take_ops`` hands out the copies."""

    def __init__(self, config: CacheConfig, policy: Policy) -> None:
        self.config = config
        self.policy = policy
        self.tree = RadixTree(policy, config.page_size)
        self.stats = CacheStats()
        self._pending: list[Op] = []  # shared with the tiers and the write policy, which queue ops
        self.cpu = CpuTier(config, self.tree, self.stats, self._pending)
        self.writes = WritePolicy(config, self.tree, self.stats, policy, self.cpu, self._pending)
        self.gpu = GpuTier(config, self.tree, self.stats, policy, self.writes.demote)
        self.tags = UserTags(self.tree, policy)
        # sessions pausing and resuming, only for a policy that ranks by them (None: no cost)
        self.sessions = SessionActivity() if policy.observes_sessions else None

    # ----- capacity -------------------------------------------------------------------------
    @property
    def gpu_used_tokens(self) -> int:
        return self.gpu.used_tokens

    @property
    def cpu_used_tokens(self) -> int:
        return self.cpu.used_tokens

    @property
    def gpu_free_tokens(self) -> int:
        return self.gpu.free_tokens

    @property
    def cpu_free_tokens(self) -> int:
        return self.cpu.free_tokens

    def bytes_of(self, tokens: int) -> int:
        return tokens * self.config.kv_bytes_per_token

    def alloc_gpu(self, n_tokens: int, limit_key: tuple | None = None, partial: bool = False) -> int:
        """Reserve GPU tokens, evicting as needed (``GpuTier.alloc``)."""
        return self.gpu.alloc(n_tokens, limit_key, partial)

    def release_gpu(self, n_tokens: int) -> None:
        self.gpu.release(n_tokens)

    def evict_gpu(self, n_tokens: int, limit_key: tuple | None = None) -> int:
        return self.gpu.evict(n_tokens, limit_key)

    def evict_cpu(self, n_tokens: int) -> int:
        return self.cpu.evict(n_tokens)

    # ----- ops ------------------------------------------------------------------------------
    def take_ops(self) -> list[Op]:
        """Ops queued since the last call, for the backend to start now."""
        pending = self._pending
        if not pending:
            return []
        ops = pending[:]
        pending.clear()
        return ops

    @property
    def pending_ops(self) -> list[Op]:
        """The queue itself, read-only for callers: ``bool(cache.pending_ops)`` is the cheap "any
        ops queued?" test (the engine's ``has_ops``, the simulator's loop)."""
        return self._pending

    def queue_ops(self, ops: Iterable[Op]) -> None:
        """Queue ops started outside a backend's wait (a prefetcher's loads) for ``take_ops``."""
        self._pending.extend(ops)

    # ----- lookups and inserts ------------------------------------------------------------------
    def match(self, tokens: Sequence[Token], touch: bool = True, max_tokens: int | None = None) -> MatchResult:
        result = self.tree.match(tokens, touch=False, max_tokens=max_tokens)
        if touch:
            self.touch_path(result.last_node)
        return result

    def touch_path(self, last: RadixNode) -> None:
        """A request uses the path root..``last``: access times (root first) and hit counts,
        prefetch accounting, and write-through backups of nodes used often enough."""
        stats, maybe_backup = self.stats, self.writes.maybe_backup
        for node in self.tree.touch_path(last):
            if node.prefetched and node.gpu:
                node.prefetched = False
                stats.prefetch_used += 1
            elif node.prefetched and node.inflight is _LOAD:
                stats.prefetch_late += 1
            if node.gpu and not node.cpu and node.inflight is None:  # else no backup can start (most
                maybe_backup(node)  # of a used path has its copy already): one call less per node

    def count_hits(self, last: RadixNode) -> None:
        """A hit on each node of root..``last`` that is not a use by a request (SGLang 0.4 counts every
        match and insert walk: ``EngineConfig.count_match_hits`` / ``count_insert_hits``), and the
        backups it makes due; access times as a touch."""
        maybe_backup = self.writes.maybe_backup
        for node in self.tree.touch_path(last):
            if node.gpu and not node.cpu and node.inflight is None:
                maybe_backup(node)

    def count_hit(self, node: RadixNode) -> None:
        """One hit on ``node`` (an insert walk passing it on the GPU), and its backup if now due."""
        node.hits += 1
        if node.gpu and not node.cpu and node.inflight is None:
            self.writes.maybe_backup(node)

    def observe_prompt(self, user: User | None, tokens: Sequence[Token], fixed_tokens: int) -> None:
        """Tell a learning policy how much of ``user``'s previous dynamic prompt its new prompt
        repeats (``UserTags.observe_prompt``)."""
        self.tags.observe_prompt(user, tokens, fixed_tokens)

    def lock(self, node: RadixNode) -> None:
        self.tree.lock(node)

    def unlock(self, node: RadixNode) -> None:
        self.tree.unlock(node)

    def insert(
        self,
        tokens: Sequence[Token],
        reserved_tokens: int,
        fixed_tokens: int = 0,
        user: User | None = None,
        prompt_tokens: int | None = None,
        known_tokens: int = 0,
        count_hits: bool = False,
    ) -> RadixNode:
        """Put ``tokens`` (computed on the GPU) into the tree. ``reserved_tokens`` were allocated by
        the caller with ``alloc_gpu`` for the part not already on the GPU; duplicates are released.
        Nodes up to ``fixed_tokens`` are tagged with ``user``; nodes past it are suffixes, and those
        before ``prompt_tokens`` (default: all) also record ``user`` as a dynamic-prompt user.
        ``known_tokens``: a prefix the caller matched and kept locked since, so its nodes are known
        to hold these tokens (splits keep them) and are not compared again. ``count_hits``: each node
        walked that is on the GPU counts a hit (SGLang 0.4's ``_insert_helper``). ``tokens`` may stop
        inside the fixed prompt (a prefill chunk): the fixed prompt's end is then not recorded."""
        ins = Insertion(self.tree, tokens, reserved_tokens, fixed_tokens, user, prompt_tokens)
        walk_cached(ins, self.tags, known_tokens, self.count_hit if count_hits else None)
        add_new(ins, self.tags, self.writes.join_gpu)
        if user is not None and 0 < ins.fixed_end <= ins.pos and fixed_tokens <= len(tokens):
            self.tags.set_fixed_end(user, ins.fixed_node)
        if user is not None and ins.dynamic_last is not None and self.policy.tracks_dynamic:
            self.tags.set_latest_dynamic(user, ins.dynamic_last)
        if ins.reserved:
            self.release_gpu(ins.reserved)  # tokens another request inserted meanwhile (or partial page)
        return ins.node

    def extend(
        self, node: RadixNode, tokens: Sequence[Token], reserved_tokens: int, user: User | None = None
    ) -> RadixNode:
        """Append fresh ``tokens`` that no other sequence shares (generated outputs) below ``node``,
        the GPU-resident end of a sequence already in the tree: no walk from the root.
        ``reserved_tokens`` were allocated for them; what is not cached is released."""
        tree = self.tree
        tree.stamp_path(node)  # the sequence was used until now (as SGLang's cache_finished_req
        #                        re-inserts it); a newer access needs no re-filing
        n = tree.page_floor(min(len(tokens), reserved_tokens))
        if n and node.gpu and tree.child_key(tokens) not in node.children:
            child = tree.insert_below(node, tokens[:n])
            child.suffix = user is not None  # an output: KVFlow evicts it first
            self.writes.join_gpu(child)
            reserved_tokens -= n
            node = child
        if reserved_tokens:
            self.release_gpu(reserved_tokens)
        return node

    # ----- loads ------------------------------------------------------------------------------
    def load(self, nodes: list[RadixNode], prefetch: bool = False, limit_key: tuple | None = None) -> list[Load]:
        """Start CPU->GPU loads of CPU-only ``nodes`` (a root-to-leaf run). All or nothing."""
        todo = [n for n in nodes if n.cpu and not n.gpu and n.inflight is None]
        if not todo or not self._anchored(todo):
            return []
        anchor = todo[0].parent
        assert anchor is not None
        tree = self.tree
        n_tokens = 0
        for node in todo:
            n_tokens += len(node.tokens)
        tree.lock(anchor)  # the GPU ancestors must survive the eviction that makes room
        granted = self.gpu.alloc(n_tokens, limit_key)
        tree.unlock(anchor)
        if granted == 0:
            return []
        ops: list[Load] = []
        begin_load, bytes_per_token = tree.begin_load, self.config.kv_bytes_per_token
        for node in todo:
            begin_load(node)
            node.prefetched = prefetch
            n = len(node.tokens)
            ops.append(Load(node, n, n * bytes_per_token, prefetch=prefetch))
        self.stats.h2d_bytes += n_tokens * bytes_per_token
        if prefetch:
            self.stats.prefetch_issued += len(ops)
        return ops

    def _anchored(self, todo: list[RadixNode]) -> bool:
        """Each node hangs below the GPU part of its path, or below the node loaded before it: a
        run computed earlier (a prefetcher's candidate) may have lost its anchor to an eviction
        since, and loading it would put KV on the GPU below a node that is not there."""
        root = self.tree.root
        for i, node in enumerate(todo):
            parent = node.parent
            if parent is None:
                return False  # detached since the run was computed
            if not (parent is root or parent.gpu or parent.inflight is _LOAD or (i and parent is todo[i - 1])):
                return False
        return True

    def complete(self, op: Op) -> None:
        """The backend finished ``op``: flip its nodes to their new tier. A node may have been
        split while its copy ran (a match ending inside it); the op then covers ``op.node`` and
        the ancestors split off above it, ``op.tokens`` in all."""
        if isinstance(op, Load):
            end = self.tree.end_load
        elif isinstance(op, Offload):
            end = self.tree.end_offload
        else:
            return  # a Free: nothing to flip, the backend released the memory
        node: RadixNode | None = op.node
        remaining = op.tokens
        while remaining > 0 and node is not None and node.parent is not None:
            end(node)
            remaining -= len(node.tokens)
            node = node.parent

    # ----- hints -----------------------------------------------------------------------------
    def set_hints(self, client_id: str, steps: Mapping[str, float | None]) -> None:
        """New steps-to-execution for a client's agents (None = unknown): the policy takes them
        and names the users whose keys may have dropped; their fixed-prompt paths are re-filed
        (a key that rises is corrected when its stale heap entry surfaces)."""
        if not self.policy.uses_hints:
            return
        dropped = self.policy.set_hints({(client_id, agent): value for agent, value in steps.items()})
        self.tags.refresh_users(dropped)

    def refresh_users(self, users: Iterable[User]) -> None:
        """Re-file the fixed-prompt paths of ``users`` (a policy hook said their keys may drop)."""
        self.tags.refresh_users(users)

    # ----- sessions (``Policy.observes_sessions`` only; the engine calls these when ``sessions``) ----
    def session_submit(self, client: str, user: User | None, now_s: float) -> None:
        """A call of ``client`` arrived: a paused session resumes; the policy hears which agent calls."""
        assert self.sessions is not None
        if self.sessions.submit(client, user):
            self.refresh_clients(self.policy.on_session_resume(client, now_s))
        if user is not None:
            self.refresh_clients(self.policy.on_call_submit(client, user[1], now_s))

    def session_finish(self, client: str, agent: str, prompt_tokens: int, now_s: float) -> None:
        """A call of ``client`` finished: with none left the session pauses (re-rank it, and back
        its GPU nodes up now if the policy asks, so evicting them later needs no D2H copy)."""
        assert self.sessions is not None
        if not self.sessions.finish(client):
            return
        self.refresh_clients(self.policy.on_session_pause(client, agent, prompt_tokens, now_s))
        if self.policy.backup_on_pause and self.config.cpu_capacity_tokens:
            for node in self._session_paths(client):
                self.writes.backup_now(node)

    def session_end(self, client: str, now_s: float) -> None:
        """Session ``client`` is over (its workflow finished)."""
        assert self.sessions is not None
        self.refresh_clients(self.policy.on_session_end(client, now_s))
        self.sessions.end(client)

    def refresh_clients(self, clients: Iterable[str]) -> None:
        """Re-file every node on the fixed-prompt (earlier ones too: still tagged) and latest-dynamic
        paths of ``clients``' users."""
        refresh = self.tree.refresh
        for client in clients:
            for node in self._session_paths(client, earlier_fixed=True):
                refresh(node)

    def _session_paths(self, client: str, earlier_fixed: bool = False) -> list[RadixNode]:
        """The nodes of ``client``'s users' paths (latest fixed prompt, earlier ones if asked, latest
        dynamic prompt), each once, root first (a backup needs its parent's copy started first)."""
        assert self.sessions is not None
        seen: dict[int, RadixNode] = {}
        for user in sorted(self.sessions.users.get(client, ())):
            fixed: list[RadixNode | None] = (
                [*self.tags.fixed_ends(user)] if earlier_fixed else [self.tree.user_nodes.get(user)]
            )
            ends: list[RadixNode | None] = [*fixed, self.tags.dynamic_ends.get(user)]
            for end in ends:
                if end is None or end.parent is None:
                    continue
                path: list[RadixNode] = list(end.path_to_root())
                for node in reversed(path):
                    seen.setdefault(node.node_id, node)
        return list(seen.values())

    # ----- checks -----------------------------------------------------------------------------
    def check_invariants(self) -> None:
        """O(tree) consistency check for tests: capacities and per-node counters."""
        gpu = cpu = 0
        for node in self.tree.walk():
            assert node.tier is not None, f"{node} is in the tree with no copy"
            gpu += len(node.tokens) if node.on_gpu_or_loading else 0
            cpu += len(node.tokens) if node.on_cpu_or_offloading else 0
            assert node.gpu_children == sum(c.on_gpu_or_loading for c in node.children.values())
            assert node.cpu_children == sum(c.on_cpu_or_offloading for c in node.children.values())
            if node.on_gpu_or_loading and node.parent is not None and node.parent.parent is not None:
                assert node.parent.on_gpu_or_loading, f"{node} on GPU below a parent that is not"
            if node.on_cpu_or_offloading and node.parent is not None and node.parent.parent is not None:
                assert node.parent.on_cpu_or_offloading, f"{node} on CPU below a parent that is not"
        assert gpu <= self.gpu_used_tokens <= self.config.gpu_capacity_tokens, (gpu, self.gpu_used_tokens)
        assert cpu == self.cpu_used_tokens <= self.config.cpu_capacity_tokens, (cpu, self.cpu_used_tokens)
