"""In-memory trace model: workflow definitions plus invocations made of prompt segments.

A prompt is a list of segments instead of token ids so a trace stays small; `Trace.prompt_tokens`
expands segments into token ids deterministically (see `traces.tokens`).
"""

from __future__ import annotations

from array import array
from dataclasses import dataclass, field
from typing import Any

from traces.tokens import TokenSource

FORMAT_NAME = "kvflow-trace"
FORMAT_VERSION = 1
SEGMENT_KINDS = ("shared", "unique", "tokens", "block")
DEFAULT_BLOCK_TOKENS = 512
# Legacy header key: files written before `model` / `service` moved onto the invocation lines kept
# them here, keyed by client and step: {"models": [name...], "calls": {client: [[step, model index
# or -1, service_s or null], ...]}}. Still read (`Trace` applies it and drops it); never written.
INV_EXTRA_KEY = "inv_extra"


class TraceError(ValueError):
    """A problem in a trace file; str() is "FILE:LINE: problem" so tools can print it as is."""

    def __init__(self, path: str, line: int, problem: str) -> None:
        super().__init__(f"{path}:{line}: {problem}")
        self.path, self.line, self.problem = path, line, problem


@dataclass(frozen=True, slots=True)
class Segment:
    """One piece of a prompt.

    kind "shared": named tokens, identical wherever the name (key) appears; a shorter use takes
    the first n_tokens of the name's token stream. "unique": fresh tokens for this invocation
    (key is an optional label). "tokens": explicit ids in `ids`. "block": a hash-id block
    (Mooncake); key is the hash id, a partial block uses the block's first n_tokens.
    """

    kind: str
    key: str | int = ""
    n_tokens: int = 0
    ids: tuple[int, ...] | None = None


@dataclass(slots=True)
class Invocation:
    """One LLM call of one workflow instance (client)."""

    id: str
    client_id: str
    workflow: str
    agent_id: str
    step: int
    segments: list[Segment]
    fixed_segments: int
    output_tokens: int
    deps: list[str] = field(default_factory=list)
    arrival_s: float | None = None
    delay_s: float = 0.0
    model: str = ""  # the model that served the recorded call ("" = unknown / the trace's one model)
    service_s: float | None = None  # recorded time the provider took to answer (None = not recorded)


@dataclass(slots=True)
class WorkflowDef:
    """A workflow's agents and its Agent Step Graph (StepGraph dict format, or None if unknown)."""

    id: str
    agents: list[str]
    graph: dict[str, Any] | None = None


class Trace:
    """Workflows, invocations in topological order, and provenance metadata."""

    def __init__(
        self,
        meta: dict[str, Any],
        workflows: dict[str, WorkflowDef],
        invocations: list[Invocation],
    ) -> None:
        self.meta = meta
        self.workflows = workflows
        self.invocations = invocations
        _sync_inv_extra(self)
        self._tokens = TokenSource(self.seed, self.block_tokens)

    def __getstate__(self) -> dict[str, Any]:
        """Copies and pickles (sim.beyond deep-copies traces, sweeps pickle them) leave out the token
        source: a cache rebuilt from the seed (and compiled with the core, where it cannot be copied)."""
        state = dict(self.__dict__)
        state.pop("_tokens", None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._tokens = TokenSource(self.seed, self.block_tokens)

    @property
    def seed(self) -> int:
        return int(self.meta.get("seed", 0))

    @property
    def block_tokens(self) -> int:
        return int(self.meta.get("block_tokens", DEFAULT_BLOCK_TOKENS))

    def prompt_tokens(self, inv: Invocation) -> list[int]:
        """Full prompt token ids; identical across processes and runs for the same trace."""
        out: list[int] = []
        for i, seg in enumerate(inv.segments):
            out.extend(self._tokens.segment(seg, inv.id, i))
        return out

    def prompt_array(self, inv: Invocation) -> array:
        """``prompt_tokens`` as an ``array(TOKEN_TYPECODE)`` (same ids). The simulator's radix tree slices and
        compares prompts all the time; on machine integers that is a memcpy/memcmp instead of
        reference-count traffic over thousands of int objects."""
        return self._tokens.prompt_array(inv.segments, inv.id)

    def fixed_tokens(self, inv: Invocation) -> int:
        return sum(s.n_tokens for s in inv.segments[: inv.fixed_segments])

    def prompt_len(self, inv: Invocation) -> int:
        return sum(s.n_tokens for s in inv.segments)

    def by_id(self) -> dict[str, Invocation]:
        return {inv.id: inv for inv in self.invocations}

    def __repr__(self) -> str:
        return f"Trace({len(self.workflows)} workflows, {len(self.invocations)} invocations, seed={self.seed})"


def _sync_inv_extra(trace: Trace) -> None:
    """A legacy header table (older files) fills model/service_s of invocations that carry none; the
    table is then dropped from the header, so writing the trace puts them on the invocation lines."""
    if INV_EXTRA_KEY not in trace.meta:
        return
    table = trace.meta[INV_EXTRA_KEY]
    trace.meta = {k: v for k, v in trace.meta.items() if k != INV_EXTRA_KEY}
    if not any(inv.model or inv.service_s is not None for inv in trace.invocations):
        _apply_extra_table(table, trace.invocations)


def _apply_extra_table(table: Any, invs: list[Invocation]) -> None:
    """Fill model/service_s from a header table; ValueError naming the key when it is malformed."""
    try:
        models = table["models"]
        rows = {
            (client, int(step)): (int(m), s) for client, entries in table["calls"].items() for step, m, s in entries
        }
        for inv in invs:
            m, service = rows.get((inv.client_id, inv.step), (-1, None))
            inv.model = models[m] if m >= 0 else ""
            inv.service_s = None if service is None else float(service)
    except (KeyError, TypeError, ValueError, IndexError, AttributeError):
        raise ValueError(
            f"header.{INV_EXTRA_KEY} is malformed: expected "
            '{"models": [...], "calls": {client: [[step, model index, service_s], ...]}}'
        ) from None
