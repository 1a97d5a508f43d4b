"""KV tensors per radix node: a GPU pool and a pinned-CPU pool that follow the tree's splits.

A node's KV is one contiguous tensor of shape ``(tokens, layers, 2, kv_heads, head_dim)``
(token-major), so a node moves between tiers in one large copy and a split is a cut along the
first axis. GPU tensors come from the framework's caching allocator, with the pool counting
tokens against the cache manager's capacity. The CPU pool carves node ranges out of large pinned
arenas (first fit, coalescing free list) so no copy pays for ``cudaHostAlloc``.

Splits arrive through ``RadixTree.on_split(head, tail)``: the head takes the first ``len(head)``
tokens. A GPU tensor that no copy is touching is cut into two fresh tensors (memory of an evicted
half is really returned); one that a copy is writing or reading stays as two views of it.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass

import torch

from kvflow.radix import RadixNode


class _Arena:
    """One pinned tensor of ``capacity`` token slots with a sorted free list of (offset, length)."""

    def __init__(self, capacity: int, token_shape: tuple[int, ...], dtype: torch.dtype, pin: bool) -> None:
        self.capacity = capacity
        self.data = torch.empty((capacity, *token_shape), dtype=dtype, pin_memory=pin)
        self.free: list[tuple[int, int]] = [(0, capacity)]

    def alloc(self, n: int) -> int | None:
        for i, (off, length) in enumerate(self.free):
            if length >= n:
                if length == n:
                    del self.free[i]
                else:
                    self.free[i] = (off + n, length - n)
                return off
        return None

    def release(self, off: int, n: int) -> None:
        i = bisect.bisect_left(self.free, (off, 0))
        self.free.insert(i, (off, n))
        # coalesce with the neighbours
        if i + 1 < len(self.free) and self.free[i][0] + self.free[i][1] == self.free[i + 1][0]:
            self.free[i] = (off, self.free[i][1] + self.free[i + 1][1])
            del self.free[i + 1]
        if i > 0 and self.free[i - 1][0] + self.free[i - 1][1] == self.free[i][0]:
            self.free[i - 1] = (self.free[i - 1][0], self.free[i - 1][1] + self.free[i][1])
            del self.free[i]


@dataclass
class CpuSlot:
    arena: int
    offset: int
    tokens: int


class CpuPool:
    """Pinned host memory in arenas of ``arena_tokens`` (a bigger node gets an arena of its own)."""

    def __init__(self, token_shape: tuple[int, ...], dtype: torch.dtype, pin: bool, arena_tokens: int) -> None:
        self.token_shape = token_shape
        self.dtype = dtype
        self.pin = pin
        self.arena_tokens = max(1, arena_tokens)
        self.arenas: list[_Arena] = []
        self.used_tokens = 0

    def alloc(self, n: int) -> CpuSlot:
        for index, arena in enumerate(self.arenas):
            off = arena.alloc(n)
            if off is not None:
                self.used_tokens += n
                return CpuSlot(index, off, n)
        self.arenas.append(_Arena(max(self.arena_tokens, n), self.token_shape, self.dtype, self.pin))
        off = self.arenas[-1].alloc(n)
        assert off == 0
        self.used_tokens += n
        return CpuSlot(len(self.arenas) - 1, 0, n)

    def view(self, slot: CpuSlot) -> torch.Tensor:
        return self.arenas[slot.arena].data[slot.offset : slot.offset + slot.tokens]

    def release(self, slot: CpuSlot) -> None:
        self.arenas[slot.arena].release(slot.offset, slot.tokens)
        self.used_tokens -= slot.tokens

    @property
    def reserved_bytes(self) -> int:
        return sum(a.data.numel() * a.data.element_size() for a in self.arenas)


class KVStore:
    """GPU and CPU copies of each radix node's KV, keyed by ``node_id``."""

    def __init__(
        self,
        layers: int,
        kv_heads: int,
        head_dim: int,
        device: torch.device,
        dtype: torch.dtype,
        cpu_arena_tokens: int = 65536,
    ) -> None:
        self.token_shape = (layers, 2, kv_heads, head_dim)
        self.device = device
        self.dtype = dtype
        self.gpu: dict[int, torch.Tensor] = {}
        self.cpu: dict[int, CpuSlot] = {}
        pin = device.type == "cuda" and torch.cuda.is_available()
        self.cpu_pool = CpuPool(self.token_shape, dtype, pin, cpu_arena_tokens)
        self.gpu_tokens = 0
        self.peak_gpu_tokens = 0
        self.busy: dict[int, int] = {}  # node_id -> copies in flight touching its tensors
        self.splits = 0

    @property
    def token_bytes(self) -> int:
        n = 1
        for d in self.token_shape:
            n *= d
        return n * torch.tensor([], dtype=self.dtype).element_size()

    # ----- GPU side -----------------------------------------------------------------------------
    def new_gpu(self, node: RadixNode) -> torch.Tensor:
        """Allocate (uninitialised) GPU KV for ``node``; the caller fills it."""
        assert node.node_id not in self.gpu, f"{node} already has GPU KV"
        t = torch.empty((len(node), *self.token_shape), device=self.device, dtype=self.dtype)
        self._put_gpu(node.node_id, t)
        return t

    def _put_gpu(self, node_id: int, t: torch.Tensor) -> None:
        self.gpu[node_id] = t
        self.gpu_tokens += t.shape[0]
        self.peak_gpu_tokens = max(self.peak_gpu_tokens, self.gpu_tokens)

    def fill_gpu(self, node: RadixNode, buf: torch.Tensor, start: int) -> None:
        """Copy positions ``start..start+len(node)`` of a request's working buffer
        ``(layers, 2, kv_heads, capacity, head_dim)`` into the node's own tensor."""
        t = self.new_gpu(node)
        t.copy_(buf[:, :, :, start : start + len(node)].permute(3, 0, 1, 2, 4))

    def gather(self, nodes: list[RadixNode], buf: torch.Tensor) -> int:
        """Write the nodes' KV (a root-to-leaf run) into a working buffer from position 0."""
        pos = 0
        for node in nodes:
            t = self.gpu[node.node_id]
            assert t.shape[0] == len(node), (node, t.shape)
            buf[:, :, :, pos : pos + len(node)].copy_(t.permute(1, 2, 3, 0, 4))
            pos += len(node)
        return pos

    def free_gpu(self, node_id: int) -> None:
        t = self.gpu.pop(node_id, None)
        if t is not None:
            self.gpu_tokens -= t.shape[0]

    # ----- CPU side -----------------------------------------------------------------------------
    def new_cpu(self, node: RadixNode) -> torch.Tensor:
        assert node.node_id not in self.cpu, f"{node} already has CPU KV"
        slot = self.cpu_pool.alloc(len(node))
        self.cpu[node.node_id] = slot
        return self.cpu_pool.view(slot)

    def cpu_view(self, node_id: int) -> torch.Tensor:
        return self.cpu_pool.view(self.cpu[node_id])

    def free_cpu(self, node_id: int) -> None:
        slot = self.cpu.pop(node_id, None)
        if slot is not None:
            self.cpu_pool.release(slot)

    @property
    def cpu_tokens(self) -> int:
        return self.cpu_pool.used_tokens

    # ----- splits -------------------------------------------------------------------------------
    def on_split(self, head: RadixNode, tail: RadixNode) -> None:
        """``tail`` (the old node, same id) lost its first ``len(head)`` tokens to ``head`` (new)."""
        at = len(head)
        self.splits += 1
        t = self.gpu.pop(tail.node_id, None)
        if t is not None:
            self.gpu_tokens -= t.shape[0]
            head_t, tail_t = t[:at], t[at:]
            if not self.busy.get(tail.node_id):  # nobody copies it: own storage for each half
                head_t, tail_t = head_t.clone(), tail_t.clone()
            self._put_gpu(head.node_id, head_t)
            self._put_gpu(tail.node_id, tail_t)
        slot = self.cpu.pop(tail.node_id, None)
        if slot is not None:
            self.cpu[head.node_id] = CpuSlot(slot.arena, slot.offset, at)
            self.cpu[tail.node_id] = CpuSlot(slot.arena, slot.offset + at, slot.tokens - at)
        if self.busy.get(tail.node_id):
            self.busy[head.node_id] = self.busy[tail.node_id]

    def check(self, tree_nodes: list[RadixNode]) -> None:
        """Tests: every node the core says is on a tier has KV there, with the right length."""
        for node in tree_nodes:
            if node.gpu or node.inflight == "load":
                t = self.gpu.get(node.node_id)
                assert t is not None and t.shape[0] == len(node), f"{node}: GPU KV missing or wrong size"
            if node.cpu or node.inflight == "offload":
                slot = self.cpu.get(node.node_id)
                assert slot is not None and slot.tokens == len(node), f"{node}: CPU KV missing or wrong size"
