"""Eviction policies: one small class per file; each maps a node to a sort key (lowest evicted first).

Adding a policy = one file here (copy ``lru.py``) + one ``conf/policy/<name>.yaml``.
"""

from __future__ import annotations

import importlib
from typing import Any

_REGISTRY = {
    "lru": "kvflow.policies.lru:LRUPolicy",
    "kvflow": "kvflow.policies.kvflow:KVFlowPolicy",
    "oracle": "kvflow.policies.oracle:OraclePolicy",
    "kvflow_cost": "kvflow.policies.kvflow_cost:KVFlowCostPolicy",
    "kvflow_gd": "kvflow.policies.kvflow_gd:KVFlowGreedyDualPolicy",
}
POLICY_NAMES = tuple(_REGISTRY)


def make_policy(name: str, **kwargs: Any) -> Any:
    """Instantiate a policy by name, or by ``module:Class`` path for out-of-tree policies."""
    target = _REGISTRY.get(name, name if ":" in name else None)
    if target is None:
        raise ValueError(f"unknown policy '{name}'; valid: {', '.join(POLICY_NAMES)}")
    module_name, cls_name = target.split(":")
    return getattr(importlib.import_module(module_name), cls_name)(**kwargs)
