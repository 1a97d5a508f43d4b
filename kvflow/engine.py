"""The serving-engine scheduler, clock-free: both the simulator and the real backend drive it.

Shape of SGLang's scheduler: a waiting queue (FCFS), continuous batching, chunked prefill under a
token budget per iteration, admission only when the request's KV (prompt + output) fits, and
decode until each request's output length. A prefill iteration runs when any prefill is
schedulable, otherwise a decode iteration, which the backend may repeat ``decode_steps`` times
back to back. Status-aware scheduling (KVFLOW.md 2.6): a request whose prefix is still being
copied is skipped and others run; with ``load_then_dispatch`` a request admitted with a CPU-only
prefix (nobody prefetched it) waits, its memory reserved, while that prefix loads in the background,
and is dispatched once it is on the GPU (instead of HiCache's load inside its own prefill).
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import overload

from mypy_extensions import mypyc_attr

from kvflow.cache import KVCacheManager
from kvflow.ops import Load, Op
from kvflow.prefetch import Prefetcher, make_prefetcher
from kvflow.radix import InFlight, RadixNode
from kvflow.step_graph import INF
from kvflow.step_inference import TransitionModel

_output_ids = itertools.count(1)
OUTPUT_TOKEN_BASE = 1 << 40  # generated tokens get ids no prompt uses
NO_AGENT = ("", "-")  # agent ids that mean "no workflow information"
PREFETCH_MODES = ("next_step", "deadline", "resume")


@dataclass
class EngineConfig:
    chunk_tokens: int = 8192  # prefill token budget per iteration (SGLang chunked_prefill_size)
    max_running_requests: int = 256
    load_back: bool = True  # False: GPU-only SGLang; a CPU copy is ignored and the prefix recomputed
    prefetch: bool = False  # KVFlow proactive prefetch of next-step agents
    status_aware: bool = True  # skip (not block on) requests whose prefix is in flight
    load_then_dispatch: bool = False  # load an admitted request's CPU prefix in the background, then dispatch it
    infer_steps: bool = False  # learn the step graph from observed transitions (no declared graph)
    infer_min_observations: int = 3  # transitions seen before a prediction is trusted
    release_finished: bool = False  # a finished workflow's nodes become the first to evict
    prefetch_mode: str = "next_step"  # or "deadline": earliest predicted start first, lead by copy time;
    #                                  or "resume": paused sessions before their predicted next call
    prefetch_lookahead_steps: int = 2  # deadline mode: how many steps ahead to consider
    h2d_gbps: float = 0.0  # deadline mode: copy bandwidth for the lead time (0 = unknown: next_step)
    load_back_threshold_tokens: int = 0  # a CPU-only prefix shorter than this is recomputed (SGLang: 10)
    load_mem_quota: bool = False  # a load the GPU has no room for is skipped and the prefix recomputed
    # what counts as a hit (SGLang 0.4, docs/engines.md; all False: one hit per admission)
    count_match_hits: bool = False  # every admission attempt's match counts, admitted or not
    count_insert_hits: bool = False  # inserts count the nodes they walk; a chunk's insert re-matches
    chunk_inserts: bool = False  # each non-last prefill chunk's KV joins the tree at its end

    def __post_init__(self) -> None:
        if self.chunk_tokens < 1 or self.max_running_requests < 1:
            raise ValueError("chunk_tokens and max_running_requests must be >= 1")
        if self.prefetch_mode not in PREFETCH_MODES:
            raise ValueError(f"prefetch_mode '{self.prefetch_mode}'; valid: {', '.join(PREFETCH_MODES)}")


@mypyc_attr(allow_interpreted_subclasses=True)  # backends extend it (real.driver.RealRequest)
@dataclass(eq=False, slots=True)
class Request:
    request_id: str
    client_id: str
    agent_id: str
    tokens: Sequence[int]  # a list, or an array("i") (the simulator: cheap slices and compares)
    fixed_tokens: int
    output_tokens: int
    arrival_s: float = 0.0
    app_id: str = ""  # application (workflow type): inferred step graphs are shared across its clients
    # scheduler state
    state: str = "new"  # new -> waiting -> prefill -> decode -> finished
    cached_tokens: int = 0  # prefix on the GPU (hit or loaded) at admission
    prefilled_tokens: int = 0  # of the prompt, cached included
    generated_tokens: int = 0
    reserved_tokens: int = 0  # GPU tokens reserved and not yet owned by tree nodes
    node: RadixNode | None = None  # deepest locked node
    known_tokens: int = 0  # of the prompt, on the locked path (the admission's match, chunk inserts)
    skipped_since_s: float | None = None
    # metrics
    admit_s: float | None = None
    first_token_s: float | None = None
    finish_s: float | None = None
    hit_gpu_tokens: int = 0
    loaded_cpu_tokens: int = 0
    recomputed_tokens: int = 0
    loaded_bytes: int = 0
    stalled_s: float = 0.0
    # derived once (the scheduler reads them many times per request)
    prompt_tokens: int = field(init=False)
    # (client, agent) key of the workflow hints; None for requests without an agent ("" or the
    # traces' placeholder "-", e.g. Mooncake)
    user: tuple[str, str] | None = field(init=False)

    def __post_init__(self) -> None:
        self.prompt_tokens = len(self.tokens)
        self.user = (self.client_id, self.agent_id) if self.agent_id not in NO_AGENT else None

    @property
    def context_tokens(self) -> int:
        return self.prompt_tokens + self.generated_tokens

    def output_ids(self) -> Sequence[int]:
        """Synthetic ids for generated tokens: unique per request, never equal to a prompt token.
        A ``range``, not a list: the tree only slices, measures and keys it (no prompt can match
        these ids), and materialising hundreds of ints per request was a visible simulator cost."""
        base = OUTPUT_TOKEN_BASE + next(_output_ids) * (1 << 24)
        return range(base, base + self.output_tokens)


@dataclass
class PrefillChunk:
    request: Request
    new_tokens: int
    context_tokens: int  # tokens already in KV before this chunk
    is_last: bool


@dataclass
class Iteration:
    prefill: list[PrefillChunk] = field(default_factory=list)
    decode: list[Request] = field(default_factory=list)
    decode_contexts: list[int] = field(default_factory=list)
    decode_steps: int = 0
    blocking_loads: list[Load] = field(default_factory=list)

    @property
    def is_prefill(self) -> bool:
        return bool(self.prefill)


class Engine:
    def __init__(self, cache: KVCacheManager, config: EngineConfig | None = None) -> None:
        self.cache = cache
        self._pending_ops = cache.pending_ops  # the same list object: has_ops reads it directly
        self.config = config or EngineConfig()
        self.waiting: deque[Request] = deque()
        self.prefilling: list[Request] = []
        self.loading: list[Request] = []  # admitted, their prefix loading (load_then_dispatch)
        self.decoding: list[Request] = []
        # client -> agent -> known steps-to-execution; the prefetcher reads this dict (updated in place)
        self.hints: dict[str, dict[str, float]] = {}
        self.declared_clients: set[str] = set()
        self.transitions = TransitionModel(self.config.infer_min_observations) if self.config.infer_steps else None
        self.prefetcher: Prefetcher = make_prefetcher(self.config, cache, self.hints, self.waiting)

    # ----- inputs ---------------------------------------------------------------------------
    def submit(self, request: Request, now_s: float) -> None:
        need = request.prompt_tokens + request.output_tokens
        if need > self.cache.config.gpu_capacity_tokens:
            raise ValueError(
                f"request {request.request_id} needs {need} KV tokens but the GPU holds "
                f"{self.cache.config.gpu_capacity_tokens}: it can never run"
            )
        if request.fixed_tokens > request.prompt_tokens or request.output_tokens < 1:
            raise ValueError(
                f"request {request.request_id}: fixed_tokens must be <= prompt length and output_tokens >= 1"
            )
        request.arrival_s, request.state = now_s, "waiting"
        self.waiting.append(request)
        self.cache.observe_prompt(request.user, request.tokens, request.fixed_tokens)
        if self.cache.sessions is not None:  # a session-aware policy: it may resume
            self.cache.session_submit(request.client_id, request.user, now_s)
        self.prefetcher.on_submit(request, now_s)
        if self.transitions is not None and request.user is not None:
            self.transitions.observe(request.app_id, request.client_id, request.agent_id)
            if request.client_id not in self.declared_clients:  # a declared graph wins
                steps: Mapping[str, float | None] | None = self.transitions.steps_from(request.app_id, request.agent_id)
                if steps is None:  # not confident: forget this client's hints, rank it by LRU
                    steps = {agent: None for agent in self.hints.get(request.client_id, {})}
                self._apply_hints(request.client_id, steps)

    def set_hints(self, client_id: str, steps: Mapping[str, float | None], now_s: float) -> None:
        """Declared steps-to-execution for a client (None = unknown), from its workflow's graph:
        re-rank its cache entries and maybe prefetch."""
        self.declared_clients.add(client_id)
        self._apply_hints(client_id, steps)

    def _apply_hints(self, client_id: str, steps: Mapping[str, float | None]) -> None:
        known = {a: v for a, v in steps.items() if v is not None}
        self.hints[client_id] = known
        self.cache.set_hints(client_id, steps)
        self.prefetcher.on_hints(client_id)

    def finish_client(self, client_id: str, now_s: float) -> None:
        """A workflow instance ended: with ``release_finished`` its private nodes go first."""
        if self.cache.sessions is not None:
            self.cache.session_end(client_id, now_s)
        self.prefetcher.on_client_end(client_id, now_s)
        if not self.config.release_finished:
            return
        agents = {agent for (client, agent) in self.cache.tree.user_nodes if client == client_id}
        agents |= set(self.hints.get(client_id, {}))
        self.hints.pop(client_id, None)
        self.cache.set_hints(client_id, {agent: INF for agent in agents})

    def take_ops(self) -> list[Op]:
        return self.cache.take_ops()

    @property
    def has_ops(self) -> bool:
        """Ops are queued for the backend (cheaper than ``take_ops`` when, as usual, none are)."""
        return bool(self._pending_ops)

    def complete_op(self, op: Op, now_s: float) -> None:
        """The backend finished an async op: its nodes flip tier, and a finished prefetch frees the
        prefetcher's slot (only prefetch loads concern it: no hook call per backup)."""
        self.cache.complete(op)
        if type(op) is Load and op.prefetch:
            self.prefetcher.on_prefetch_done(op)

    def next_wake_s(self) -> float | None:
        """When the engine wants to plan again with nothing else happening (a prefetch falls due);
        None: only on new input or a finished op. A backend idling should wake by then."""
        return self.prefetcher.wake_at_s()

    def has_work(self) -> bool:
        return bool(self.waiting or self.prefilling or self.decoding or self.loading)

    # ----- planning -------------------------------------------------------------------------
    def step(self, now_s: float) -> Iteration | None:
        """Plan the next iteration, or None when nothing can run until an op completes."""
        self.prefetcher.before_step(now_s)
        it = Iteration()
        budget = self.config.chunk_tokens
        if self.loading:
            self._dispatch_loaded(now_s)
        for request in self.prefilling:
            budget = self._add_chunk(it, request, budget)
        budget = self._admit(it, now_s, budget)
        if it.prefill:
            return it
        if self.decoding:
            it.decode = list(self.decoding)
            it.decode_contexts = [r.context_tokens for r in it.decode]
            it.decode_steps = min(r.output_tokens - r.generated_tokens for r in it.decode)
            return it
        return None

    def _add_chunk(self, it: Iteration, request: Request, budget: int) -> int:
        remaining = request.prompt_tokens - request.prefilled_tokens
        if budget <= 0 or remaining <= 0:
            return budget
        new = min(remaining, budget)
        it.prefill.append(PrefillChunk(request, new, request.prefilled_tokens, new == remaining))
        return budget - new

    def _dispatch_loaded(self, now_s: float) -> None:
        """Requests whose prefix finished loading join the prefill (load_then_dispatch)."""
        ready = [r for r in self.loading if not _loading(r.node)]
        for request in ready:
            self.loading.remove(request)
            self._dispatch(request, now_s)

    def _admit(self, it: Iteration, now_s: float, budget: int) -> int:
        running = len(self.prefilling) + len(self.decoding) + len(self.loading)
        skipped: list[Request] = []
        while self.waiting and budget > 0 and running < self.config.max_running_requests:
            request = self.waiting.popleft()
            outcome = self._try_admit(it, request, now_s)
            if outcome == "busy":
                if request.skipped_since_s is None:
                    request.skipped_since_s = now_s
                skipped.append(request)
                if not self.config.status_aware:
                    break  # FCFS head-of-line: wait for the copy
                continue
            if outcome == "no_memory":
                skipped.append(request)
                break
            running += 1
            if outcome == "admitted":
                budget = self._add_chunk(it, request, budget)
        self.waiting.extendleft(reversed(skipped))
        return budget

    def _try_admit(self, it: Iteration, request: Request, now_s: float) -> str:
        cache = self.cache
        # the last prompt token is always computed: its logits produce the first output token
        match = cache.tree.match(request.tokens, touch=False, max_tokens=request.prompt_tokens - 1)
        if any(n.inflight is not None for n in match.cpu_nodes):
            self._count_attempt(match.last_node)
            return "busy"
        cpu_run = match.cpu_nodes if self._loads_back(match.cpu_tokens) else []
        loaded = match.cpu_tokens if cpu_run else 0
        reserve = request.prompt_tokens - match.gpu_tokens - loaded + request.output_tokens
        cache.lock(match.gpu_node)
        granted = cache.alloc_gpu(reserve)
        loads = cache.load(cpu_run) if granted and cpu_run else []
        if granted and cpu_run and not loads and self.config.load_mem_quota:
            # SGLang's mem_quota: a load that does not fit is skipped and the prefix recomputed
            cache.release_gpu(granted)
            cpu_run, loaded, reserve = [], 0, reserve + loaded
            granted = cache.alloc_gpu(reserve)
        if not granted or (cpu_run and not loads):
            if granted:
                cache.release_gpu(granted)
            cache.unlock(match.gpu_node)
            self._count_attempt(match.last_node)
            return "no_memory"
        cache.touch_path(match.last_node)  # access times, hit counts, prefetch use, backups
        request.node = match.last_node if loads else match.gpu_node
        if request.node is not match.gpu_node:  # (the same node: its lock simply stays)
            cache.lock(request.node)  # before the unlock: the shared path never looks evictable
            cache.unlock(match.gpu_node)
        request.cached_tokens = request.prefilled_tokens = request.known_tokens = match.gpu_tokens + loaded
        request.hit_gpu_tokens = match.gpu_tokens
        request.loaded_cpu_tokens = loaded
        request.loaded_bytes = sum(op.bytes for op in loads) if loads else 0
        request.recomputed_tokens = request.prompt_tokens - request.cached_tokens
        request.reserved_tokens = reserve
        return self._enter(it, request, loads, now_s)

    def _enter(self, it: Iteration, request: Request, loads: list[Load], now_s: float) -> str:
        """An admitted request joins the prefill now (its CPU prefix, if any, loads inside this
        iteration, HiCache), or with ``load_then_dispatch`` once that prefix has loaded as a
        background op (KVFLOW.md 2.6: other requests run meanwhile)."""
        if loads and self.config.load_then_dispatch:
            self.cache.queue_ops(loads)
            request.state = "loading"
            if request.skipped_since_s is None:
                request.skipped_since_s = now_s
            self.loading.append(request)
            return "loading"
        it.blocking_loads.extend(loads)
        self._dispatch(request, now_s)
        return "admitted"

    def _dispatch(self, request: Request, now_s: float) -> None:
        request.state = "prefill"
        request.admit_s = now_s
        if request.skipped_since_s is not None:
            request.stalled_s += now_s - request.skipped_since_s
            request.skipped_since_s = None
        self.prefilling.append(request)

    def _count_attempt(self, last: RadixNode) -> None:
        """A match that admitted nothing still counts its hits in SGLang 0.4 (``count_match_hits``)."""
        if self.config.count_match_hits and last.parent is not None:
            self.cache.count_hits(last)

    def _loads_back(self, cpu_tokens: int) -> bool:
        """Load a CPU-only prefix of ``cpu_tokens`` back (else recompute it): load-back is on and the
        prefix reaches SGLang's ``load_back_threshold``."""
        return self.config.load_back and cpu_tokens > 0 and cpu_tokens >= self.config.load_back_threshold_tokens

    # ----- completion -----------------------------------------------------------------------
    def finish(self, it: Iteration, now_s: float, decode_steps_done: int | None = None) -> list[Request]:
        """Apply an executed iteration; returns the requests that finished in it."""
        for op in it.blocking_loads:
            self.cache.complete(op)
        finished: list[Request] = []
        for chunk in it.prefill:
            request = chunk.request
            request.prefilled_tokens += chunk.new_tokens
            if chunk.is_last:
                self._prompt_done(request, now_s)
                if request.generated_tokens >= request.output_tokens:
                    finished.append(request)
            elif self.config.chunk_inserts:
                self._chunk_done(request)
        steps = it.decode_steps if decode_steps_done is None else decode_steps_done
        if it.decode and not 1 <= steps <= it.decode_steps:
            raise ValueError(f"decode_steps_done must be in [1, {it.decode_steps}], got {steps}")
        for request in it.decode:
            request.generated_tokens += steps
            if request.generated_tokens >= request.output_tokens:
                finished.append(request)
        for request in finished:
            self._release(request, now_s)
        return finished

    def _chunk_done(self, request: Request) -> None:
        """A non-last prefill chunk ran (``chunk_inserts``, SGLang 0.4's ``cache_unfinished_req``): the
        prompt computed so far joins the tree, shareable and locked by the request."""
        cache = self.cache
        end = cache.tree.page_floor(request.prefilled_tokens)
        new = end - request.known_tokens
        if new <= 0:
            return
        counting = self.config.count_insert_hits
        node = cache.insert(
            request.tokens[:end],
            new,
            request.fixed_tokens,
            request.user,
            prompt_tokens=request.prompt_tokens,
            known_tokens=request.known_tokens,
            count_hits=counting,
        )
        if counting:
            cache.count_hits(node)  # cache_unfinished_req re-matches what it inserted
        request.reserved_tokens -= new  # cached, or released as a duplicate by the insert
        self._relock(request, node)
        request.known_tokens = cache.tree.depth_tokens(node)

    def _prompt_done(self, request: Request, now_s: float) -> None:
        """Prefill complete: the prompt's KV joins the tree (shareable at once) and the first
        output token exists."""
        self.prefilling.remove(request)
        prompt_reserved = request.reserved_tokens - request.output_tokens
        counting = self.config.count_insert_hits
        node = self.cache.insert(
            request.tokens,
            prompt_reserved,
            request.fixed_tokens,
            request.user,
            known_tokens=request.known_tokens,  # matched at admission (or inserted per chunk), locked since
            count_hits=counting,
        )
        if counting and request.output_tokens > 1:  # (one output token: the request ends here and
            self.cache.count_hits(node)  # only cache_finished_req inserts) cache_unfinished_req re-matches
        request.reserved_tokens = request.output_tokens
        self._relock(request, node)
        request.first_token_s = now_s
        request.generated_tokens = 1
        request.state = "decode"
        self.decoding.append(request)

    def _release(self, request: Request, now_s: float) -> None:
        self.decoding.remove(request)
        tree = self.cache.tree
        end = request.node
        counting = self.config.count_insert_hits and request.output_tokens > 1  # (else counted at prefill)
        if (
            end is not None
            and request.prompt_tokens % tree.page_size == 0
            and tree.depth_tokens(end) == request.prompt_tokens
        ):
            if counting:  # cache_finished_req's insert walks the prompt's nodes
                self.cache.count_hits(end)
            self.cache.extend(end, request.output_ids(), request.reserved_tokens, request.user)
        else:  # the prompt is not (all) in the tree: insert the whole sequence
            self.cache.insert(
                _PromptThenOutputs(request.tokens, request.output_ids()),
                request.reserved_tokens,
                request.fixed_tokens,
                request.user,
                prompt_tokens=request.prompt_tokens,
                known_tokens=tree.depth_tokens(end) if end is not None else 0,  # locked since prefill
                count_hits=counting,
            )
        if self.cache.sessions is not None:  # a session-aware policy: it may pause
            self.cache.session_finish(request.client_id, request.agent_id, request.prompt_tokens, now_s)
        self.prefetcher.on_finish(request, now_s)
        request.reserved_tokens = 0
        self._relock(request, None)
        request.finish_s = now_s
        request.state = "finished"

    def _relock(self, request: Request, node: RadixNode | None) -> None:
        if node is not None and request.node is not None:
            self.cache.tree.relock(request.node, node)
        elif node is not None:
            self.cache.lock(node)
        elif request.node is not None:
            self.cache.unlock(request.node)
        request.node = node


def _loading(node: RadixNode | None) -> bool:
    """A node of the path root..``node`` is still being loaded."""
    while node is not None and node.parent is not None:
        if node.inflight is InFlight.LOAD:
            return True
        node = node.parent
    return False


class _PromptThenOutputs(Sequence[int]):
    """A released request's prompt + output ids as one sequence without copying the prompt (a
    100K-token list per release cost more than the rest of the run): slices inside the prompt are
    the prompt's own (array) slices, the rest lists, so token values and node contents are as before."""

    __slots__ = ("prompt", "outputs", "n_prompt")

    def __init__(self, prompt: Sequence[int], outputs: Sequence[int]) -> None:
        self.prompt, self.outputs, self.n_prompt = prompt, outputs, len(prompt)

    def __len__(self) -> int:
        return self.n_prompt + len(self.outputs)

    @overload
    def __getitem__(self, index: int) -> int: ...

    @overload
    def __getitem__(self, index: slice) -> Sequence[int]: ...

    def __getitem__(self, index: int | slice) -> int | Sequence[int]:
        n = self.n_prompt
        if isinstance(index, slice):
            start, stop, step = index.indices(len(self))
            if step != 1:
                raise ValueError("step slices are not supported")
            if stop <= n:
                return self.prompt[start:stop]
            if start >= n:
                return list(self.outputs[start - n : stop - n])
            return [*self.prompt[start:n], *self.outputs[: stop - n]]
        if index < 0:
            index += len(self)
        return self.prompt[index] if index < n else self.outputs[index - n]
