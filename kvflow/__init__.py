"""kvflow: the policy core (radix tree, step graph, eviction policies, cache manager, scheduler).

Pure Python and clock-free: no simpy, torch, files or wall clock. Backends (``sim/``, ``real/``)
feed time in and take ops out. See docs/architecture.md. An optional mypyc build of the same
source runs faster (``python -m harness.compiled_core``); ``COMPILED`` says which one runs.
"""

from kvflow.source_digest import check_compiled_build

COMPILED = check_compiled_build()  # True: the mypyc build of this exact source runs (harness.compiled_core)

from kvflow.cache import CacheConfig, KVCacheManager  # noqa: E402
from kvflow.engine import Engine, EngineConfig, Iteration, PrefillChunk, Request  # noqa: E402
from kvflow.ops import Free, Load, Offload, Op  # noqa: E402
from kvflow.policies import POLICY_NAMES, Policy, make_policy  # noqa: E402
from kvflow.radix import InFlight, MatchResult, RadixNode, RadixTree, Tier  # noqa: E402
from kvflow.step_graph import INF, StepGraph  # noqa: E402

__all__ = [
    "COMPILED",
    "CacheConfig",
    "Engine",
    "EngineConfig",
    "Free",
    "INF",
    "InFlight",
    "Iteration",
    "KVCacheManager",
    "Load",
    "MatchResult",
    "Offload",
    "Op",
    "POLICY_NAMES",
    "Policy",
    "PrefillChunk",
    "RadixNode",
    "RadixTree",
    "Request",
    "StepGraph",
    "Tier",
    "make_policy",
]
