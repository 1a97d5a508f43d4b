"""kvflow: the policy core (radix tree, step graph, eviction policies, cache manager, scheduler).

Pure Python and clock-free: no simpy, torch, files or wall clock. Backends (``sim/``, ``real/``)
feed time in and take ops out. See docs/architecture.md.
"""

from kvflow.cache import CacheConfig, KVCacheManager
from kvflow.engine import Engine, EngineConfig, Iteration, PrefillChunk, Request
from kvflow.ops import Free, Load, Offload, Op
from kvflow.policies import POLICY_NAMES, Policy, make_policy
from kvflow.radix import InFlight, MatchResult, RadixNode, RadixTree, Tier
from kvflow.step_graph import INF, StepGraph

__all__ = [
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
