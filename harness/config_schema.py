"""The schema of the composed config (``conf/config.yaml`` + groups), checked once at load.

Every backend used to read numbers with ``int(x)`` / ``float(x)`` deep inside the run, so a NaN went
into ``summary.json``, a zero became a ZeroDivisionError and ``abc`` for a flag read as true. This
module checks the whole composed config before anything runs: wrong types, NaN/inf, zero or negative
where a positive value is needed, fractions outside (0, 1], unknown keys. A problem is one
``ConfigError`` line naming the key and the value (``hardware.pcie_h2d_gbps=0: must be a number >
0``); the CLIs print it and exit 2. Value ranges live here; which keys a profile must have is
``harness.profile.check_hardware``.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Mapping
from typing import Any

from harness.cost_model import COST_MODELS
from harness.engines import ENGINE_CLASSES, GATINGS, HOST_LAYOUTS, IO_BACKENDS, WRITE_POLICIES, engine_keys
from harness.engines import resolved as resolved_engine
from harness.errors import SetupError
from harness.profile import MEASURED_KEYS, MIXED_STEPS, check_hardware
from kvflow.release import REPLAY_MODES, START_MODES


class ConfigError(SetupError):
    """A composed config value out of its type or range; ``str()`` names the key and the value."""


TINY = 1e-12  # smallest value accepted where a positive one is needed
Check = Callable[[str, Any], None]  # raises ConfigError naming the key, or returns


def _show(value: Any) -> str:
    text = repr(value) if isinstance(value, str) else str(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _fail(key: str, value: Any, need: str) -> None:
    raise ConfigError(f"{key}={_show(value)}: {need}")


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def number(low: float = -math.inf, high: float = math.inf, low_open: bool = False, integer: bool = False) -> Check:
    """A finite number (an integer when ``integer``) in ``[low, high]`` (``(low, high]`` when ``low_open``)."""
    kind = "an integer" if integer else "a number"
    lo = "" if low == -math.inf else (f" > {low:g}" if low_open else f" >= {low:g}")
    hi = "" if high == math.inf else f" <= {high:g}"
    need = f"must be {kind}{lo}{' and' if lo and hi else ''}{hi}"

    def check(key: str, value: Any) -> None:
        if not _is_number(value) or not math.isfinite(value):
            _fail(key, value, need)
        if integer and not isinstance(value, int):  # 1.0 is not a count: the model spec and int() disagree
            _fail(key, value, need)
        if value > high or value < low or (low_open and value == low):
            _fail(key, value, need)
        if low_open and low == 0 and value < TINY:  # a subnormal rate divides into inf seconds
            _fail(key, value, f"{need} (and >= {TINY:g})")

    return check


POSITIVE = number(0, low_open=True)
NON_NEGATIVE = number(0)
FRACTION = number(0, 1, low_open=True)  # efficiencies, shares: (0, 1]
POSITIVE_INT = number(1, integer=True)
NON_NEGATIVE_INT = number(0, integer=True)
FINITE = number()


def boolean(key: str, value: Any) -> None:
    if not isinstance(value, bool):
        _fail(key, value, "must be true or false")


def text(key: str, value: Any) -> None:
    if not isinstance(value, str) or not value:
        _fail(key, value, "must be a non-empty string")


def one_of(*choices: str) -> Check:
    def check(key: str, value: Any) -> None:
        if value not in choices:
            _fail(key, value, f"must be one of {', '.join(choices)}")

    return check


def optional(inner: Check) -> Check:
    """``null`` allowed (it means "derive it"); otherwise ``inner``."""

    def check(key: str, value: Any) -> None:
        if value is not None:
            inner(key, value)

    return check


def anything(key: str, value: Any) -> None:
    """Free-form metadata (a calibration record): not read by any run."""


HARDWARE: dict[str, Check] = {
    "name": text,
    "gpu": text,
    "gpu_memory_mib": POSITIVE,
    "peak_bf16_flops": POSITIVE,
    "hbm_gbps": POSITIVE,
    "compute_efficiency": FRACTION,
    "memory_efficiency": FRACTION,
    "iteration_overhead_s": NON_NEGATIVE,
    "pcie_h2d_gbps": POSITIVE,
    "pcie_d2h_gbps": POSITIVE,
    "pcie_efficiency": optional(FRACTION),  # null: the engine model decides (harness.cost_model.copy_link)
    "pcie_latency_s": NON_NEGATIVE,
    "bidirectional_h2d_factor": FRACTION,
    "bidirectional_d2h_factor": FRACTION,
    "mem_fraction_static": FRACTION,
    "chunked_prefill_tokens": POSITIVE_INT,
    "kv_capacity_tokens": optional(POSITIVE_INT),
    "measured": anything,  # checked block by block below
    "calibration": anything,
    # optional keys (harness.profile.OPTIONAL_KEYS): absent = the model before them
    "scheduler_overhead_s": NON_NEGATIVE,
    "mixed_step": one_of(*MIXED_STEPS),
    "measured_model": optional(text),
    "aic_system": optional(text),
}
MODEL: dict[str, Check] = {
    "name": text,
    **{k: POSITIVE_INT for k in ("layers", "hidden", "intermediate", "heads", "kv_heads", "head_dim", "vocab")},
    "params": POSITIVE_INT,
    "dtype_bytes": POSITIVE_INT,
}
CACHE: dict[str, Check] = {
    "gpu_capacity_tokens": optional(POSITIVE_INT),
    "gpu_tokens_per_client": optional(POSITIVE_INT),
    "cpu_capacity_tokens": optional(NON_NEGATIVE_INT),
    "page_size": optional(POSITIVE_INT),  # null: engine.page_size
}


def kernel_rates(key: str, value: Any) -> None:
    """``engine.kernel_gbps``: a rate per host layout."""
    if not isinstance(value, Mapping) or set(value) != set(HOST_LAYOUTS):
        _fail(key, value, f"must be a mapping with keys {', '.join(HOST_LAYOUTS)}")
    for layout, rate in value.items():
        POSITIVE(f"{key}.{layout}", rate)


ENGINE: dict[str, Check] = {  # every engine kind (harness.engines.base.EngineModel)
    "kind": one_of(*ENGINE_CLASSES),
    "name": text,
    "chunk_tokens": optional(POSITIVE_INT),
    "max_running_requests": optional(POSITIVE_INT),
    "gating": one_of(*GATINGS),
    "scheduler_sync": boolean,
    "write_policy": one_of(*WRITE_POLICIES),
    "write_through_hits": POSITIVE_INT,
    "host_ratio": POSITIVE,
    "page_size": POSITIVE_INT,
    "load_back_threshold_tokens": NON_NEGATIVE_INT,
    "load_mem_quota": boolean,
    "unbounded_host_pool": boolean,
    "count_match_hits": boolean,
    "count_insert_hits": boolean,
    "chunk_inserts": boolean,
}
ENGINE_KINDS: dict[str, dict[str, Check]] = {  # each kind's own parameters
    "sglang_0.4": {
        "host_gather_gbps": POSITIVE,
        "pageable_h2d_gbps": POSITIVE,
        "pageable_d2h_gbps": POSITIVE,
        "cuda_graph_bs": optional(NON_NEGATIVE_INT),
    },
    "sglang_0.5": {
        "io_backend": one_of(*IO_BACKENDS),
        "host_layout": one_of(*HOST_LAYOUTS),
        "kernel_gbps": kernel_rates,
        "direct_gbps": POSITIVE,
        "direct_copy_latency_s": NON_NEGATIVE,
    },
    "ideal": {},
}
SIM: dict[str, Check] = {"bidirectional_penalty": boolean, "check_invariants": boolean, "timeline": boolean}
OUTPUT: dict[str, Check] = {"report": boolean, "requests_csv": boolean, "table": boolean}
POLICY: dict[str, Check] = {
    "name": text,
    "eviction": anything,  # checked against the policy class below
    "cpu_capacity_ratio": optional(NON_NEGATIVE),  # 0: no CPU tier; null: the engine's host_ratio
    "write_policy": optional(one_of(*WRITE_POLICIES)),  # null: the engine's
    "write_through_hits": optional(POSITIVE_INT),  # null: the engine's
    "load_back": boolean,
    "prefetch": boolean,
    "status_aware": boolean,
    "load_then_dispatch": boolean,  # a CPU-only prefix is loaded, then its request dispatched (KVFlow)
    "backup_dynamic": boolean,  # false: dynamic suffixes and outputs are never backed up (KVFlow)
    "max_prefetch": NON_NEGATIVE_INT,
    "hints": boolean,
    "infer_steps": boolean,
    "release_finished": boolean,
    "prefetch_mode": one_of("next_step", "deadline", "resume"),
    "prefetch_lookahead_steps": POSITIVE_INT,
}
WORKLOAD: dict[str, Check] = {
    "name": text,
    "generator": optional(text),
    "trace": optional(text),
    "import_format": optional(text),
    "import_from": optional(text),
    "params": anything,  # checked below; the generator checks names and ranges
    # release (kvflow/release.py; harness.setup.release_options checks the combinations)
    "replay": optional(one_of(*REPLAY_MODES)),
    "start": one_of(*START_MODES),
    "start_rate_per_s": NON_NEGATIVE,
    "model_map": anything,  # {MODEL: keep|separate|drop}: traces.model_map checks the actions
    "sessions": one_of("all", "test", "train"),
}
ROUTER_NAMES = ("round_robin", "least_loaded", "session_affinity", "prefix_aware", "kv_aware", "workflow_aware")


REMOTE_TIER: dict[str, Check] = {  # cluster.remote_tier (sim/remote_tier.py, docs/fleet.md)
    "capacity_tokens": POSITIVE_INT,  # the pool's size, shared by every replica
    "bandwidth_gbps": POSITIVE,  # the one shared link, GB/s
    "latency_s": NON_NEGATIVE,  # per transfer
    "prefetch": boolean,  # workflow_aware: move a client's prefix to its next call's replica ahead
}
REMOTE_TIER_REQUIRED = ("capacity_tokens", "bandwidth_gbps")


def remote_tier(key: str, value: Any) -> None:
    """``cluster.remote_tier``: null (off) or a mapping of ``REMOTE_TIER`` keys."""
    if value is None:
        return
    _check_section(key, value, REMOTE_TIER)
    for name in REMOTE_TIER_REQUIRED:
        if name not in value:
            raise ConfigError(f"{key}.{name}: missing (a remote tier needs {' and '.join(REMOTE_TIER_REQUIRED)})")


PEER_COPY: dict[str, Check] = {  # cluster.peer_copy (sim/peer_copy.py, docs/fleet.md)
    "bandwidth_gbps": POSITIVE,  # each source replica's link, GB/s
    "latency_s": NON_NEGATIVE,  # per transfer
}


def peer_copy(key: str, value: Any) -> None:
    """``cluster.peer_copy``: null (off) or a mapping of ``PEER_COPY`` keys (one replica: never copies)."""
    if value is None:
        return
    _check_section(key, value, PEER_COPY)
    if "bandwidth_gbps" not in value:
        raise ConfigError(f"{key}.bandwidth_gbps: missing (peer copies need a link rate)")


def _check_cluster(cluster: Mapping[str, Any]) -> None:
    """What a remote tier needs of the rest of ``cluster``."""
    remote = cluster.get("remote_tier")
    if remote is None:
        return
    if int(cluster.get("replicas", 1)) < 2:
        raise ConfigError("cluster.remote_tier: needs cluster.replicas >= 2 (one replica runs the single engine)")
    block = int(cluster.get("block_tokens", 64))
    if remote["capacity_tokens"] < block:
        _fail(
            "cluster.remote_tier.capacity_tokens", remote["capacity_tokens"], f"must be >= cluster.block_tokens={block}"
        )
    router = cluster.get("router", "round_robin")
    if remote.get("prefetch", False) and router != "workflow_aware":
        _fail("cluster.remote_tier.prefetch", True, f"needs cluster.router=workflow_aware, not {router!r}")


CLUSTER: dict[str, Check] = {  # sim/fleet.py, sim/routers/ (ROUTER_NAMES must match sim.routers.ROUTERS)
    "replicas": POSITIVE_INT,
    "router": one_of(*ROUTER_NAMES),
    "cache_threshold": number(0, 1),
    "balance_abs_threshold": NON_NEGATIVE_INT,
    "overlap_weight": NON_NEGATIVE,
    "block_tokens": POSITIVE_INT,
    "remote_tier": remote_tier,
    "peer_copy": peer_copy,
}
SECTIONS: dict[str, dict[str, Check]] = {
    "hardware": HARDWARE,
    "model": MODEL,
    "cache": CACHE,
    "sim": SIM,
    "output": OUTPUT,
    "policy": POLICY,
    "workload": WORKLOAD,
    "cluster": CLUSTER,
}
TOP_LEVEL = ("seed", "force", "compare", "experiment_name", "params", "cost_model", "engine", *SECTIONS)
MEASURED_RULES: dict[str, Check] = {"gbps": POSITIVE, "latency_s": NON_NEGATIVE}


def _check_section(name: str, data: Any, rules: Mapping[str, Check]) -> None:
    if not isinstance(data, Mapping):
        _fail(name, data, "must be a mapping")
    for key, value in data.items():
        if key not in rules:
            raise ConfigError(f"{name}.{key}={_show(value)}: unknown key; valid: {', '.join(rules)}")
        rules[key](f"{name}.{key}", value)


def _check_engine(cfg: Mapping[str, Any]) -> None:
    """The ``engine`` section: common keys, then the kind's own (a section without ``kind`` is read
    over the default engine's file); the 0.4 layout needs page size 1."""
    section = cfg.get("engine")
    if section is None:
        return
    if not isinstance(section, Mapping):
        _fail("engine", section, "must be a mapping")
    if "kind" in section:
        ENGINE["kind"]("engine.kind", section["kind"])
    full = resolved_engine(section)
    kind = full.get("kind")
    ENGINE["kind"]("engine.kind", kind)
    _check_section("engine", full, {**ENGINE, **ENGINE_KINDS[str(kind)]})
    missing = [k for k in engine_keys(str(kind)) if k not in full]
    if missing:
        raise ConfigError(f"engine.{missing[0]}: missing for engine kind {kind!r}")
    page = (cfg.get("cache") or {}).get("page_size") or full["page_size"]
    if kind == "sglang_0.4" and page != 1:
        raise ConfigError(f"engine.page_size={page}: sglang_0.4's layer-first host pool needs page size 1")


def _check_measured(measured: Any) -> None:
    if measured is None:
        return
    if not isinstance(measured, Mapping):
        _fail("hardware.measured", measured, "must be a mapping or null")
    for block, values in measured.items():
        if values is not None and not isinstance(values, Mapping):
            _fail(f"hardware.measured.{block}", values, "must be a mapping or null")
        for key in MEASURED_KEYS.get(block, ()) if values else ():
            if key in values:
                MEASURED_RULES.get(key, FINITE)(f"hardware.measured.{block}.{key}", values[key])


def _check_workload(workload: Mapping[str, Any]) -> None:
    if workload.get("trace") == "???" and not workload.get("import_format"):  # importing on the fly needs no file
        raise ConfigError(
            "workload.trace is required with workload=trace: add workload.trace=PATH "
            "(or workload.import_format=FORMAT workload.import_from=DIR)"
        )
    if not any(workload.get(k) for k in ("trace", "import_format", "generator")):
        raise ConfigError("workload: set one of workload.trace, workload.import_format or workload.generator")
    params = workload.get("params")
    if params is None:
        return
    if not isinstance(params, Mapping):
        _fail("workload.params", params, "must be a mapping")
    for key, value in params.items():
        if _is_number(value):
            NON_NEGATIVE(f"workload.params.{key}", value)
        elif not isinstance(value, (str, bool)):
            _fail(f"workload.params.{key}", value, "must be a number, a distribution string or true/false")


def _policy_kwargs(target: str) -> set[str] | None:
    """Keyword arguments the policy class accepts (None: cannot tell, let the build decide)."""
    from kvflow.policies import load_policy_class

    try:
        cls = load_policy_class(target)
    except ValueError:
        return None
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is None:
            continue
        params = list(inspect.signature(init).parameters.values())[1:]
        if not any(p.kind is p.VAR_KEYWORD for p in params):
            return {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    return set()


def _check_eviction(eviction: Any) -> None:
    if eviction is None:
        return
    if not isinstance(eviction, Mapping):
        _fail("policy.eviction", eviction, "must be a mapping")
    target = eviction.get("_target_")
    if target is not None:
        text("policy.eviction._target_", target)
    accepted = _policy_kwargs(str(target)) if target else None
    for key, value in eviction.items():
        if key in ("_target_", "name"):
            continue
        full = f"policy.eviction.{key}"
        if key in ("gain_from_cost_model", "aging"):
            boolean(full, value)
        elif accepted is not None and key not in accepted:
            valid = ", ".join(sorted(accepted)) or "none (this policy takes no arguments)"
            raise ConfigError(f"{full}={_show(value)}: unknown key; valid: {valid}")
        elif _is_number(value):
            FINITE(full, value)


def _check_top(cfg: Mapping[str, Any]) -> None:
    for key, value in cfg.items():
        if key not in TOP_LEVEL:
            raise ConfigError(f"{key}={_show(value)}: unknown key; valid: {', '.join(TOP_LEVEL)}")
    if "seed" in cfg:
        NON_NEGATIVE_INT("seed", cfg["seed"])
    if "force" in cfg:
        boolean("force", cfg["force"])
    if "cost_model" in cfg:
        one_of(*COST_MODELS)("cost_model", cfg["cost_model"])
    compare = cfg.get("compare")
    if compare is not None and (not isinstance(compare, list) or not all(isinstance(n, str) for n in compare)):
        _fail("compare", compare, "must be a list of policy names, e.g. [kvflow,hicache,sglang]")


def validate_config(cfg: Mapping[str, Any]) -> Mapping[str, Any]:
    """``cfg`` itself when every value has its type and range; else a one-line ``ConfigError``."""
    if not isinstance(cfg, Mapping):
        raise ConfigError(f"config: expected a mapping, got {type(cfg).__name__}")
    _check_top(cfg)
    for name, rules in SECTIONS.items():
        if cfg.get(name) is not None:
            _check_section(name, cfg[name], rules)
    _check_engine(cfg)
    if cfg.get("hardware") is not None:
        _check_measured(cfg["hardware"].get("measured"))
        check_hardware(cfg["hardware"])
    if cfg.get("policy") is not None:
        _check_eviction(cfg["policy"].get("eviction"))
    if cfg.get("workload") is not None:
        _check_workload(cfg["workload"])
    if cfg.get("cluster") is not None:
        _check_cluster(cfg["cluster"])
    return cfg
