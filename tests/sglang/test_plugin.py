"""The plug-in through SGLang's own machinery: entry-point loading, CLI flags, OpenAI hint copy,
hint ingestion and boundary tagging on the real (CPU) cache."""

from __future__ import annotations

import argparse
import importlib.metadata as md
import json
from types import SimpleNamespace

import pytest
import sglang.srt.plugins as sgl_plugins
from sgl_kit import Driver, build_cache

from real.sglang import plugin
from real.sglang.hints import HEADER, WorkflowHint, build_envelope
from real.sglang.policy import USERS_ATTR, CorePolicyStrategy

EP = md.EntryPoint(name="kvflow", value="real.sglang.plugin:load", group="sglang.srt.plugins")


def _fresh(monkeypatch):
    from sglang.srt.arg_groups.choices import RADIX_EVICTION_POLICY_CHOICES
    from sglang.srt.mem_cache import registry
    from sglang.srt.mem_cache.utils import _EVICTION_POLICY_FACTORIES

    monkeypatch.setattr(sgl_plugins, "_plugins_loaded", False)
    monkeypatch.setattr(plugin, "_loaded", False)
    monkeypatch.delitem(_EVICTION_POLICY_FACTORIES, "kvflow", raising=False)
    monkeypatch.delitem(registry._RADIX_CACHE_REGISTRY, "kvflow", raising=False)
    if "kvflow" in RADIX_EVICTION_POLICY_CHOICES:
        RADIX_EVICTION_POLICY_CHOICES.remove("kvflow")


def _assert_registered():
    from sglang.srt.arg_groups.choices import RADIX_EVICTION_POLICY_CHOICES
    from sglang.srt.managers.scheduler import Scheduler
    from sglang.srt.mem_cache.registry import registered_radix_cache_backends
    from sglang.srt.mem_cache.utils import get_eviction_strategy

    assert isinstance(get_eviction_strategy("kvflow"), CorePolicyStrategy)
    assert "kvflow" in RADIX_EVICTION_POLICY_CHOICES
    assert "kvflow" in registered_radix_cache_backends()
    assert getattr(Scheduler.get_new_batch_prefill, "__wrapped__", None) is not None


def test_installed_entry_point_loads_through_load_plugins(monkeypatch):
    installed = [ep for ep in md.entry_points(group="sglang.srt.plugins") if ep.value == EP.value]
    if not installed:
        pytest.skip(
            'entry point not registered: add [project.entry-points."sglang.srt.plugins"] '
            'kvflow = "real.sglang.plugin:load" to pyproject.toml and reinstall'
        )
    _fresh(monkeypatch)
    sgl_plugins.load_plugins()
    _assert_registered()


def test_load_plugins_runs_the_entry_point(monkeypatch):
    """Same path with the entry point supplied to SGLang's discovery (works before pyproject has it)."""
    _fresh(monkeypatch)
    monkeypatch.setattr(sgl_plugins, "entry_points", lambda group: [EP] if group == EP.group else [])
    sgl_plugins.load_plugins()
    _assert_registered()
    plugin.load()  # idempotent


def test_cli_flags_parse():
    from sglang.srt.server_args import ServerArgs

    plugin.load()
    parser = argparse.ArgumentParser()
    ServerArgs.add_cli_args(parser)
    args = parser.parse_args(
        [
            "--model-path",
            "dummy",
            "--radix-cache-backend",
            "kvflow",
            "--radix-eviction-policy",
            "kvflow",
            "--enable-hierarchical-cache",
            "--radix-eviction-policy-config",
            "{}",
        ]
    )
    assert args.radix_cache_backend == "kvflow" and args.radix_eviction_policy == "kvflow"
    assert args.enable_hierarchical_cache
    with pytest.raises(SystemExit):
        parser.parse_args(["--model-path", "dummy", "--radix-eviction-policy", "kvflowx"])


def test_openai_header_hints_reach_the_internal_request():
    hint = WorkflowHint("c1", "coder", 12, {"coder": 0, "reviewer": 1})
    adapted = SimpleNamespace(kv_hints=None)
    raw = SimpleNamespace(headers={HEADER: json.dumps(build_envelope(hint, "m1"))})
    plugin.copy_openai_hints((adapted, None), object(), SimpleNamespace(), raw)
    assert adapted.kv_hints["actions"][0]["payload"]["agent_id"] == "coder"
    from sglang.srt.managers.kv_hints import decode_kv_hints_envelope

    assert decode_kv_hints_envelope(adapted.kv_hints).message_id == "m1"


def test_hints_ingested_and_boundary_split_tagged():
    cache, allocator, pool = build_cache()
    driver = Driver(cache, allocator, pool)
    driver.request(list(range(1, 13)), WorkflowHint("c1", "A", 6, {"A": 0, "B": 1}))
    assert cache.strategy.policy.steps[("c1", "B")] == 1
    assert ("c1", "B") in cache.prefetch_wanted
    child = next(iter(cache.tree_core.root_node.children.values()))
    assert len(child.key) == 6 and getattr(child, USERS_ATTR) == {("c1", "A")}  # split at the mark
    tail = next(iter(child.children.values()))
    assert tail.kvflow_suffix and not getattr(tail, USERS_ATTR, None)


def test_boundary_inferred_from_history_without_a_mark():
    cache, allocator, pool = build_cache()
    driver = Driver(cache, allocator, pool)
    fixed = list(range(1, 9))
    driver.request(fixed + [50, 51], WorkflowHint("c1", "A", None, {"A": 0}))
    driver.request(fixed + [60, 61, 62], WorkflowHint("c1", "A", None, {"A": 0}))
    assert len(cache.boundaries[("c1", "A")]) == len(fixed)


def test_prefetch_fits_spares_what_is_needed_sooner():
    cache, allocator, pool = build_cache()
    driver = Driver(cache, allocator, pool)
    driver.request(list(range(1, 9)) + [90], WorkflowHint("c1", "A", 8, {"A": 1, "B": 3}))
    driver.request(list(range(20, 28)) + [91], WorkflowHint("c1", "B", 8, {"A": 1, "B": 3}))
    node_a = cache.tree_core.node_by_id(cache._walk(cache.boundaries[("c1", "A")]).id)
    free = cache._component_available_size(
        __import__("sglang.srt.mem_cache.unified_cache.components.base", fromlist=["ComponentType"]).ComponentType.FULL
    )
    # suffixes (2 tokens) and B's prompt (8, farther away) may go; A's own prompt may not
    assert cache.prefetch_fits(node_a.id, free + 10)
    assert not cache.prefetch_fits(node_a.id, free + 11)
