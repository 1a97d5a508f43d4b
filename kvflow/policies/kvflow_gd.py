"""kvflow_gd: the cost-aware policy with GreedyDual aging (Cao & Irani, USENIX ITS 1997).

Rule: priority = inflation level at the node's last access + its expected-reuse value
(``kvflow_cost``); each eviction raises the inflation level to the victim's priority. Recency then
decides among nodes of similar value, so conversations that an agent keeps extending (ChatDev)
stay cached as under LRU, while outputs and finished workflows still go first. The cost: on long
fixed cycles (many concurrent sequential workflows) aging lets recency override the step-based
value and it loses KVFlow's advantage there (docs/results.md has both measurements).
"""

from __future__ import annotations

from kvflow.policies.kvflow_cost import KVFlowCostPolicy


class KVFlowGreedyDualPolicy(KVFlowCostPolicy):
    name = "kvflow_gd"
    aging_by_default = True  # a class setting, not an __init__ that forwards **kwargs (a compiled core mis-binds those)
