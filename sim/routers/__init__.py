"""Routers of a simulated fleet (``cluster.router``; docs/fleet.md): one small class per module."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sim.routers.base import ReplicaView, Router, least_loaded
from sim.routers.kv_aware import KVAwareRouter
from sim.routers.least_loaded import LeastLoadedRouter
from sim.routers.prefix_aware import PrefixAwareRouter
from sim.routers.round_robin import RoundRobinRouter
from sim.routers.session_affinity import SessionAffinityRouter
from sim.routers.workflow_aware import WorkflowAwareRouter

__all__ = ["ROUTERS", "ReplicaView", "Router", "least_loaded", "make_router"]

ROUTERS: dict[str, type[Router]] = {
    cls.name: cls
    for cls in (
        RoundRobinRouter,
        LeastLoadedRouter,
        SessionAffinityRouter,
        PrefixAwareRouter,
        KVAwareRouter,
        WorkflowAwareRouter,
    )
}


def make_router(name: str, options: Mapping[str, Any] | None = None) -> Router:
    if name not in ROUTERS:
        raise ValueError(f"cluster.router={name!r}: unknown router; valid: {', '.join(ROUTERS)}")
    return ROUTERS[name](options)
