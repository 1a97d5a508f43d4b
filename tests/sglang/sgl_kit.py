"""Builders shared by the adapter tests: a CPU-only SGLang unified radix cache (the way SGLang's
own ``sglang/test/kits/unified_radix_cache`` builds one) and a request driver for it."""

from __future__ import annotations

from array import array
from typing import Any

import torch
from sglang.srt.managers.schedule_batch import Req
from sglang.srt.mem_cache.allocator import TokenToKVPoolAllocator
from sglang.srt.mem_cache.base_prefix_cache import EvictParams
from sglang.srt.mem_cache.cache_init_params import CacheInitParams
from sglang.srt.mem_cache.memory_pool import MHATokenToKVPool, ReqToTokenPool
from sglang.srt.mem_cache.registry import TreeCacheBuildContext
from sglang.srt.mem_cache.unified_cache.components.base import ComponentType
from sglang.srt.mem_cache.unified_radix_cache import UnifiedRadixCache
from sglang.srt.sampling.sampling_params import SamplingParams
from sglang.srt.server_args import ServerArgs, set_global_server_args_for_scheduler
from sglang.test.mem_cache_utils import finish_req

from real.sglang import plugin
from real.sglang.cache import kvflow_cache_factory
from real.sglang.hints import WorkflowHint, build_envelope

KV_SIZE = 1024


def build_cache(eviction_policy: str = "kvflow", backend: str = "kvflow", page_size: int = 1):
    """(cache, allocator, req_to_token_pool) on CPU pools; backend 'kvflow' goes through the
    plug-in's own factory, 'default' builds SGLang's plain UnifiedRadixCache (Python core)."""
    plugin.load()  # registers the kvflow policy (idempotent)
    server_args = ServerArgs(model_path="dummy", page_size=page_size)
    set_global_server_args_for_scheduler(server_args)
    pool = ReqToTokenPool(size=64, max_context_len=512, device="cpu", enable_memory_saver=False)
    kv = MHATokenToKVPool(
        size=KV_SIZE,
        page_size=page_size,
        dtype=torch.bfloat16,
        head_num=1,
        head_dim=8,
        layer_num=1,
        device="cpu",
        enable_memory_saver=False,
    )
    allocator = TokenToKVPoolAllocator(size=KV_SIZE, dtype=torch.bfloat16, device="cpu", kvcache=kv, need_sort=False)
    params = CacheInitParams(
        req_to_token_pool=pool,
        token_to_kv_pool_allocator=allocator,
        page_size=page_size,
        disable=False,
        eviction_policy=eviction_policy,
        tree_components=(ComponentType.FULL,),
    )
    if backend == "kvflow":
        ctx = TreeCacheBuildContext(
            server_args=server_args,
            params=params,
            is_hybrid_swa=False,
            is_hybrid_ssm=False,
            enable_hierarchical_cache=False,
            disable_radix_cache=False,
            tp_worker=None,
            model_config=None,
            tp_size=1,
            tp_rank=0,
            tp_group=None,
        )
        cache = kvflow_cache_factory(ctx)
    else:
        params.tree_core_backend = "python"
        cache = UnifiedRadixCache(params)
    return cache, allocator, pool


class Driver:
    """Runs finished requests through ``cache.checkpoint`` (what SGLang does when a request
    releases its KV) and records the order in which eviction frees nodes."""

    def __init__(self, cache: Any, allocator: Any, pool: Any) -> None:
        self.cache, self.allocator, self.pool = cache, allocator, pool
        self.evicted: list[tuple[int, ...]] = []
        self._n = 0
        core = cache.tree_core
        original = core.evict_device_leaf

        def record(node_id, *args, **kwargs):
            node = core.node_by_id(node_id)
            self.evicted.append(tuple(node.key.raw_token_ids()))
            return original(node_id, *args, **kwargs)

        core.evict_device_leaf = record

    def request(self, tokens: list[int], hint: WorkflowHint | None = None) -> Any:
        self._n += 1
        req = Req(
            rid=f"r{self._n}",
            origin_input_text="",
            origin_input_ids=array("q", tokens),
            sampling_params=SamplingParams(temperature=0, max_new_tokens=1),
            kv_hints=build_envelope(hint) if hint else None,
        )
        self.pool.alloc([req])
        req.output_ids = array("q")
        req.kv.kv_committed_len = len(tokens)
        req.kv.kv_allocated_len = len(tokens)
        req.kv.cache_protected_len = 0
        req.lock = None
        req.extra_key = None
        indices = self.allocator.alloc(len(tokens))
        assert indices is not None, "test KV pool exhausted"
        self.pool.write((req.kv.req_pool_idx, slice(0, len(tokens))), indices)
        req.last_node = self.cache.root_node_handle()
        finish_req(self.cache, req, req.owned_kv_len())
        return req

    def evict(self, num_tokens: int) -> list[tuple[int, ...]]:
        before = len(self.evicted)
        self.cache.evict(EvictParams(num_tokens=num_tokens))
        return self.evicted[before:]
