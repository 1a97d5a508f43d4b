"""Build the cache manager and engine from a policy config (``conf/policy/*.yaml``), once for both
backends, so a policy means the same thing in the simulator and on a real GPU.

The backend supplies what only it knows: pool sizes in tokens, KV bytes per token, the prefill
chunk, the H2D bandwidth a deadline prefetch plans with, and (for ``gain_from_cost_model``) the
seconds saved per cached token from its cost model or calibration.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from kvflow.cache import CacheConfig, KVCacheManager
from kvflow.engine import Engine, EngineConfig
from kvflow.policies import Policy, load_policy_class, make_policy

SGLANG_CONTEXT_LEN = 131072  # max_position_embeddings of the models in conf/model


def max_running_requests(value: int | None, gpu_tokens: int) -> int:
    """SGLang's rule (REFERENCE_NUMBERS.md section 7) unless the config sets one (None: not set;
    0 is an error, never "use the default")."""
    if value is not None:
        if int(value) < 1:
            raise ValueError(f"max_running_requests={value}: must be >= 1 (null: SGLang's rule)")
        return int(value)
    pool = min(max(gpu_tokens * 512 // SGLANG_CONTEXT_LEN, 2048), 4096)
    return max(1, min(gpu_tokens // 2, pool))


def build_policy(eviction: Mapping[str, Any], gain_s_per_token: Callable[[], float] | None = None) -> Policy:
    """The policy an ``eviction`` config names: ``_target_`` (``module.Class``) plus its kwargs, or
    a ``name`` of ``POLICY_NAMES`` (older configs); LRU when empty. ``gain_from_cost_model: true``
    passes the backend's seconds saved per cached token as ``gain_s_per_token``."""
    kwargs = dict(eviction)
    target, name = kwargs.pop("_target_", None), kwargs.pop("name", None)
    if kwargs.pop("gain_from_cost_model", False):
        if gain_s_per_token is None:
            raise ValueError(f"policy '{target or name}' needs gain_from_cost_model but the backend has no cost model")
        kwargs["gain_s_per_token"] = gain_s_per_token()
    if target:
        return load_policy_class(str(target))(**kwargs)
    return make_policy(str(name or "lru"), **kwargs)


def build_engine(
    policy_cfg: Mapping[str, Any],
    *,
    gpu_tokens: int,
    cpu_tokens: int,
    kv_bytes_per_token: int,
    chunk_tokens: int,
    h2d_gbps: float,
    page_size: int = 1,
    max_running: int | None = None,
    gain_s_per_token: Callable[[], float] | None = None,
    free_ops: bool = True,
    data_path: DataPath | None = None,
) -> Engine:
    """Policy (``eviction``: ``_target_`` + kwargs), cache manager and engine for one run.
    ``free_ops``: whether the backend wants Free ops (it keeps memory per node). ``data_path``: the
    engine model's cache settings; a policy key that is set (not null) wins over it."""
    path = data_path or DataPath()
    write_policy = _policy_or(policy_cfg, "write_policy", path.write_policy)
    cache_config = CacheConfig(
        gpu_capacity_tokens=gpu_tokens,
        cpu_capacity_tokens=cpu_tokens,
        page_size=page_size,
        kv_bytes_per_token=kv_bytes_per_token,
        write_policy=str(write_policy) if cpu_tokens else "none",
        write_through_hits=int(_policy_or(policy_cfg, "write_through_hits", path.write_through_hits)),
        insert_is_hit=not path.count_insert_hits,
        backup_dynamic=bool(policy_cfg.get("backup_dynamic", True)),
        max_prefetch=int(policy_cfg.get("max_prefetch", 4)),
        free_ops=free_ops,
    )
    cache = KVCacheManager(cache_config, build_policy(policy_cfg.get("eviction") or {}, gain_s_per_token))
    running = max_running_requests(max_running, gpu_tokens)
    config = engine_config(policy_cfg, int(chunk_tokens), running, cpu_tokens > 0, h2d_gbps)
    config.load_back_threshold_tokens = path.load_back_threshold_tokens
    config.load_mem_quota = path.load_mem_quota
    config.count_match_hits = path.count_match_hits
    config.count_insert_hits = path.count_insert_hits
    config.chunk_inserts = path.chunk_inserts
    return Engine(cache, config)


@dataclass(frozen=True)
class DataPath:
    """What a backend's engine model fixes in the core: write policy and threshold (SGLang 0.4:
    write_through_selective = write-through on the 2nd hit), load-back threshold and mem_quota
    fallback, and which events count as hits (SGLang 0.4: every match, every insert walk, one insert
    per prefill chunk; ``EngineConfig``). The defaults are the core's behaviour before engine models
    existed."""

    write_policy: str = "none"
    write_through_hits: int = 1
    load_back_threshold_tokens: int = 0
    load_mem_quota: bool = False
    count_match_hits: bool = False
    count_insert_hits: bool = False
    chunk_inserts: bool = False


def _policy_or(policy_cfg: Mapping[str, Any], key: str, default: Any) -> Any:
    value = policy_cfg.get(key)
    return default if value is None else value


def engine_config(
    policy_cfg: Mapping[str, Any], chunk_tokens: int, max_running: int, has_cpu: bool, h2d_gbps: float
) -> EngineConfig:
    """The scheduler's and prefetcher's settings from a policy config (load-back needs a CPU tier)."""
    return EngineConfig(
        chunk_tokens=chunk_tokens,
        max_running_requests=max_running,
        load_back=bool(policy_cfg.get("load_back", False)) and has_cpu,
        prefetch=bool(policy_cfg.get("prefetch", False)),
        status_aware=bool(policy_cfg.get("status_aware", True)),
        load_then_dispatch=bool(policy_cfg.get("load_then_dispatch", False)),
        infer_steps=bool(policy_cfg.get("infer_steps", False)),
        release_finished=bool(policy_cfg.get("release_finished", False)),
        prefetch_mode=str(policy_cfg.get("prefetch_mode", "next_step")),
        prefetch_lookahead_steps=int(policy_cfg.get("prefetch_lookahead_steps", 2)),
        h2d_gbps=h2d_gbps,
    )
