"""Iteration and transfer times from a hardware profile and a model shape (every backend's setup:
the simulator runs on it; the real backend plans prefetch deadlines and the gain per token with it).

Two sources of coefficients (docs/cost_model.md):
- spec-derived (default): a roofline, time = max(FLOPs / (peak x compute_efficiency),
  bytes / (HBM bandwidth x memory_efficiency)) + a fixed per-iteration overhead, with FLOPs from
  REFERENCE_NUMBERS.md section 6;
- measured (``hardware.measured``, written by real/ calibration): explicit linear coefficients;
  each block present (prefill, decode, h2d, d2h) overrides the spec-derived formula for that part.

``scheduler_overhead_s`` (CPU-side time per iteration and per decode step, outside the kernels) is
added on top of either; ``mixed_step: sum`` times the roofline per kernel phase (GEMMs over every
token, then prefill attention, then decode attention) instead of one max over the whole step.
Both default to the model before they existed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from harness import step_times
from harness.engines import EngineModel, IdealEngine, load_engine
from harness.errors import SetupError
from harness.profile import OPTIONAL_MEASURED_KEYS, check_hardware, hardware_value
from kvflow import COMPILED
from kvflow.model_spec import ModelSpec

# decode runs up to this many steps take their times from harness.step_times (one float at a time);
# longer ones from numpy, which is cheaper per step than interpreted Python (compiled: always the loop)
LOOP_MAX_STEPS = 1 << 62 if COMPILED else 48

MIB = 1 << 20
COST_MODELS = ("builtin", "aiconfigurator")
DIRECTIONS = ("h2d", "d2h")


@dataclass(frozen=True)
class LinkSpec:
    """One PCIe direction: a fixed latency per copy plus bytes at an effective rate."""

    latency_s: float
    effective_gbps: float
    busy_factor: float = 1.0  # rate multiplier while the other direction is copying


def copy_link(
    hw: Mapping[str, Any], measured: Mapping[str, float] | None, direction: str, engine: EngineModel, model: ModelSpec
) -> LinkSpec:
    """One direction's copy cost. ``pcie_efficiency`` null (the default): the engine's data path,
    its rates capped by the profile's nominal link (``pcie_<dir>_gbps``); a number overrides the
    engine's rates with the one-knob model (``latency + bytes / (nominal x efficiency)``). A
    calibrated ``measured`` block is what copies cost on that machine and wins over both. The ideal
    engine is free whatever the profile says."""
    busy = float(hw[f"bidirectional_{direction}_factor"])
    latency_s, nominal_gbps = float(hw["pcie_latency_s"]), float(hw[f"pcie_{direction}_gbps"])
    if isinstance(engine, IdealEngine):
        path = engine.copy_link(direction, nominal_gbps, latency_s, model)
        return LinkSpec(path.fixed_s, path.gbps, busy)
    if measured:
        return LinkSpec(float(measured["latency_s"]), float(measured["gbps"]), busy)
    eff = hw["pcie_efficiency"]
    if eff is not None:
        return LinkSpec(latency_s, nominal_gbps * float(eff), busy)
    path = engine.copy_link(direction, nominal_gbps, latency_s, model)
    return LinkSpec(path.fixed_s, path.gbps, busy)


@dataclass
class CostModel:
    """Times in seconds for engine iterations and PCIe copies; pure arithmetic, no SimPy."""

    model: ModelSpec
    gpu_memory_bytes: float
    peak_flops: float
    hbm_bytes_per_s: float
    compute_efficiency: float
    memory_efficiency: float
    iteration_overhead_s: float
    mem_fraction_static: float
    links: dict[str, LinkSpec]
    kv_capacity_tokens: int | None = None
    measured: dict[str, dict[str, float]] = field(default_factory=dict)
    scheduler_overhead_s: float = 0.0
    mixed_step: str = "max"
    engine: EngineModel | None = None  # the data path the copy times follow
    # this class's own decode kernel (a subclass that overrides ``_decode_kernel_s``, e.g.
    # aiconfigurator's, clears it): its run times may come from ``harness.step_times``
    _builtin_decode_kernel: ClassVar[bool] = True

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls._builtin_decode_kernel = cls._builtin_decode_kernel and "_decode_kernel_s" not in vars(cls)

    @classmethod
    def from_config(cls, hardware: Mapping[str, Any], model: ModelSpec, engine: EngineModel | None = None) -> CostModel:
        """Build from a ``conf/hardware/*.yaml`` mapping (every key required, see
        ``harness.profile``); ``measured`` blocks override the spec. Copies follow ``engine``'s data
        path (default: ``sglang_0.5``) unless the profile sets ``pcie_efficiency`` (see ``copy_link``)."""
        hw = dict(check_hardware(hardware))
        measured = {k: {**OPTIONAL_MEASURED_KEYS.get(k, {}), **v} for k, v in dict(hw["measured"] or {}).items() if v}
        fitted_for = hardware_value(hw, "measured_model")
        if measured and fitted_for is not None and fitted_for != model.name:
            raise SetupError(
                f"hardware {hw['name']!r}: measured for model {fitted_for!r}, not {model.name!r} "
                f"(use its spec profile or fit one for {model.name!r})"
            )
        engine = engine if engine is not None else load_engine(None)
        links = {d: copy_link(hw, measured.get(d), d, engine, model) for d in DIRECTIONS}
        cap = hw["kv_capacity_tokens"]
        return cls(
            model=model,
            gpu_memory_bytes=float(hw["gpu_memory_mib"]) * MIB,
            peak_flops=float(hw["peak_bf16_flops"]),
            hbm_bytes_per_s=float(hw["hbm_gbps"]) * 1e9,
            compute_efficiency=float(hw["compute_efficiency"]),
            memory_efficiency=float(hw["memory_efficiency"]),
            iteration_overhead_s=float(hw["iteration_overhead_s"]),
            mem_fraction_static=float(hw["mem_fraction_static"]),
            links=links,
            kv_capacity_tokens=int(cap) if cap is not None else None,
            measured=measured,
            scheduler_overhead_s=float(hardware_value(hw, "scheduler_overhead_s")),
            mixed_step=str(hardware_value(hw, "mixed_step")),
            engine=engine,
        )

    @classmethod
    def for_run(cls, cfg: Mapping[str, Any], model: ModelSpec) -> CostModel:
        """The run's ``cost_model``: ``builtin`` (this formula) or ``aiconfigurator`` (kernel times
        from its measured database, extra ``.[aic]``; copies and scheduler overhead still the profile's)."""
        kind = cfg.get("cost_model") or "builtin"
        if kind == "aiconfigurator":
            from harness.aic_cost import AicCostModel

            return AicCostModel.from_config(cfg["hardware"], model, load_engine(cfg.get("engine")))
        if kind != "builtin":
            raise SetupError(f"cost_model={kind!r}; valid: {', '.join(COST_MODELS)}")
        return cls.from_config(cfg["hardware"], model, load_engine(cfg.get("engine")))

    # -- compute -----------------------------------------------------------------------------
    def _roofline_s(self, flops: float, nbytes: float) -> float:
        return max(
            flops / (self.peak_flops * self.compute_efficiency),
            nbytes / (self.hbm_bytes_per_s * self.memory_efficiency),
        )

    def _prefill_work(self, chunks: Sequence[tuple[int, int]]) -> tuple[float, float]:
        """(FLOPs, KV bytes touched) of prefill chunks (new tokens n after context p):
        2 N_mm n + a (n p + n(n+1)/2); reads the p context tokens' KV and writes n new ones."""
        m = self.model
        flops = 0.0
        kv_tokens = 0
        for n, p in chunks:
            flops += m.matmul_flops_per_token * n + m.attn_flops_per_ctx_token * (n * p + n * (n + 1) / 2)
            kv_tokens += n + p
        return flops, float(kv_tokens * m.kv_bytes_per_token)

    def prefill_time_s(self, chunks: Sequence[tuple[int, int]]) -> float:
        """One prefill iteration over ``(new_tokens, context_tokens)`` chunks."""
        return self.iteration_time_s(chunks, ())

    def decode_time_s(self, contexts: Sequence[int]) -> float:
        """One decode step for requests whose context lengths are ``contexts``."""
        return self.iteration_time_s((), contexts)

    def iteration_time_s(self, chunks: Sequence[tuple[int, int]], contexts: Sequence[int]) -> float:
        """A mixed iteration: prefill chunks and decode tokens share one weight pass."""
        if not chunks and not len(contexts):
            return 0.0
        return self.kernel_time_s(chunks, contexts) + self.scheduler_overhead_s

    def kernel_time_s(self, chunks: Sequence[tuple[int, int]], contexts: Sequence[int]) -> float:
        """GPU time of one iteration (``iteration_overhead_s`` included), without the scheduler."""
        if not chunks and not len(contexts):
            return 0.0
        if self.measured.get("prefill") or self.measured.get("decode"):
            return self._measured_iteration_s(chunks, contexts)
        m = self.model
        flops, kv_bytes = self._prefill_work(chunks)
        ctx_sum = float(sum(contexts))
        if self.mixed_step == "sum":
            tokens = sum(n for n, _ in chunks) + len(contexts)
            linear = self._roofline_s(tokens * m.matmul_flops_per_token, m.weight_bytes)
            prefill_attn = self._roofline_s(flops - m.matmul_flops_per_token * (tokens - len(contexts)), kv_bytes)
            decode_attn = self._roofline_s(m.attn_flops_per_ctx_token * ctx_sum, ctx_sum * m.kv_bytes_per_token)
            return linear + prefill_attn + decode_attn + self.iteration_overhead_s
        flops += len(contexts) * m.matmul_flops_per_token + m.attn_flops_per_ctx_token * ctx_sum
        kv_bytes += ctx_sum * m.kv_bytes_per_token
        return self._roofline_s(flops, m.weight_bytes + kv_bytes) + self.iteration_overhead_s

    def _measured_iteration_s(self, chunks: Sequence[tuple[int, int]], contexts: Sequence[int]) -> float:
        # A block that calibration did not write falls back to the roofline for that part.
        t = 0.0
        if chunks:
            p = self.measured.get("prefill")
            if p:
                new = sum(n for n, _ in chunks)
                t += p["a_s"] + p["b_s_per_token"] * new + p["c_s_per_token_ctx"] * sum(n * c for n, c in chunks)
                t += p["d_s_per_token_pair"] * sum(n * (n + 1) / 2 for n, _ in chunks)
            else:
                f, b = self._prefill_work(chunks)
                t += self._roofline_s(f, self.model.weight_bytes + b) + self.iteration_overhead_s
        if len(contexts):
            t += self._decode_kernel_s(contexts, 1)[0] - (self._decode_fixed_s() if chunks else 0.0)
        return t

    def _decode_fixed_s(self) -> float:
        d = self.measured.get("decode")
        return float(d["a_s"]) if d else self.iteration_overhead_s

    def decode_run_times_s(self, contexts: Sequence[int], steps: int) -> list[float]:
        """Cumulative end times of ``steps`` back-to-back decode steps; step k (0-based) runs at
        contexts + k. Closed form per step, so the simulator can jump over many steps at once.
        The built-in kernel's times come from ``harness.step_times`` (the same floats as the numpy
        form below, without its arrays) up to ``LOOP_MAX_STEPS`` steps; a subclass's kernel (e.g.
        aiconfigurator's) goes through numpy."""
        if steps <= LOOP_MAX_STEPS and self._builtin_decode_kernel:
            return self._decode_ends_loop_s(contexts, steps)
        return np.cumsum(self._decode_kernel_s(contexts, steps) + self.scheduler_overhead_s).tolist()

    def _decode_ends_loop_s(self, contexts: Sequence[int], steps: int) -> list[float]:
        """``decode_run_times_s`` of the built-in kernel, by ``harness.step_times`` (operands formed
        as in ``_decode_kernel_s``, so the floats are the same)."""
        batch = len(contexts)
        ctx0 = float(sum(contexts))
        after = self.scheduler_overhead_s
        d = self.measured.get("decode")
        if d:
            return step_times.linear_ends_s(
                d["a_s"] + d["b_s_per_seq"] * batch, d["c_s_per_ctx_token"], ctx0, batch, steps, after
            )
        m = self.model
        peak, bw = self.peak_flops * self.compute_efficiency, self.hbm_bytes_per_s * self.memory_efficiency
        if self.mixed_step == "sum":  # the weight pass first, then the attention's own roofline
            lead, matmul, weights = max(batch * m.matmul_flops_per_token / peak, m.weight_bytes / bw), 0.0, 0.0
        else:  # one roofline over the whole step
            lead, matmul, weights = 0.0, batch * m.matmul_flops_per_token, m.weight_bytes
        return step_times.roofline_ends_s(
            lead, matmul, m.attn_flops_per_ctx_token, weights, m.kv_bytes_per_token, peak, bw,
            self.iteration_overhead_s, ctx0, batch, steps, after,
        )  # fmt: skip

    def _decode_kernel_s(self, contexts: Sequence[int], steps: int) -> np.ndarray:
        """Kernel time of each of ``steps`` decode steps (not cumulative)."""
        batch = len(contexts)
        k = np.arange(steps, dtype=np.float64)
        ctx_sum = float(sum(contexts)) + batch * k
        d = self.measured.get("decode")
        if d:
            return d["a_s"] + d["b_s_per_seq"] * batch + d["c_s_per_ctx_token"] * ctx_sum
        m = self.model
        peak, bw = self.peak_flops * self.compute_efficiency, self.hbm_bytes_per_s * self.memory_efficiency
        attn_flops, kv_bytes = m.attn_flops_per_ctx_token * ctx_sum, m.kv_bytes_per_token * ctx_sum
        if self.mixed_step == "sum":
            linear = max(batch * m.matmul_flops_per_token / peak, m.weight_bytes / bw)
            return linear + np.maximum(attn_flops / peak, kv_bytes / bw) + self.iteration_overhead_s
        flops = batch * m.matmul_flops_per_token + attn_flops
        return np.maximum(flops / peak, (m.weight_bytes + kv_bytes) / bw) + self.iteration_overhead_s

    def overlapped_load_time_s(self, compute_s: float, load_s: float) -> float:
        """Iteration with a reactive layer-by-layer load-back (HiCache): layer i's copy overlaps
        layer i-1's compute, so the first layer's copy is exposed: max(compute, load) + load/L."""
        if load_s <= 0:
            return compute_s
        return max(compute_s, load_s) + load_s / self.model.layers

    # -- transfers -----------------------------------------------------------------------------
    def transfer_time_s(self, nbytes: float, direction: str, other_direction_busy: bool = False) -> float:
        """One copy: latency + bytes / (nominal x efficiency [x bidirectional factor])."""
        if direction not in self.links:
            raise ValueError(f"unknown direction {direction!r}; valid: {', '.join(DIRECTIONS)}")
        link = self.links[direction]
        rate = link.effective_gbps * 1e9 * (link.busy_factor if other_direction_busy else 1.0)
        return link.latency_s + nbytes / rate

    def transfer_gbps(self, direction: str) -> float:
        """Effective one-direction bandwidth in GB/s (what a prefetch deadline is planned with)."""
        return self.links[direction].effective_gbps

    # -- capacity ------------------------------------------------------------------------------
    def gpu_kv_capacity_tokens(self) -> int:
        """KV pool size: (memory x mem_fraction_static - weights) / KV bytes per token, unless the
        profile sets ``kv_capacity_tokens`` (e.g. to put memory under pressure)."""
        if self.kv_capacity_tokens is not None:
            return self.kv_capacity_tokens
        free_bytes = self.gpu_memory_bytes * self.mem_fraction_static - self.model.weight_bytes
        if free_bytes <= 0:
            raise SetupError(
                f"model '{self.model.name}' ({self.model.weight_bytes / 1e9:.1f} GB of weights) "
                f"does not fit in {self.gpu_memory_bytes * self.mem_fraction_static / 1e9:.1f} GB of GPU memory"
            )
        return int(free_bytes // self.model.kv_bytes_per_token)
