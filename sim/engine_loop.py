"""The engine as one SimPy process: ``step()`` decides, the cost model says how long it takes.

Every decision (batching, admission, eviction, prefetch) is made by ``kvflow.engine.Engine``; this
loop only turns iterations into simulated time and runs the engine's ops on the PCIe channels:
- an iteration takes ``cost.iteration_time_s(prefill chunks, decode contexts)``;
- a pure-decode iteration may cover ``it.decode_steps`` steps; the loop jumps over them in one
  event but stops at the first step boundary after anything else happens (an arrival, a copy
  finishing), so the engine can re-plan exactly when a real scheduler would;
- reactive load-backs (``it.blocking_loads``) hold the H2D channel and overlap the prefill layer
  by layer: ``max(compute, load) + load / layers`` (DESIGN.md, HiCache);
- async ops (``engine.take_ops()``) queue on their channel at once (background priority, behind
  reactive loads; a load a request waits for, ``load_then_dispatch``, queues with the reactive
  ones); Free ops complete at once.
The engine model (``cost.engine``, docs/engines.md) adds two rules of SGLang 0.4:
- ``gating: global`` (one global layer counter): a forward launched while any H2D load runs (a
  prefetch too) waits for it layer by layer, ``max(compute, remaining load) + remaining / layers``;
  a load that starts during a decode run cuts the run at the next step, so the next step is gated;
  a decode batch the engine replays as a CUDA graph (``cuda_graph_max_bs``) is not gated: the
  counter is read in Python that a graph replay skips;
- ``scheduler_sync``: issuing a load synchronizes the scheduler with the GPU, so a load queued
  while an iteration computes starts when that iteration ends.
With ``gating: consumer`` (0.5, ideal) only the batch that reads the KV waits (the reactive loads
above; a request whose prefix is still being prefetched is not scheduled).
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Generator
from typing import Any

import simpy

from harness.cost_model import CostModel
from kvflow.ops import Free, Load, Offload
from sim.pcie import PCIeLink


class EngineLoop:
    """Drives one ``Engine`` in simulated time; ``wake()`` is how the outside world pokes it."""

    def __init__(
        self,
        env: simpy.Environment,
        engine: Any,
        cost: CostModel,
        pcie: PCIeLink,
        on_finished: Callable[[list[Any]], None],
        timeline: list[tuple[str, float, float, str]] | None = None,
        after_iteration: Callable[[], None] | None = None,
    ) -> None:
        self.env = env
        self.engine = engine
        self._pending_ops = engine.cache.pending_ops  # read-only view of the queued ops
        self.cost = cost
        self.pcie = pcie
        self.on_finished = on_finished
        self._wake = env.event()
        self.ops_inflight = 0
        self.busy_s = 0.0
        self.iterations = 0
        self.decode_steps = 0
        self.blocking_load_wait_s = 0.0
        self.blocking_load_exposed_s = 0.0
        self.busy_kind_s = {"prefill": 0.0, "decode": 0.0, "copy_stall": 0.0}  # busy_s split by what ran
        self._stall_s = 0.0  # copy wait + exposed load time of the iteration in progress
        self.after_iteration = after_iteration  # e.g. invariant checks in tests
        self.timeline = timeline  # a list to record GPU iterations into (Gantt plots), or None
        model = cost.engine
        self.gate_all = model is not None and model.gating == "global"  # loads gate every forward
        self.graph_max_bs = model.cuda_graph_max_bs(cost.gpu_memory_bytes) if model is not None else 0
        self.sync_loads = model is not None and model.scheduler_sync  # loads wait for the running iteration
        self.computing = False  # an iteration is on the GPU
        self._held_loads: list[Load] = []  # loads issued mid-iteration under scheduler_sync
        self.gated_s = 0.0  # time forwards spent waiting for a load they do not read (gating: global)
        self._next_wake = getattr(engine, "next_wake_s", None)  # (absent on a test's stand-in engine)

    # -- outside input -------------------------------------------------------------------------
    def poke(self) -> None:
        """New engine input (a submitted request, a finished one): start queued ops, wake the loop."""
        self.start_ops()
        self.wake()

    def wake(self) -> None:
        if not self._wake.triggered:
            self._wake.succeed()

    def start_ops(self) -> None:
        """Launch every op the engine queued; called after anything that may queue ops."""
        if not self._pending_ops:  # the cache's queue itself: no call when, as usual, it is empty
            return
        for op in self.engine.take_ops():
            if isinstance(op, Free):
                self.engine.complete_op(op, self.env.now)
                continue
            assert isinstance(op, (Load, Offload)), op
            self.ops_inflight += 1
            if isinstance(op, Load) and self.sync_loads and self.computing:
                self._held_loads.append(op)
            else:
                self._launch(op)

    def _launch(self, op: Load | Offload) -> None:
        if isinstance(op, Offload):
            self.pcie.copy(op.bytes, "d2h", self._op_done, "offload", tag=op)
            return
        on_start = self._load_started if self.gate_all else None
        label = "prefetch" if op.prefetch else "load"  # a load an admitted request waits for goes first, as
        urgent = not op.prefetch  # a reactive one (load_then_dispatch: the only non-prefetch Load op)
        self.pcie.copy(op.bytes, "h2d", self._op_done, label, urgent=urgent, on_start=on_start, tag=op)

    def _graph_replay(self, it: Any) -> bool:
        """A pure decode batch small enough to run as a CUDA graph (no Python layer calls)."""
        return bool(it.decode) and not it.prefill and len(it.decode) <= self.graph_max_bs

    def _load_started(self, _duration_s: float) -> None:
        """Global gating: a running decode run stops at its next step so that the next one waits."""
        self.wake()

    def _release_held(self) -> None:
        held, self._held_loads = self._held_loads, []
        for op in held:
            self._launch(op)

    def _load_remaining_s(self) -> float:
        """Time until the H2D copy in progress ends (0 when none runs)."""
        if not self.pcie.active["h2d"]:
            return 0.0
        return max(0.0, self.pcie.busy_until["h2d"] - self.env.now)

    def _op_done(self, op: Any) -> None:
        self.ops_inflight -= 1
        self.engine.complete_op(op, self.env.now)
        self.start_ops()
        self.wake()

    # -- the loop ------------------------------------------------------------------------------
    def run(self) -> Generator[simpy.Event, Any, None]:
        while True:
            self.start_ops()
            it = self.engine.step(self.env.now)
            self.start_ops()
            if it is None:
                if self._wake.triggered:
                    self._wake = self.env.event()
                    continue
                # a prefetch falling due (None for most prefetchers)
                wake_s = self._next_wake() if self._next_wake is not None else None
                if wake_s is not None and wake_s > self.env.now:
                    yield self._wake | self.env.timeout(wake_s - self.env.now)
                else:
                    yield self._wake
                self._wake = self.env.event()
                continue
            if self._wake.triggered:
                self._wake = self.env.event()
            start_s = self.env.now
            self.iterations += 1
            self.computing = True
            gate_s = self._load_remaining_s() if self.gate_all and not self._graph_replay(it) else 0.0
            if it.blocking_loads:
                finished = yield from self._run_with_loads(it)
            elif gate_s > 0:
                finished = yield from self._run_gated(it, gate_s)
            elif it.decode and not it.prefill and it.decode_steps > 1:
                finished = yield from self._run_decode(it)
            else:
                yield self.env.timeout(self._compute_s(it))
                self.decode_steps += 1 if it.decode else 0
                finished = self.engine.finish(it, self.env.now)
            self.computing = False
            self._release_held()
            self.busy_s += self.env.now - start_s
            self._count_kind(it, self.env.now - start_s)
            if self.timeline is not None:
                self.timeline.append(("gpu", start_s, self.env.now, "prefill" if it.prefill else "decode"))
            self.start_ops()
            if self.after_iteration is not None:
                self.after_iteration()
            if finished:
                self.on_finished(finished)

    def _count_kind(self, it: Any, elapsed_s: float) -> None:
        """Split an iteration's time: copy stall (waiting for / exposed reactive loads), else its kind."""
        stall, self._stall_s = self._stall_s, 0.0
        self.busy_kind_s["copy_stall"] += stall
        self.busy_kind_s["prefill" if it.prefill else "decode"] += elapsed_s - stall

    def _compute_s(self, it: Any) -> float:
        chunks = [(c.new_tokens, c.context_tokens) for c in it.prefill]
        return self.cost.iteration_time_s(chunks, list(it.decode_contexts) if it.decode else [])

    def _run_gated(self, it: Any, load_s: float) -> Generator[simpy.Event, Any, list[Any]]:
        """One iteration (one decode step at most) launched while a load it does not read runs:
        global gating makes each layer wait for the load's layer."""
        compute_s = self._compute_s(it)
        total_s = self.cost.overlapped_load_time_s(compute_s, load_s)
        self.gated_s += total_s - compute_s
        self._stall_s = total_s - compute_s
        yield self.env.timeout(total_s)
        self.decode_steps += 1 if it.decode else 0
        return self.engine.finish(it, self.env.now, decode_steps_done=1 if it.decode else None)

    def _run_decode(self, it: Any) -> Generator[simpy.Event, Any, list[Any]]:
        """Up to ``it.decode_steps`` decode steps, cut short at the step boundary after a wake-up."""
        ends = self.cost.decode_run_times_s(list(it.decode_contexts), it.decode_steps)
        start = self.env.now
        yield self.env.timeout(float(ends[-1])) | self._wake
        elapsed = self.env.now - start
        done = it.decode_steps
        if elapsed < ends[-1]:  # woken early: finish the step in progress, then hand back
            done = min(bisect_left(ends, elapsed) + 1, it.decode_steps)
            rest = start + float(ends[done - 1]) - self.env.now
            if rest > 0:
                yield self.env.timeout(rest)
        self.decode_steps += done
        return self.engine.finish(it, self.env.now, decode_steps_done=done)

    def _run_with_loads(self, it: Any) -> Generator[simpy.Event, Any, list[Any]]:
        """HiCache reactive load-back: wait for the H2D channel, then copy while prefilling."""
        nbytes = sum(op.bytes for op in it.blocking_loads)
        asked = self.env.now
        started = self.env.event()
        self.pcie.copy(nbytes, "h2d", label="load", urgent=True, on_start=started.succeed)
        load_s = yield started
        self.blocking_load_wait_s += self.env.now - asked
        compute_s = self._compute_s(it)
        total_s = self.cost.overlapped_load_time_s(compute_s, load_s)
        self.blocking_load_exposed_s += total_s - compute_s
        self._stall_s = self.env.now - asked + total_s - compute_s
        yield self.env.timeout(total_s)
        self.decode_steps += 1 if it.decode else 0
        return self.engine.finish(it, self.env.now)
