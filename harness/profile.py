"""Hardware profiles (``conf/hardware/*.yaml`` or a calibrated file) and model specs, checked once.

Every key of a profile is required: a profile that lacks one is an error naming it, never a silent
default (the backends used to disagree on such defaults). ``null`` is allowed only where it has a
documented meaning: ``kv_capacity_tokens`` (derive the KV pool from memory), ``measured`` (no
calibration: use the spec-derived cost model) and ``pcie_efficiency`` (the engine model sets the copy
rates below the link; a number overrides them, ``harness.cost_model.copy_link``).
"""

from __future__ import annotations

from collections.abc import Mapping
from importlib.resources import files
from pathlib import Path
from typing import Any

import yaml

from harness.errors import SetupError
from kvflow.model_spec import ModelSpec, load_model_spec

HARDWARE_KEYS = (
    "name",
    "gpu_memory_mib",
    "peak_bf16_flops",
    "hbm_gbps",
    "compute_efficiency",
    "memory_efficiency",
    "iteration_overhead_s",
    "pcie_h2d_gbps",
    "pcie_d2h_gbps",
    "pcie_efficiency",
    "pcie_latency_s",
    "bidirectional_h2d_factor",
    "bidirectional_d2h_factor",
    "mem_fraction_static",
    "chunked_prefill_tokens",
    "kv_capacity_tokens",
    "measured",
)
NULLABLE_KEYS = ("kv_capacity_tokens", "measured", "pcie_efficiency")  # pcie_efficiency null: the engine decides
# Keys added after the first profiles: absent means the value that reproduces the model before them
# (docs/cost_model.md "Kernel phases and scheduler overhead"), so existing profiles keep their results.
OPTIONAL_KEYS: dict[str, Any] = {
    "scheduler_overhead_s": 0.0,  # per iteration / decode step, CPU side, on top of kernel time
    "mixed_step": "max",  # max: one roofline over the whole step; sum: kernel phases one after another
    "measured_model": None,  # model a `measured` block was fitted for (checked when set)
    "aic_system": None,  # aiconfigurator's system name (cost_model=aiconfigurator), e.g. h100_sxm
}
MIXED_STEPS = ("max", "sum")
OPTIONAL_MEASURED_KEYS = {"prefill": {"d_s_per_token_pair": 0.0}}  # n(n+1)/2 own causal attention
MEASURED_KEYS = {
    "prefill": ("a_s", "b_s_per_token", "c_s_per_token_ctx"),
    "decode": ("a_s", "b_s_per_seq", "c_s_per_ctx_token"),
    "h2d": ("latency_s", "gbps"),
    "d2h": ("latency_s", "gbps"),
}


def check_hardware(hw: Mapping[str, Any]) -> Mapping[str, Any]:
    """``hw`` itself when every key is present (and non-null where null means nothing); else a
    ``SetupError`` such as ``hardware 'h100': missing key 'pcie_latency_s'``."""
    if not isinstance(hw, Mapping):
        raise SetupError(f"hardware: expected a mapping, got {type(hw).__name__}")
    name = hw.get("name", "?")
    for key in HARDWARE_KEYS:
        if key not in hw:
            raise SetupError(f"hardware {name!r}: missing key {key!r}")
        if hw[key] is None and key not in NULLABLE_KEYS:
            raise SetupError(f"hardware {name!r}: key {key!r} is null (only {', '.join(NULLABLE_KEYS)} may be)")
    if hw.get("mixed_step", "max") not in MIXED_STEPS:
        raise SetupError(f"hardware {name!r}: mixed_step={hw['mixed_step']!r}; valid: {', '.join(MIXED_STEPS)}")
    for block, value in dict(hw["measured"] or {}).items():
        if block not in MEASURED_KEYS:
            raise SetupError(f"hardware {name!r}: unknown block 'measured.{block}'; valid: {', '.join(MEASURED_KEYS)}")
        for key in MEASURED_KEYS[block] if value else ():
            if key not in value:
                raise SetupError(f"hardware {name!r}: missing key 'measured.{block}.{key}'")
    return hw


def hardware_value(hw: Mapping[str, Any], key: str) -> Any:
    """A profile key, or for an ``OPTIONAL_KEYS`` key its behaviour-preserving default."""
    return hw[key] if key in hw or key not in OPTIONAL_KEYS else OPTIONAL_KEYS[key]


def load_profile(path: str | Path) -> dict[str, Any]:
    """A hardware profile file (e.g. written by ``kvflow-real calibrate``), checked."""
    p = Path(path)
    if not p.is_file():
        raise SetupError(f"{p}: no such hardware profile")
    try:
        data = yaml.safe_load(p.read_text())
    except yaml.YAMLError as exc:
        raise SetupError(f"{p}: not valid YAML ({' '.join(str(exc).split())[:120]})") from None
    if not isinstance(data, dict):
        raise SetupError(f"{p}: a hardware profile must be a mapping")
    check_hardware(data)
    return data


def conf_profile(name: str) -> dict[str, Any]:
    """The packaged profile ``conf/hardware/<name>.yaml``, checked."""
    return load_profile(Path(str(files("conf") / "hardware" / f"{name}.yaml")))


def load_model(model: str | Mapping[str, Any]) -> ModelSpec:
    """``conf/model/<name>.yaml`` (a name or a composed mapping with ``name``) as a ``ModelSpec``."""
    try:
        return load_model_spec(model)
    except (KeyError, FileNotFoundError) as exc:
        raise SetupError(f"model {model if isinstance(model, str) else model.get('name')!r}: {exc}") from None
