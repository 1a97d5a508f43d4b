"""SGLang general plug-in (entry point group ``sglang.srt.plugins``): puts KVFlow into the server.

``load()`` is called by SGLang's ``load_plugins()`` before argument parsing and again in every
scheduler subprocess (spawned, so only a pip-installed entry point reaches it). It registers:
- eviction policy ``kvflow`` (``--radix-eviction-policy kvflow``; ``real.sglang.policy``);
- radix-cache backend ``kvflow`` (``--radix-cache-backend kvflow``; ``real.sglang.cache``);
- an AROUND hook on ``Scheduler.get_new_batch_prefill`` for hints, holding and prefetch
  (``real.sglang.prefetch``);
- AFTER hooks on the OpenAI chat/completions converters that copy hints from the
  ``X-KVFlow-Hints`` header (or an ``kv_hints`` body field, if the request model kept it).
Idempotent. Hooks are applied by ``load_plugins()`` (``HookRegistry.apply_hooks``).
"""

from __future__ import annotations

import json
import logging
from typing import Any

from real.sglang.hints import HEADER

logger = logging.getLogger(__name__)
NAME = "kvflow"
SCHEDULER_TARGET = "sglang.srt.managers.scheduler.Scheduler.get_new_batch_prefill"
OPENAI_TARGETS = (
    "sglang.srt.entrypoints.openai.serving_chat.OpenAIServingChat._convert_to_internal_request",
    "sglang.srt.entrypoints.openai.serving_completions.OpenAIServingCompletion._convert_to_internal_request",
)
_loaded = False


def load() -> None:
    """Entry point: register the policy, the backend and the hooks (once per process)."""
    global _loaded
    if _loaded:
        return
    register_policy()
    register_backend()
    register_hooks()
    _loaded = True
    logger.info("kvflow plug-in loaded: --radix-cache-backend kvflow --radix-eviction-policy kvflow")


def register_policy() -> None:
    from sglang.srt.arg_groups.choices import RADIX_EVICTION_POLICY_CHOICES, add_radix_eviction_policy_choices
    from sglang.srt.mem_cache.utils import _EVICTION_POLICY_FACTORIES

    from real.sglang.policy import kvflow_strategy

    _EVICTION_POLICY_FACTORIES.setdefault(NAME, kvflow_strategy)
    if NAME not in RADIX_EVICTION_POLICY_CHOICES:
        add_radix_eviction_policy_choices([NAME])


def _cache_factory(ctx: Any) -> Any:
    from real.sglang.cache import kvflow_cache_factory  # heavy imports only when selected

    return kvflow_cache_factory(ctx)


def register_backend() -> None:
    from sglang.srt.mem_cache.registry import register_radix_cache_backend, registered_radix_cache_backends

    if NAME not in registered_radix_cache_backends():
        register_radix_cache_backend(NAME, _cache_factory)


def register_hooks() -> None:
    from sglang.srt.plugins.hook_registry import HookRegistry, HookType

    from real.sglang.prefetch import around_get_new_batch_prefill

    HookRegistry.register(SCHEDULER_TARGET, around_get_new_batch_prefill, HookType.AROUND)
    for target in OPENAI_TARGETS:
        HookRegistry.register(target, copy_openai_hints, HookType.AFTER)


def copy_openai_hints(
    result: Any, _serving: Any, request: Any, raw_request: Any = None, *args: Any, **kwargs: Any
) -> None:
    """Give the internal ``GenerateReqInput`` the hints of an OpenAI-style request: a ``kv_hints``
    attribute kept by the request model, else the JSON in the ``X-KVFlow-Hints`` header."""
    adapted = result[0] if isinstance(result, tuple) else result
    if adapted is None or getattr(adapted, "kv_hints", None) is not None:
        return None
    hints = getattr(request, "kv_hints", None)
    if hints is None:
        extra = getattr(request, "model_extra", None) or {}
        hints = extra.get("kv_hints")
    if hints is None and raw_request is not None:
        text = getattr(raw_request, "headers", {}).get(HEADER)
        if text:
            try:
                hints = json.loads(text)
            except ValueError:
                logger.warning("ignoring malformed %s header", HEADER)
    if hints is not None:
        adapted.kv_hints = hints
    return None
