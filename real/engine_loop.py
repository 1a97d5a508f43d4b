"""The engine in wall-clock time: ``Engine.step`` decides, torch computes, copies run beside it.

Per turn: release due invocations, acknowledge finished copies, start queued ops, plan an
iteration, run it, apply it (``Engine.finish``), give the KV of newly inserted tree nodes their
tensors, tell the driver. A prefill iteration gathers each new request's cached prefix from the
node tensors into a working buffer and computes only the uncached tokens; a decode iteration runs
up to ``decode_steps`` batched greedy steps and stops at the first step boundary after an arrival
or a finished copy, as the simulator does. Reactive load-backs (``it.blocking_loads``) are whole
node copies on the H2D stream that the compute stream waits for before the iteration.
"""

from __future__ import annotations

import time
from typing import Any

import torch

from real.driver import RealRequest, WallClockDriver
from real.executor import CopyExecutor
from real.kv_store import KVStore
from real.model import Seq, Transformer


class Stalled(RuntimeError):
    """Nothing can run and nothing will change: the run cannot finish."""


class RealEngineLoop:
    def __init__(
        self,
        engine: Any,
        model: Transformer,
        store: KVStore,
        executor: CopyExecutor,
        driver: WallClockDriver,
        clock: Any,
        check_invariants: bool = False,
    ) -> None:
        self.engine = engine
        self.model = model
        self.store = store
        self.executor = executor
        self.driver = driver
        self.clock = clock
        self.check_invariants = check_invariants
        self.iterations = 0
        self.decode_steps = 0
        self.busy_s = 0.0
        self.blocking_load_wait_s = 0.0
        self.timeline: list[tuple[str, float, float, str]] = []
        self.acks: list[tuple[int, float]] = []  # (op id, time acknowledged), for tests
        # per iteration: (kind, [(new, context)] or decode contexts, decode steps, seconds from the
        # start of the scheduler turn to the end of the iteration) -- calibration fits overheads on it
        self.iteration_log: list[tuple[str, list, int, float]] = []
        self._turn_start = 0.0
        self.cuda = model.device.type == "cuda"

    # ----- ops ----------------------------------------------------------------------------------
    def _ack(self, op: Any) -> None:
        assert op.op_id in self.executor.acked, f"{op} acknowledged before its copy finished"
        self.acks.append((op.op_id, self.clock()))
        self.engine.complete_op(op, self.clock())

    def start_ops(self) -> None:
        """Launch every queued op; Free completes at once. Acks may queue more (prefetch slots)."""
        while True:
            ops = self.engine.take_ops()
            if not ops:
                return
            for op in ops:
                if self.executor.start(op):
                    self._ack(op)

    def poll_ops(self) -> bool:
        done = self.executor.poll()
        for op in done:
            self._ack(op)
        if done:
            self.start_ops()
        return bool(done)

    # ----- the loop -----------------------------------------------------------------------------
    def run(self) -> None:
        stream_ctx = torch.cuda.stream(torch.cuda.Stream(self.model.device)) if self.cuda else None
        if stream_ctx is not None:
            torch.cuda.synchronize(self.model.device)  # weights/KV pool made on other streams are ready
            stream_ctx.__enter__()  # compute runs on its own (non-blocking) stream
        try:
            while self.driver.pending:
                self._turn_start = self.clock()
                self.driver.advance(self.clock())
                self.poll_ops()
                self.start_ops()
                it = self.engine.step(self.clock())
                self.start_ops()
                if it is None:
                    self._idle()
                    continue
                self._execute(it)
                self.start_ops()
                if self.check_invariants:
                    self.engine.cache.check_invariants()
                    self.store.check(list(self.engine.cache.tree.walk()))
            for op in self.executor.drain():
                self._ack(op)
        finally:
            if stream_ctx is not None:
                stream_ctx.__exit__(None, None, None)

    def _idle(self) -> None:
        nxt = self.driver.next_event_s()
        if nxt is None and not self.executor.in_flight():
            raise Stalled(
                f"stalled at t={self.clock():.3f}s with {self.driver.pending} invocations unfinished "
                f"(nothing runnable, no copy in flight, no arrival due)"
            )
        wait = 0.05 if nxt is None else max(0.0, nxt - self.clock())
        self.executor.wait_any(min(wait, 0.05))

    def _execute(self, it: Any) -> None:
        start = self.clock()
        self.iterations += 1
        if it.blocking_loads:
            for op in it.blocking_loads:
                self.executor.start(op)
            self.executor.wait_ops(it.blocking_loads)
            self.blocking_load_wait_s += self.clock() - start
        if it.prefill:
            shape = [(c.new_tokens, c.context_tokens) for c in it.prefill]
            finished, now = self._prefill(it)
            label, steps = "prefill", 0
        else:
            shape = list(it.decode_contexts)
            finished, now, steps = self._decode(it)
            label = "decode"
        self.iteration_log.append((label, shape, steps, now - min(self._turn_start, start)))
        self.timeline.append(("gpu", start, now, label))
        self.busy_s += now - start
        self.driver.on_finished(finished, now)

    # ----- prefill --------------------------------------------------------------------------------
    def _prefill(self, it: Any) -> tuple[list[Any], float]:
        ids: list[int] = []
        seqs: list[Seq] = []
        for chunk in it.prefill:
            r: RealRequest = chunk.request
            if r.kv is None:
                r.kv = self.model.new_kv(r.prompt_tokens + r.output_tokens)
                path = list(r.node.path_to_root())[::-1] if r.node is not None else []
                got = self.store.gather(path, r.kv)
                assert got == r.cached_tokens == chunk.context_tokens, (got, r.cached_tokens, chunk.context_tokens)
            ids.extend(r.tokens[chunk.context_tokens : chunk.context_tokens + chunk.new_tokens])
            seqs.append(Seq(r.kv, chunk.context_tokens, chunk.new_tokens))
        tokens = self.model.greedy(self.model.forward(ids, seqs))
        for chunk, tok in zip(it.prefill, tokens):
            if chunk.is_last:
                chunk.request.generated.append(tok)
        now = self.clock()
        finished = self.engine.finish(it, now)
        for chunk in it.prefill:
            if chunk.is_last:
                self._fill(chunk.request.tokens, chunk.request.kv)
        self._release(finished)
        return finished, now

    # ----- decode ---------------------------------------------------------------------------------
    def _decode(self, it: Any) -> tuple[list[Any], float, int]:
        reqs: list[RealRequest] = it.decode
        done = 0
        for k in range(it.decode_steps):
            seqs = [Seq(r.kv, r.prompt_tokens + len(r.generated) - 1, 1) for r in reqs]
            tokens = self.model.greedy(self.model.forward([r.generated[-1] for r in reqs], seqs))
            for r, tok in zip(reqs, tokens):
                r.generated.append(tok)
            done += 1
            if k + 1 < it.decode_steps and self._interrupted():
                break
        self.decode_steps += done
        now = self.clock()
        finished = self.engine.finish(it, now, decode_steps_done=done)
        self._release(finished)
        return finished, now, done

    def _interrupted(self) -> bool:
        """Something for the scheduler happened: an arrival is due or a copy finished."""
        if self.driver.due(self.clock()):
            return True
        return any(q and q[0].done() for q in self.executor.pending.values())

    # ----- KV of new tree nodes -------------------------------------------------------------------
    def _release(self, finished: list[Any]) -> None:
        for r in finished:
            last = r.prompt_tokens + r.output_tokens - 1  # the last output token is never fed back
            r.kv[:, :, :, last].zero_()
            self._fill(r.tokens + r.inserted_output_ids, r.kv)
            r.kv = None

    def _fill(self, tokens: list[int], buf: torch.Tensor) -> None:
        """Walk the tree along ``tokens``; every node the core holds on the GPU without KV in the
        store (just inserted, or recomputed instead of loaded) takes its slice of ``buf``."""
        tree = self.engine.cache.tree
        node, pos = tree.root, 0
        limit = min(len(tokens), buf.shape[3])
        while pos < limit:
            child = node.children.get(tree.child_key(tokens, pos))
            if child is None or child.tokens != tokens[pos : pos + len(child)]:
                break
            if child.gpu and child.node_id not in self.store.gpu:
                self.store.fill_gpu(child, buf, pos)
            pos += len(child)
            node = child


def make_clock() -> Any:
    t0 = time.perf_counter()
    return lambda: time.perf_counter() - t0
