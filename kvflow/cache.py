"""Two-tier KV cache manager: capacities, write policy, eviction, prefetch; emits ops.

The manager decides, the backend moves bytes. Every transfer is an op (``Load``/``Offload``) that
stays in flight until the backend calls ``complete(op)``; a node in flight is never evicted.
Capacities are in tokens: GPU = tree nodes on (or loading onto) the GPU + tokens reserved by
running requests; CPU = nodes with a CPU copy (or one being written).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from kvflow.ops import Free, Load, Offload, Op
from kvflow.radix import MatchResult, RadixNode, RadixTree, User, common_prefix_len

WRITE_POLICIES = ("write_through", "write_back", "none")


@dataclass
class CacheConfig:
    gpu_capacity_tokens: int
    cpu_capacity_tokens: int = 0
    page_size: int = 1
    kv_bytes_per_token: int = 1
    write_policy: str = "write_through"  # HiCache default: back up on insert
    write_through_hits: int = 1  # accesses (insert counts as one) before a node is backed up
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


class KVCacheManager:
    def __init__(self, config: CacheConfig, policy: Any) -> None:
        self.config = config
        self.policy = policy
        self.tree = RadixTree(policy, config.page_size)
        self.gpu_used_tokens = 0
        self.cpu_used_tokens = 0
        self.stats = CacheStats()
        self._pending: list[Op] = []
        self._prefetch_inflight = 0
        self._dynamic_ends: dict[User, RadixNode] = {}  # user -> end of its latest dynamic prompt
        # optional learning hooks of policies that estimate reuse online (kvflow_cost)
        self._observe_prompt = getattr(policy, "observe_prompt", None)
        self._observe_evict = getattr(policy, "observe_evict", None)
        # tag each agent's latest dynamic prompt only for policies that rank by it
        self._tracks_dynamic = bool(getattr(policy, "tracks_dynamic", False))
        self._last_prompt: dict[User, tuple[list[int], int]] = {}
        self._worth_keeping = getattr(policy, "worth_keeping", None)  # False: drop, never back up
        # clients whose prefetch waited for a free slot, oldest first (a dict keeps insertion order)
        self.prefetch_starved: dict[str, None] = {}

    # ----- capacity -------------------------------------------------------------------------
    @property
    def gpu_free_tokens(self) -> int:
        return self.config.gpu_capacity_tokens - self.gpu_used_tokens

    @property
    def cpu_free_tokens(self) -> int:
        return self.config.cpu_capacity_tokens - self.cpu_used_tokens

    def bytes_of(self, tokens: int) -> int:
        return tokens * self.config.kv_bytes_per_token

    def take_ops(self) -> list[Op]:
        """Ops queued since the last call, for the backend to start now."""
        ops, self._pending = self._pending, []
        return ops

    def alloc_gpu(self, n_tokens: int, limit_key: tuple | None = None, partial: bool = False) -> int:
        """Reserve ``n_tokens`` of GPU memory, evicting as needed. Returns the tokens granted:
        ``n_tokens`` or 0 (all or nothing), or as many as possible when ``partial``.
        With ``limit_key`` only victims whose policy key is below it are evicted (prefetch must not
        evict what is needed sooner)."""
        if self.gpu_free_tokens < n_tokens:
            self.evict_gpu(n_tokens - self.gpu_free_tokens, limit_key)
        granted = min(n_tokens, max(self.gpu_free_tokens, 0))
        if granted < n_tokens and not partial:
            return 0
        self.gpu_used_tokens += granted
        return granted

    def release_gpu(self, n_tokens: int) -> None:
        self.gpu_used_tokens -= n_tokens
        assert self.gpu_used_tokens >= 0

    def evict_gpu(self, n_tokens: int, limit_key: tuple | None = None) -> int:
        """Free at least ``n_tokens`` GPU tokens if possible; returns tokens freed."""
        freed = 0
        tree = self.tree
        while freed < n_tokens:
            top = tree.gpu_top()
            if top is None or (limit_key is not None and top[0] >= limit_key):
                break
            node = tree.pop_gpu_top()
            if self._observe_evict is not None:
                self._observe_evict(node, tree._tick)
            need = tree.page_floor(n_tokens - freed + tree.page_size - 1) if tree.page_size > 1 else n_tokens - freed
            if self.config.evict_partial and need < len(node.tokens):
                tree.split(node, len(node.tokens) - need)
            freed += self._demote(node)
        self.stats.gpu_evicted_tokens += freed
        return freed

    def _demote(self, node: RadixNode) -> int:
        """Take ``node`` off the GPU: keep its CPU copy, offload it (write-back), or drop it."""
        n = len(node.tokens)
        if node.prefetched:
            self.stats.prefetch_wasted += 1
            node.prefetched = False
        if node.cpu:
            self.tree.set_state(node, gpu=False)
            if self.config.free_ops:
                self._pending.append(Free(node, n, 0, tier="gpu"))
        elif (self.config.write_policy == "write_back"
              and (self._worth_keeping is None or self._worth_keeping(node)) and self._alloc_cpu(n)):
            self.tree.set_state(node, gpu=False, inflight="offload")
            self._queue_offload(node, free_gpu_after=True)
        else:
            self.tree.set_state(node, gpu=False)
            if self.config.free_ops:
                self._pending.append(Free(node, n, 0, tier="gpu"))
        self.gpu_used_tokens -= n
        return n

    def _alloc_cpu(self, n_tokens: int) -> bool:
        if self.config.cpu_capacity_tokens == 0:
            return False
        if self.cpu_free_tokens < n_tokens:
            self.evict_cpu(n_tokens - self.cpu_free_tokens)
        if self.cpu_free_tokens < n_tokens:
            return False
        self.cpu_used_tokens += n_tokens
        return True

    def evict_cpu(self, n_tokens: int) -> int:
        freed = 0
        while freed < n_tokens:
            node = self.tree.pop_cpu_victim()
            if node is None:
                break
            self.tree.set_state(node, cpu=False)
            if self.config.free_ops:
                self._pending.append(Free(node, len(node.tokens), 0, tier="cpu"))
            self.cpu_used_tokens -= len(node.tokens)
            freed += len(node.tokens)
        self.stats.cpu_evicted_tokens += freed
        return freed

    def _queue_offload(self, node: RadixNode, free_gpu_after: bool) -> None:
        nbytes = self.bytes_of(len(node.tokens))
        self.stats.d2h_bytes += nbytes
        self._pending.append(Offload(node, len(node.tokens), nbytes, free_gpu_after=free_gpu_after))

    # ----- lookups and inserts ------------------------------------------------------------------
    def match(self, tokens: list[int], touch: bool = True, max_tokens: int | None = None) -> MatchResult:
        result = self.tree.match(tokens, touch=False, max_tokens=max_tokens)
        if touch:
            self.touch_path(result.last_node)
        return result

    def touch_path(self, last: RadixNode) -> None:
        """A request uses the path root..``last``: access times (root first) and hit counts,
        prefetch accounting, and write-through backups of nodes used often enough."""
        path = list(last.path_to_root())
        tree = self.tree
        for node in reversed(path):
            tree._tick += 1
            node.last_access = tree._tick
            node.hits += 1
        for node in path:
            if node.prefetched and node.gpu:
                node.prefetched = False
                self.stats.prefetch_used += 1
            elif node.prefetched and node.inflight == "load":
                self.stats.prefetch_late += 1
            self._maybe_backup(node)

    def observe_prompt(self, user: User | None, tokens: list[int], fixed_tokens: int) -> None:
        """Tell a learning policy how much of ``user``'s previous dynamic prompt its new prompt
        repeats (a conversation it extends), whatever the cache holds."""
        if user is None or self._observe_prompt is None:
            return
        previous = self._last_prompt.get(user)
        self._last_prompt[user] = (tokens, fixed_tokens)
        if previous is None:
            changed = self._observe_prompt(user[1], False, 0, 0)
        else:
            prev_tokens, prev_fixed = previous
            common = common_prefix_len(prev_tokens, tokens)
            changed = self._observe_prompt(user[1], True, max(0, len(prev_tokens) - prev_fixed),
                                           max(0, common - prev_fixed))
        if changed:  # the agent's reuse estimates moved: re-file its nodes (every client's)
            self._refresh_agent(user[1])

    def _refresh_agent(self, agent: str) -> None:
        for index in (self.tree.user_nodes, self._dynamic_ends):
            for (_, a), end in index.items():
                if a == agent and end.parent is not None:
                    for node in end.path_to_root():
                        self.tree.refresh(node)

    def lock(self, node: RadixNode) -> None:
        self.tree.lock(node)

    def unlock(self, node: RadixNode) -> None:
        self.tree.unlock(node)

    def insert(self, tokens: list[int], reserved_tokens: int, fixed_tokens: int = 0,
               user: User | None = None, prompt_tokens: int | None = None, known_tokens: int = 0) -> RadixNode:
        """Put ``tokens`` (computed on the GPU) into the tree. ``reserved_tokens`` were allocated by
        the caller with ``alloc_gpu`` for the part not already on the GPU; duplicates are released.
        Nodes up to ``fixed_tokens`` are tagged with ``user``; nodes past it are suffixes, and those
        before ``prompt_tokens`` (default: all) also record ``user`` as a dynamic-prompt user.
        ``known_tokens``: a prefix the caller matched and kept locked since, so its nodes are known
        to hold these tokens (splits keep them) and are not compared again."""
        tree = self.tree
        limit = tree.page_floor(len(tokens))
        fixed_end = tree.page_floor(min(fixed_tokens, limit)) if user else 0
        prompt_end = tree.page_floor(len(tokens) if prompt_tokens is None else prompt_tokens)
        dynamic_last: RadixNode | None = None  # deepest node of this prompt's dynamic part
        boundary_node: RadixNode = tree.root  # the node where the fixed prompt ends
        boundary_at = fixed_end
        node, pos = tree.root, 0
        while pos < limit:
            child = node.children.get(tree._child_key(tokens, pos))
            if child is None:
                break
            if pos + len(child.tokens) <= known_tokens:
                common = len(child.tokens)
            else:
                common = tree._common_len(child.tokens, tokens, pos)
                if common == 0:
                    break
                if common < len(child.tokens):
                    child = tree.split(child, common)
            if pos < boundary_at < pos + len(child.tokens):
                tree.split(child, boundary_at - pos)
                child = child.parent  # type: ignore[assignment]
            if not child.gpu:
                if child.inflight is not None:
                    break  # a copy of this node is in flight: keep the tree consistent, stop here
                if reserved_tokens < len(child.tokens):
                    break  # nothing reserved for it: leave it to the CPU tier
                # recomputed on the GPU: the reservation becomes this node's GPU copy
                tree.set_state(child, gpu=True)
                reserved_tokens -= len(child.tokens)
            child.last_access = tree.tick()
            if self._tag(child, pos, fixed_end, prompt_end, user):
                dynamic_last = child
            pos += len(child.tokens)
            node = child
            if pos == fixed_end:
                boundary_node = node
        while pos < limit and (node is tree.root or node.gpu):
            boundary = boundary_at if pos < boundary_at else (prompt_end if pos < prompt_end else limit)
            end = min(boundary, limit, pos + tree.page_floor(reserved_tokens))
            if end <= pos:
                break  # the caller reserved less than the tokens it computed: cache what was paid for
            child = tree.insert_below(node, tokens[pos:end])
            reserved_tokens -= len(child.tokens)
            if self._tag(child, pos, fixed_end, prompt_end, user):
                dynamic_last = child
            self._join_gpu(child)
            pos, node = end, child
            if pos == fixed_end:
                boundary_node = node
        if user is not None and 0 < fixed_end <= pos:  # the fixed prompt ends at a node boundary
            self.tree.user_nodes[user] = boundary_node
        if user is not None and dynamic_last is not None and self._tracks_dynamic:
            self._set_latest_dynamic(user, dynamic_last)
        if reserved_tokens:
            self.release_gpu(reserved_tokens)  # tokens another request inserted meanwhile (or partial page)
        return node

    def extend(self, node: RadixNode, tokens: Sequence[int], reserved_tokens: int,
               user: User | None = None) -> RadixNode:
        """Append fresh ``tokens`` that no other sequence shares (generated outputs) below ``node``,
        the GPU-resident end of a sequence already in the tree: no walk from the root.
        ``reserved_tokens`` were allocated for them; what is not cached is released."""
        tree = self.tree
        for ancestor in reversed(list(node.path_to_root())):  # the sequence was used until now (as
            ancestor.last_access = tree.tick()                # SGLang's cache_finished_req re-inserts
                                                              # it); a newer access needs no re-filing
        n = tree.page_floor(min(len(tokens), reserved_tokens))
        if n and node.gpu and tree._child_key(tokens) not in node.children:
            child = tree.insert_below(node, tokens[:n])
            child.suffix = user is not None  # an output: KVFlow evicts it first
            self._join_gpu(child)
            reserved_tokens -= n
            node = child
        if reserved_tokens:
            self.release_gpu(reserved_tokens)
        return node

    def _tag(self, node: RadixNode, start: int, fixed_end: int, prompt_end: int, user: User | None) -> bool:
        """Record ``user`` on a fixed-prompt node, or mark a later node as a suffix; returns True for
        a node of the prompt's dynamic part."""
        if user is None:
            return False
        if start < fixed_end:
            if user not in node.users:
                node.users.add(user)
                self.tree.refresh(node)
            return False
        if not node.users and not node.suffix:
            node.suffix = True
            self.tree.refresh(node)  # its class changed: re-file it in the eviction heaps
        return start < prompt_end

    def _set_latest_dynamic(self, user: User, deepest: RadixNode) -> None:
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
        node = self._dynamic_ends.get(user)
        while node is not None and node.parent is not None and user in node.dynamic_users:
            if node.node_id not in on_new:
                node.dynamic_users.discard(user)
                self.tree.refresh(node)
            node = node.parent
        for node in new_path:
            if user not in node.dynamic_users:
                node.dynamic_users.add(user)
                self.tree.refresh(node)
        self._dynamic_ends[user] = deepest

    def _maybe_backup(self, node: RadixNode) -> None:
        """Write-through: back up a node on the GPU once it has been used often enough."""
        if node.gpu and self._backup_due(node):
            self.tree.set_state(node, inflight="offload")
            self._queue_offload(node, free_gpu_after=False)

    def _join_gpu(self, node: RadixNode) -> None:
        """A node just computed on the GPU joins the tier, and its write-through backup starts at
        once if due: one state change (filing it as evictable only to block it again by the
        backup was a wasted heap entry per new node)."""
        if self._backup_due(node):
            self.tree.set_state(node, gpu=True, inflight="offload")
            self._queue_offload(node, free_gpu_after=False)
        else:
            self.tree.set_state(node, gpu=True)

    def _backup_due(self, node: RadixNode) -> bool:
        """Write-through wants a CPU copy of ``node`` (on the GPU) now, and CPU space was reserved."""
        if (self.config.write_policy != "write_through" or node.cpu or node.inflight is not None
                or node.hits + 1 < self.config.write_through_hits):
            return False
        if self._worth_keeping is not None and not self._worth_keeping(node):
            return False  # the policy expects no reuse: save the PCIe bandwidth and the CPU space
        return self._alloc_cpu(len(node.tokens))

    # ----- loads ------------------------------------------------------------------------------
    def load(self, nodes: list[RadixNode], prefetch: bool = False, limit_key: tuple | None = None) -> list[Load]:
        """Start CPU->GPU loads of CPU-only ``nodes`` (a root-to-leaf run). All or nothing."""
        todo = [n for n in nodes if n.cpu and not n.gpu and n.inflight is None]
        if not todo:
            return []
        # Each node must hang below the GPU part of its path, or below the node loaded before it:
        # a run computed earlier (a prefetcher's candidate) may have lost its anchor to an eviction
        # since, and loading it would put KV on the GPU below a node that is not there.
        for i, node in enumerate(todo):
            parent = node.parent
            if not (parent is self.tree.root or parent.gpu or parent.inflight == "load"
                    or (i and parent is todo[i - 1])):
                return []
        anchor = todo[0].parent
        assert anchor is not None
        self.lock(anchor)  # the GPU ancestors must survive the eviction that makes room
        granted = self.alloc_gpu(sum(len(n.tokens) for n in todo), limit_key=limit_key)
        self.unlock(anchor)
        if granted == 0:
            return []
        ops = []
        for node in todo:
            self.tree.set_state(node, inflight="load")
            node.prefetched = prefetch
            nbytes = self.bytes_of(len(node.tokens))
            self.stats.h2d_bytes += nbytes
            ops.append(Load(node, len(node.tokens), nbytes, prefetch=prefetch))
        if prefetch:
            self.stats.prefetch_issued += len(ops)
            self._prefetch_inflight += len(ops)
        return ops

    def complete(self, op: Op) -> None:
        """The backend finished ``op``: flip its nodes to their new tier. A node may have been
        split while its copy ran (a match ending inside it); the op then covers ``op.node`` and
        the ancestors split off above it, ``op.tokens`` in all."""
        load = isinstance(op, Load)
        if not load and not isinstance(op, Offload):
            return  # a Free: nothing to flip, the backend released the memory
        remaining, node = op.tokens, op.node
        set_state = self.tree.set_state
        while remaining > 0 and node is not None and node.parent is not None:
            if load:
                set_state(node, gpu=True, inflight=None)
            else:
                set_state(node, cpu=True, inflight=None)
            remaining -= len(node.tokens)
            node = node.parent
        if load and op.prefetch:  # type: ignore[attr-defined]
            self._prefetch_inflight -= 1

    # ----- hints and prefetch -------------------------------------------------------------------
    def set_hints(self, client_id: str, steps: dict[str, float]) -> None:
        """New steps-to-execution for a client's agents: re-key the affected fixed-prompt paths."""
        if not getattr(self.policy, "uses_hints", False):
            return
        old = self.policy.steps
        # Only a node whose key *drops* (its agent is now needed later, or no longer known) must be
        # re-filed at once; a key that rises is corrected when its stale heap entry surfaces
        # (RadixTree._top re-files it), which is exact because it surfaces too early, not late.
        users: dict[User, float | None] = {}
        sooner_evicted = []
        for agent, value in steps.items():
            user = (client_id, agent)
            users[user] = value
            if value is None:
                sooner_evicted.append(user)
            else:
                before = old.get(user)
                if before is None or value > before:
                    sooner_evicted.append(user)
        self.policy.set_hints(users)
        for user in sooner_evicted:
            boundary = self.tree.user_nodes.get(user)
            if boundary is not None and boundary.parent is not None:
                for node in boundary.path_to_root():
                    self.tree.refresh(node)

    def prefetch_slot_free(self) -> bool:
        return self._prefetch_inflight < self.config.max_prefetch

    def cpu_run(self, user: User) -> list[RadixNode]:
        """The CPU-only tail of ``user``'s fixed-prompt path, ready to load; [] when nothing to do
        (all on the GPU, unknown, or part of it already in flight)."""
        node = self.tree.user_nodes.get(user)
        if node is None or node.parent is None:
            return []
        run = []  # GPU residency is prefix-closed: the nodes off the GPU are the path's tail
        while node.parent is not None and not node.gpu:
            if node.inflight is not None or not node.cpu:
                return []
            run.append(node)
            node = node.parent
        run.reverse()
        return run

    def start_prefetch(self, user: User, run: list[RadixNode]) -> list[Load]:
        """Queue the loads of ``run`` for ``user``, evicting only what is needed later."""
        ops = self.load(run, prefetch=True, limit_key=self.policy.prefetch_limit(self.tree.user_nodes[user]))
        self._pending.extend(ops)
        return ops

    def prefetch(self, client_id: str, next_agents: list[str]) -> list[Load]:
        """KVFLOW.md 2.5: load the fixed prompts of ``next_agents`` (the client's agents one step
        ahead, in a fixed order) that sit in CPU only, up to the concurrency limit, never evicting
        a node needed as soon as (or sooner than) the target. A client left with candidates when
        the limit is hit is remembered in ``prefetch_starved``."""
        ops: list[Load] = []
        self.prefetch_starved.pop(client_id, None)
        for agent in next_agents:
            run = self.cpu_run((client_id, agent))
            if not run:
                continue
            if not self.prefetch_slot_free():
                self.prefetch_starved[client_id] = None
                break
            ops.extend(self.start_prefetch((client_id, agent), run))
        return ops

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
        assert gpu <= self.gpu_used_tokens <= self.config.gpu_capacity_tokens, (gpu, self.gpu_used_tokens)
        assert cpu == self.cpu_used_tokens <= self.config.cpu_capacity_tokens, (cpu, self.cpu_used_tokens)
