"""Cumulative end times of back-to-back decode steps, one float at a time, for
``harness.cost_model.CostModel.decode_run_times_s``.

Each function performs the same float operations in the same order as the cost model's numpy
expression (per step, then a sequential cumulative sum, which is what ``np.cumsum`` does), so both
give bit-identical times (tested). They make no arrays: for the usual decode run of tens of steps the
dozen small numpy calls cost more than the arithmetic (~15% of a Mooncake fleet's simulation).
Compiled with the core (``kvflow.source_digest.COMPILED_EXTRAS``).
"""

from __future__ import annotations

import kvflow  # noqa: F401  (its import checks a compiled build; this module is compiled with it)


def linear_ends_s(
    fixed_s: float, per_ctx_token_s: float, ctx0: float, batch: int, steps: int, after_s: float
) -> list[float]:
    """Measured decode: step k takes ``fixed_s + per_ctx_token_s * (ctx0 + batch * k)``, then ``after_s``."""
    ends: list[float] = []
    t = 0.0
    for k in range(steps):
        t += fixed_s + per_ctx_token_s * (ctx0 + batch * float(k)) + after_s
        ends.append(t)
    return ends


def roofline_ends_s(
    lead_s: float,
    matmul_flops: float,
    attn_flops_per_ctx: float,
    weight_bytes: float,
    kv_bytes_per_ctx: float,
    peak_flops: float,
    bytes_per_s: float,
    overhead_s: float,
    ctx0: float,
    batch: int,
    steps: int,
    after_s: float,
) -> list[float]:
    """Roofline decode: step k takes ``lead_s + max((matmul_flops + a ctx) / peak, (weight_bytes +
    kv ctx) / bw) + overhead_s``. One max over the whole step: ``lead_s`` 0, ``matmul_flops`` the
    batch's, ``weight_bytes`` the weights; ``mixed_step: sum``: ``lead_s`` the weight pass, the
    other two 0 (adding 0.0 changes no float, so both keep the numpy form's values)."""
    ends: list[float] = []
    t = 0.0
    for k in range(steps):
        ctx = ctx0 + batch * float(k)
        flops_s = (matmul_flops + attn_flops_per_ctx * ctx) / peak_flops
        bytes_s = (weight_bytes + kv_bytes_per_ctx * ctx) / bytes_per_s
        t += lead_s + max(flops_s, bytes_s) + overhead_s + after_s
        ends.append(t)
    return ends
