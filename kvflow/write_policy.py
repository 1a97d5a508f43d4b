"""Write policy: when a GPU node gets a CPU copy (HiCache ``write_through`` / ``write_back`` /
``none``) and where a GPU victim goes (its CPU copy stays, it is written back, or it is dropped).

A copy is an ``Offload`` op queued for the backend; the node is in flight until ``complete``.
The policy's ``worth_keeping`` can veto a copy (no expected reuse: save PCIe and CPU space), and
``CacheConfig.backup_dynamic`` False never copies a dynamic suffix or an output (KVFlow, KVFLOW.md
2.4: only fixed prompts get a CPU copy; a suffix leaving the GPU is dropped).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from kvflow.ops import Free, Offload, Op
from kvflow.policies.base import Policy
from kvflow.radix import InFlight, RadixNode, RadixTree
from kvflow.tiers import CpuTier

if TYPE_CHECKING:
    from kvflow.cache import CacheConfig, CacheStats


class WritePolicy:
    def __init__(
        self, config: CacheConfig, tree: RadixTree, stats: CacheStats, policy: Policy, cpu: CpuTier, ops: list[Op]
    ) -> None:
        self.config, self.tree, self.stats, self.policy, self.cpu, self.ops = config, tree, stats, policy, cpu, ops
        self.write_through = config.write_policy == "write_through"
        self.write_back = config.write_policy == "write_back"
        # hits a node needs before its backup: its insert counts as the first unless insert_is_hit
        # is off (SGLang 0.4 counts its events itself, and a new node starts at 0)
        self.hits_due = config.write_through_hits - (1 if config.insert_is_hit else 0)
        # the policy's veto, or None when it keeps the base rule (keep everything): one call less
        # per backup on the hot path, as GpuTier does for observe_evict
        overridden = type(policy).worth_keeping is not Policy.worth_keeping
        self.worth_keeping = policy.worth_keeping if overridden else None
        self.skip_dynamic = not config.backup_dynamic

    def join_gpu(self, node: RadixNode) -> None:
        """A node just computed on the GPU joins the tier, and its write-through backup starts at
        once if due: one state change (filing it as evictable only to block it again by the
        backup was a wasted heap entry per new node)."""
        if self._backup_due(node):
            self.tree.join_gpu(node, backup=True)
            self._queue_offload(node, free_gpu_after=False)
        else:
            self.tree.join_gpu(node)

    def maybe_backup(self, node: RadixNode) -> None:
        """Write-through: back up a node on the GPU once it has been used often enough."""
        if node.gpu and self._backup_due(node):
            self.tree.begin_offload(node)
            self._queue_offload(node, free_gpu_after=False)

    def backup_now(self, node: RadixNode) -> bool:
        """Start a CPU copy of GPU node ``node`` now, whatever the write policy (a session paused:
        ``Policy.backup_on_pause``); False when it has one, is busy, or finds no room."""
        if not node.gpu or node.cpu or node.inflight is not None or not self._copy_allowed(node):
            return False
        self.tree.begin_offload(node)
        self._queue_offload(node, free_gpu_after=False)
        return True

    def demote(self, node: RadixNode) -> int:
        """Take GPU victim ``node`` off the GPU: keep its CPU copy, write it back (write-back), or
        drop it. Returns the GPU tokens it held."""
        n = len(node.tokens)
        if node.prefetched:
            self.stats.prefetch_wasted += 1
            node.prefetched = False
        if not node.cpu and self.write_back and self._copy_allowed(node):
            self.tree.begin_offload(node, demote=True)
            self._queue_offload(node, free_gpu_after=True)
        else:
            self.tree.leave_gpu(node)
            if self.config.free_ops:
                self.ops.append(Free(node, n, 0, tier="gpu"))
        return n

    def _cpu_anchored(self, node: RadixNode) -> bool:
        """CPU copies stay prefix-closed: a node gets one only below the root or a parent that has
        (or is writing) one. A CPU copy below a parent without one would be unreachable, and once
        the parent left the GPU it would have to leave the tree with children (the bug hypothesis
        found: a parent whose backup found no CPU space, its 1-token child's did)."""
        parent = node.parent
        return parent is self.tree.root or parent is None or parent.cpu or parent.inflight is InFlight.OFFLOAD

    def _backup_due(self, node: RadixNode) -> bool:
        """Write-through wants a CPU copy of ``node`` (on the GPU) now, and CPU space was reserved."""
        if not self.write_through or node.cpu or node.inflight is not None or node.hits < self.hits_due:
            return False
        return self._copy_allowed(node)

    def _copy_allowed(self, node: RadixNode) -> bool:
        """The rules every CPU copy obeys (write-through, write-back, a pausing session's backup),
        then its CPU space reserved: not a dynamic suffix or output under ``backup_dynamic=false``
        (KVFLOW.md 2.4), prefix-closed, not vetoed by the policy (no expected reuse: save the PCIe
        bandwidth and the CPU space)."""
        if self.skip_dynamic and node.suffix and not node.users:
            return False
        if not self._cpu_anchored(node):
            return False
        if self.worth_keeping is not None and not self.worth_keeping(node):
            return False
        return self._reserve_cpu(node)

    def _reserve_cpu(self, node: RadixNode) -> bool:
        """CPU space for ``node``'s copy. Making room may evict CPU copies, the parent's among them
        (it is a CPU leaf until this copy starts): then the copy would sit below a parent without one,
        so the reservation is given back and no copy made (found by check_invariants' prefix-closure
        check: kvflow_sessions on the fanout workload)."""
        n = len(node.tokens)
        if not self.cpu.alloc(n):
            return False
        if not self._cpu_anchored(node):
            self.cpu.release(n)
            return False
        return True

    def _queue_offload(self, node: RadixNode, free_gpu_after: bool) -> None:
        nbytes = len(node.tokens) * self.config.kv_bytes_per_token
        self.stats.d2h_bytes += nbytes
        self.ops.append(Offload(node, len(node.tokens), nbytes, free_gpu_after=free_gpu_after))
