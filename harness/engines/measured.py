"""``engine.measured=PATH``: rates measured on a machine instead of the sourced ones.

``python -m real.engine_bench`` (benchmarks/gpu_check.sh runs it) writes ``engine_profile.yaml``,
whose top-level keys named in ``RATE_KEYS`` are engine-model parameters (conf/engine/*.yaml). A
config section with ``measured: PATH`` reads that file and replaces each of those rates that the
section's engine kind takes and the profile measured (null: not measured there, the YAML's value
stays); ``kernel_gbps`` is replaced layout by layout. Everything else of the model (gating, write
policy, page size, ...) is a design fact, never measured, so never overridden. The profile's
``hardware`` block and raw figures are for reports only. A missing or malformed file is a
``SetupError`` naming the path and the key: one line, exit 2 in every CLI.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any

import yaml

from harness.errors import SetupError

MEASURED_KEY = "measured"
PROFILE_FORMAT = "kvflow-engine-profile/1"
RATE_KEYS = (  # the engine-model parameters a profile may set (real.engine_bench writes them)
    "host_gather_gbps",
    "pageable_h2d_gbps",
    "pageable_d2h_gbps",
    "kernel_gbps",
    "direct_gbps",
    "direct_copy_latency_s",
)
NON_NEGATIVE_KEYS = ("direct_copy_latency_s",)  # the others are rates: > 0


def read_profile(path: str | Path) -> dict[str, Any]:
    """The profile at ``path`` as a mapping, checked to be an engine profile."""
    where = f"engine.{MEASURED_KEY}={path}"
    p = Path(path)
    if not p.is_file():
        raise SetupError(f"{where}: no such file (write one with: python -m real.engine_bench --out DIR)")
    try:
        data = yaml.safe_load(p.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise SetupError(f"{where}: not readable YAML ({' '.join(str(exc).split())[:200]})") from None
    if not isinstance(data, Mapping) or data.get("format") != PROFILE_FORMAT:
        raise SetupError(f"{where}: not an engine profile (needs format: {PROFILE_FORMAT})")
    return dict(data)


def _check_rate(where: str, key: str, value: Any) -> float:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or value < 0 or (value == 0 and key not in NON_NEGATIVE_KEYS):
        need = "a non-negative number" if key in NON_NEGATIVE_KEYS else "a positive number"
        raise SetupError(f"{where}: {key}={value!r} must be {need} or null")
    return float(value)


def measured_rates(profile: Mapping[str, Any], params: Collection[str], where: str) -> dict[str, Any]:
    """The rates of ``profile`` that an engine taking ``params`` reads (null ones left out)."""
    rates: dict[str, Any] = {}
    for key in RATE_KEYS:
        value = profile.get(key)
        if key not in params or value is None:
            continue
        if key == "kernel_gbps":
            if not isinstance(value, Mapping):
                raise SetupError(f"{where}: kernel_gbps={value!r} must be a mapping of host layout to GB/s")
            layouts = {str(k): _check_rate(where, f"kernel_gbps.{k}", v) for k, v in value.items() if v is not None}
            if layouts:
                rates[key] = layouts
        else:
            rates[key] = _check_rate(where, key, value)
    return rates


def with_measured(cfg: Mapping[str, Any], params: Collection[str]) -> dict[str, Any]:
    """``cfg`` without its ``measured`` key, with that profile's rates over its own when it names one."""
    out = dict(cfg)
    path = out.pop(MEASURED_KEY, None)
    if path is None:
        return out
    where = f"engine.{MEASURED_KEY}={path}"
    rates = measured_rates(read_profile(str(path)), params, where)
    if "kernel_gbps" in rates:
        known = dict(out.get("kernel_gbps") or {})
        unknown = sorted(set(rates["kernel_gbps"]) - set(known))
        if unknown:
            raise SetupError(f"{where}: kernel_gbps.{unknown[0]}: unknown host layout; valid: {', '.join(known)}")
        rates["kernel_gbps"] = {**known, **rates["kernel_gbps"]}
    return {**out, **rates}
