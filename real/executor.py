"""Runs the core's ops on real memory: Load (H2D), Offload (D2H), Free.

On a GPU each direction has its own CUDA stream; a copy waits for the compute stream (its source
may have just been written), is recorded with an event, and is *done* only when the event has
completed. On CPU each direction is one worker thread doing the same copies (so a copy really is
asynchronous and can overlap compute, and tests can delay it); ``done`` is the thread's future.
``poll()`` returns the ops whose copy has finished, in start order per direction; the engine loop
acknowledges exactly those to the core, never an op whose copy is still running.
"""

from __future__ import annotations

import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import torch

from kvflow.ops import Free, Load, Offload, Op
from real.kv_store import KVStore


@dataclass
class Pending:
    op: Op
    direction: str
    start_s: float
    event: Any = None  # torch.cuda.Event | Future
    tensors: list[torch.Tensor] = field(default_factory=list)  # kept alive until done

    def done(self) -> bool:
        if isinstance(self.event, Future):
            return self.event.done()
        return self.event.query()

    def wait(self) -> None:
        if isinstance(self.event, Future):
            self.event.result()
        else:
            self.event.synchronize()


class CopyExecutor:
    """H2D and D2H copy channels plus counters and a timeline (``resource, start_s, end_s, label``)."""

    def __init__(self, store: KVStore, clock: Any, copy_delay_s: float = 0.0) -> None:
        self.store = store
        self.clock = clock
        self.cuda = store.device.type == "cuda"
        self.copy_delay_s = copy_delay_s  # tests: make CPU copies slow enough to overlap
        if self.cuda:
            self.streams = {d: torch.cuda.Stream(device=store.device) for d in ("h2d", "d2h")}
        else:
            self.threads = {d: ThreadPoolExecutor(1, thread_name_prefix=f"kv-{d}") for d in ("h2d", "d2h")}
        self.pending: dict[str, deque[Pending]] = {"h2d": deque(), "d2h": deque()}
        self.bytes = {"h2d": 0, "d2h": 0}
        self.copies = {"h2d": 0, "d2h": 0}
        self.busy_s = {"h2d": 0.0, "d2h": 0.0}
        self.timeline: list[tuple[str, float, float, str]] = []
        self.acked: set[int] = set()  # op ids whose copy finished (tests check acks against this)
        self.blocking: set[int] = set()  # reactive loads an iteration waits on

    # ----- starting ---------------------------------------------------------------------------
    def start(self, op: Op) -> bool:
        """Launch ``op``; True if it is already complete (Free), False if a copy is in flight."""
        if isinstance(op, Free):
            if op.tier == "gpu":
                self.store.free_gpu(op.node.node_id)
            else:
                self.store.free_cpu(op.node.node_id)
            self.acked.add(op.op_id)
            return True
        if isinstance(op, Load):
            src = self.store.cpu_view(op.node.node_id)
            dst = self.store.new_gpu(op.node)
            self._launch(op, "h2d", dst, src)
        elif isinstance(op, Offload):
            src = self.store.gpu[op.node.node_id]
            dst = self.store.new_cpu(op.node)
            self._launch(op, "d2h", dst, src)
        else:  # pragma: no cover
            raise TypeError(f"unknown op {op!r}")
        return False

    def _launch(self, op: Op, direction: str, dst: torch.Tensor, src: torch.Tensor) -> None:
        node_id = op.node.node_id
        self.store.busy[node_id] = self.store.busy.get(node_id, 0) + 1
        p = Pending(op, direction, self.clock(), tensors=[dst, src])
        if self.cuda:
            stream = self.streams[direction]
            stream.wait_stream(torch.cuda.current_stream(self.store.device))  # source fully written
            with torch.cuda.stream(stream):
                dst.copy_(src, non_blocking=True)
                p.event = torch.cuda.Event()
                p.event.record(stream)
            gpu_t = dst if direction == "h2d" else src
            gpu_t.record_stream(stream)
        else:
            p.event = self.threads[direction].submit(self._cpu_copy, dst, src)
        self.pending[direction].append(p)

    def _cpu_copy(self, dst: torch.Tensor, src: torch.Tensor) -> None:
        if self.copy_delay_s:
            time.sleep(self.copy_delay_s)
        dst.copy_(src)

    # ----- completion -------------------------------------------------------------------------
    def poll(self) -> list[Op]:
        """Ops whose copy has completed since the last poll (each direction completes in order).
        Blocking loads are retired but not returned: ``Engine.finish`` completes those."""
        done: list[Op] = []
        for _direction, queue in self.pending.items():
            while queue and queue[0].done():
                op = self._retire(queue.popleft())
                if op.op_id not in self.blocking:
                    done.append(op)
                self.blocking.discard(op.op_id)
        return done

    def _retire(self, p: Pending) -> Op:
        p.wait()  # re-raise a worker's exception; no-op for a finished event
        end = self.clock()
        op = p.op
        node_id = op.node.node_id
        self.store.busy[node_id] -= 1
        if not self.store.busy[node_id]:
            del self.store.busy[node_id]
        if isinstance(op, Offload) and op.free_gpu_after:
            self.store.free_gpu(node_id)
        self.bytes[p.direction] += p.tensors[0].numel() * p.tensors[0].element_size()
        self.copies[p.direction] += 1
        # a direction runs one copy at a time: busy from max(start, previous end)
        begin = p.start_s
        for res, _, e, _ in reversed(self.timeline):
            if res == p.direction:
                begin = max(begin, e)
                break
        self.busy_s[p.direction] += max(0.0, end - begin)
        label = "offload" if p.direction == "d2h" else ("prefetch" if op.prefetch else "load")  # type: ignore[attr-defined]
        self.timeline.append((p.direction, begin, end, label))
        self.acked.add(op.op_id)
        return op

    def wait_ops(self, ops: list[Op]) -> None:
        """Block until these in-flight ops' copies are done (blocking loads before a prefill)."""
        ids = {op.op_id for op in ops}
        self.blocking |= ids
        for queue in self.pending.values():
            for p in queue:
                if p.op.op_id in ids:
                    if self.cuda:  # the compute stream waits on the GPU, the host does not
                        torch.cuda.current_stream(self.store.device).wait_event(p.event)
                    else:
                        p.wait()

    def wait_any(self, timeout_s: float) -> None:
        """Sleep until the oldest copy finishes or ``timeout_s`` passes."""
        heads = [q[0] for q in self.pending.values() if q]
        if not heads:
            if timeout_s > 0:
                time.sleep(timeout_s)
            return
        deadline = time.perf_counter() + timeout_s
        while not any(p.done() for p in heads) and time.perf_counter() < deadline:
            time.sleep(min(2e-4, max(0.0, deadline - time.perf_counter())))

    def in_flight(self) -> int:
        return sum(len(q) for q in self.pending.values())

    def drain(self) -> list[Op]:
        """Wait for every copy (end of run)."""
        for queue in self.pending.values():
            for p in queue:
                p.wait()
        return self.poll()

    def close(self) -> None:
        if not self.cuda:
            for pool in self.threads.values():
                pool.shutdown(wait=True)
