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

    def __init__(
        self,
        gain_s_per_token: float = 1.0,
        prior_reuse: float = 0.5,
        prior_weight: float = 4.0,
        decay: float = 0.0,
        aging: bool = True,
    ) -> None:  # the parameters spelled out: a compiled core mis-binds **kwargs passed on to __init__
        super().__init__(gain_s_per_token, prior_reuse, prior_weight, decay, aging)
