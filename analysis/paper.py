"""The KVFlow paper's reported speedups (section 3 of the paper), matched to simulated settings so
a report can print the paper's number beside ours wherever the settings agree.

A reference matches a setting when every field it names agrees: workload generator, hardware (by
prefix: ``a10g`` also matches ``a10g_paper``), model and token lengths. Fields the paper leaves
open (the ablation's lengths, the concurrency sweep's point of maximum gain) are left unmatched.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

SOURCE = "KVFlow, arXiv 2507.07400 (section 3 of the paper)"


@dataclass(frozen=True)
class Reference:
    setting: str
    policy: str
    baseline: str
    speedup: float
    match: dict[str, Any] = field(default_factory=dict)
    qualifier: str = ""  # "", "up to", "avg", "ablation"

    def text(self) -> str:
        if self.qualifier == "up to":
            return f"up to {self.speedup:.2f}x"
        suffix = f" ({self.qualifier})" if self.qualifier else ""
        return f"{self.speedup:.2f}x{suffix}"


_A10G = {
    "generator": "sequential",
    "hardware": "a10g",
    "model": "llama-3.1-8b",
    "fixed_tokens": 8192,
    "dynamic_tokens": 32,
    "output_tokens": 32,
}
_H100 = {
    "generator": "sequential",
    "hardware": "h100",
    "model": "qwen2.5-32b",
    "fixed_tokens": 4096,
    "dynamic_tokens": 32,
    "output_tokens": 32,
}
_H100_ANY = {"generator": "sequential", "hardware": "h100", "model": "qwen2.5-32b"}

REFERENCES: tuple[Reference, ...] = (
    Reference("single, A10G, Llama-3.1-8B, 8192/32/32", "kvflow", "hicache", 1.83, _A10G),
    Reference("single, A10G, Llama-3.1-8B, 8192/32/32", "kvflow", "sglang", 2.91, _A10G),
    Reference("single, H100, Qwen2.5-32B, 4096/32/32", "kvflow", "hicache", 1.24, _H100),
    Reference("single, H100, Qwen2.5-32B, 4096/32/32", "kvflow", "sglang", 1.42, _H100),
    Reference(
        "single, average at 8192 fixed",
        "kvflow",
        "sglang",
        1.30,
        {"generator": "sequential", "fixed_tokens": 8192},
        "avg",
    ),
    Reference(
        "single, average at 4096 fixed",
        "kvflow",
        "sglang",
        1.22,
        {"generator": "sequential", "fixed_tokens": 4096},
        "avg",
    ),
    Reference("ablation on H100: eviction only", "kvflow_evict_only", "hicache", 1.11, _H100_ANY, "ablation"),
    Reference("ablation on H100: eviction + prefetch", "kvflow", "hicache", 1.29, _H100_ANY, "ablation"),
    Reference("concurrency", "kvflow", "hicache", 2.19, {"generator": "concurrent"}, "up to"),
    Reference("concurrency", "kvflow", "sglang", 1.25, {"generator": "concurrent"}, "up to"),
    Reference(
        "HiCache at 1024 fixed x 64 workflows",
        "hicache",
        "sglang",
        0.57,
        {"generator": "concurrent", "fixed_tokens": 1024, "workflows": 64},
    ),
    Reference("PEER-style", "kvflow", "hicache", 1.08, {"generator": "peer_loop"}),
    Reference("PEER-style", "kvflow", "sglang", 1.12, {"generator": "peer_loop"}),
)


def _agrees(key: str, want: Any, have: Any) -> bool:
    if have is None:
        return False
    if key == "hardware":
        return str(have).lower().startswith(str(want))
    if isinstance(want, (int, float)):
        try:
            return float(have) == float(want)
        except (TypeError, ValueError):
            return False
    return str(have).lower() == str(want)


def matches(setting: Mapping[str, Any], policy: str, baseline: str) -> list[Reference]:
    """The paper's numbers for ``policy`` over ``baseline`` at this setting (context columns)."""
    return [
        ref
        for ref in REFERENCES
        if ref.policy == policy
        and ref.baseline == baseline
        and all(_agrees(k, v, setting.get(k)) for k, v in ref.match.items())
    ]
