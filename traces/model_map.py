"""``workload.model_map``: what a single-model simulation does with each recorded call's model.

A trace imported from a multi-model log (Weka sessions: Opus, Sonnet and Haiku calls in one
session) is simulated on one model. Per recorded model name (``"*"``: every other name):
``keep`` (the default) serves the call as if the simulated model had made it, sharing prefixes
with every other kept call; ``separate`` serves it but gives its prompt a namespace of its own, so
it shares KV only with calls of the same recorded model (another model's KV is not reusable);
``drop`` removes the call: its dependents wait on its dependencies instead, and its recorded
gap and service time are added to their gap (the session's recorded clock keeps its length).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from traces.schema import Invocation, Segment, Trace

__all__ = ["MODEL_ACTIONS", "apply_model_map"]

MODEL_ACTIONS = ("keep", "separate", "drop")


def apply_model_map(trace: Trace, model_map: Mapping[str, Any] | None) -> Trace:
    """The trace with ``model_map`` applied (the same object when nothing changes); ValueError
    naming ``workload.model_map.<model>`` for an unknown action."""
    if not model_map:
        return trace
    for name, action in model_map.items():
        if action not in MODEL_ACTIONS:
            raise ValueError(f"workload.model_map.{name}: {action!r} is not one of {', '.join(MODEL_ACTIONS)}")
    default = str(model_map.get("*", "keep"))

    def action_of(inv: Invocation) -> str:
        return str(model_map.get(inv.model, default)) if inv.model else "keep"

    if all(action_of(inv) == "keep" for inv in trace.invocations):
        return trace
    kept: list[Invocation] = []
    dropped: dict[str, tuple[list[str], float]] = {}  # id -> (its live deps, recorded time it took)
    for inv in trace.invocations:
        deps, extra_s = _live_deps(inv.deps, dropped)
        action = action_of(inv)
        if action == "drop":
            dropped[inv.id] = (deps, extra_s + inv.delay_s + (inv.service_s or 0.0))
            continue
        segments = _namespaced(inv.segments, inv.model) if action == "separate" else inv.segments
        kept.append(replace(inv, deps=deps, delay_s=inv.delay_s + extra_s, segments=segments))
    meta = dict(trace.meta)
    meta["model_map"] = {str(k): str(v) for k, v in model_map.items()}
    return Trace(meta, trace.workflows, kept)


def _live_deps(deps: list[str], dropped: Mapping[str, tuple[list[str], float]]) -> tuple[list[str], float]:
    """Dependencies with dropped calls replaced by theirs, and the longest recorded time dropped."""
    out: list[str] = []
    extra_s = 0.0
    for dep in deps:
        if dep in dropped:
            sub, took_s = dropped[dep]
            extra_s = max(extra_s, took_s)
            out += [d for d in sub if d not in out]
        elif dep not in out:
            out.append(dep)
    return out, extra_s


def _namespaced(segments: list[Segment], model: str) -> list[Segment]:
    """Shared and block keys prefixed by the model: equal prompts of two models get different tokens."""
    out = []
    for seg in segments:
        if seg.kind in ("shared", "block"):
            seg = Segment(seg.kind, f"{model}::{seg.key}", seg.n_tokens, seg.ids)
        out.append(seg)
    return out
