"""KVFlow as the paper describes it (issue 14 item 4): dynamic suffixes and outputs are never backed
up (KVFLOW.md 2.4: ``policy.backup_dynamic=false``), and a CPU-only prefix nobody prefetched is loaded
and then dispatched (2.6: ``policy.load_then_dispatch=true``); both options restore the old behaviour."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

import kvflow
from harness.engines import conf_engine, load_engine
from harness.setup import data_path
from kvflow.build import build_engine
from kvflow.engine import Engine, Request
from kvflow.ops import Load, Offload
from kvflow.write_policy import WritePolicy
from sim.runner import load_conf, simulate
from tests.golden.cases import cases, pinned

BEFORE = json.loads((Path(__file__).parent / "fixtures" / "kvflow_before_paper_rules.json").read_text())
OLD_RULES = {"backup_dynamic": True, "load_then_dispatch": False}


def core(policy: str, gpu_tokens: int = 200, **overrides: Any) -> Engine:
    return build_engine(
        {**load_conf("policy", policy), **overrides},
        gpu_tokens=gpu_tokens,
        cpu_tokens=4 * gpu_tokens,
        kv_bytes_per_token=1,
        chunk_tokens=1024,
        h2d_gbps=1.0,
        gain_s_per_token=lambda: 1e-4,  # (kvflow_cost, kvflow_gd)
        data_path=data_path(load_engine(conf_engine("sglang_0.5"))),  # write-through on the 1st hit
    )


def drain(eng: Engine) -> list[Any]:
    ops = eng.take_ops()
    for op in ops:
        eng.complete_op(op, 0.0)
    return ops


def serve(eng: Engine, request: Request) -> list[Any]:
    """Run one request to completion, acknowledging every op at once; returns the ops."""
    eng.submit(request, 0.0)
    ops = []
    while eng.has_work():
        it = eng.step(0.0)
        ops += drain(eng)
        if it is not None:
            eng.finish(it, 0.0)
    return ops + drain(eng)


@pytest.mark.parametrize("policy", ["kvflow", "kvflow_evict_only", "kvflow_inferred"])
def test_the_paper_rules_are_the_kvflow_familys_defaults(policy: str) -> None:
    eng = core(policy)
    assert eng.config.load_then_dispatch and not eng.cache.config.backup_dynamic
    old = core(policy, **OLD_RULES)
    assert not old.config.load_then_dispatch and old.cache.config.backup_dynamic
    for other in ("hicache", "sglang", "clairvoyant", "kvflow_cost", "kvflow_gd"):
        eng = core(other)
        assert not eng.config.load_then_dispatch and eng.cache.config.backup_dynamic, other


def test_only_the_fixed_prompt_is_backed_up() -> None:
    prompt = list(range(30))  # 20 fixed + 10 dynamic, 5 output tokens
    for overrides, backed in (({}, [20]), ({"backup_dynamic": True}, [20, 10, 5])):
        eng = core("kvflow", **overrides)
        ops = serve(eng, Request("r1", "c", "a", prompt, 20, 5))
        assert [op.tokens for op in ops if isinstance(op, Offload)] == backed


@pytest.mark.skipif(kvflow.COMPILED, reason="patches a core method: runs with the pure-Python core only")
def test_no_suffix_or_output_is_ever_offloaded_in_a_run(monkeypatch: pytest.MonkeyPatch) -> None:
    seen = {"fixed": 0, "dynamic": 0}
    queue = WritePolicy._queue_offload

    def record(self: WritePolicy, node: Any, free_gpu_after: bool) -> None:
        seen["dynamic" if node.suffix and not node.users else "fixed"] += 1
        queue(self, node, free_gpu_after)

    monkeypatch.setattr(WritePolicy, "_queue_offload", record)
    name, cfg, trace = next(c for c in cases() if c[0] == "concurrent/kvflow")
    simulate(cfg, trace=trace)
    assert seen["fixed"] > 0 and seen["dynamic"] == 0
    seen.update(fixed=0, dynamic=0)
    simulate({**cfg, "policy": {**cfg["policy"], "backup_dynamic": True}}, trace=trace)
    assert seen["dynamic"] > 0  # the option backs them up again


def _cpu_only_prefix(eng: Engine, fixed: list[int]) -> None:
    serve(eng, Request("r1", "c", "a", fixed + [900], len(fixed), 1))
    eng.cache.evict_gpu(eng.cache.config.gpu_capacity_tokens)
    match = eng.cache.match(fixed, touch=False)
    assert (match.gpu_tokens, match.cpu_tokens) == (0, len(fixed))


def test_a_cpu_only_prefix_is_loaded_then_dispatched_while_another_request_runs() -> None:
    fixed = list(range(40))
    eng = core("kvflow_evict_only")  # no prefetch: nobody loads the prefix ahead
    _cpu_only_prefix(eng, fixed)
    eng.submit(Request("x", "c", "x", list(range(500, 520)), 20, 50), 0.0)
    it = eng.step(0.0)
    eng.finish(it, 0.0)  # x prefilled: it decodes from now on
    eng.submit(Request("r2", "c", "a", fixed + [901, 902], 40, 3), 0.0)
    it = eng.step(0.0)
    assert it is not None and not it.prefill and not it.blocking_loads and [r.request_id for r in it.decode] == ["x"]
    loads = [op for op in eng.take_ops() if isinstance(op, Load)]
    assert [(op.tokens, op.prefetch) for op in loads] == [(40, False)]  # a background op
    assert [r.request_id for r in eng.loading] == ["r2"] and eng.loading[0].reserved_tokens == 2 + 3
    eng.finish(it, 1.0, decode_steps_done=1)
    it = eng.step(1.0)  # the load is still running: r2 waits, x runs
    assert not it.prefill and eng.loading
    eng.finish(it, 2.0, decode_steps_done=1)
    eng.complete_op(loads[0], 2.5)
    it = eng.step(3.0)
    (chunk,) = it.prefill
    r2 = chunk.request
    assert r2.request_id == "r2" and chunk.context_tokens == 40 and not it.blocking_loads and not eng.loading
    assert (r2.hit_gpu_tokens, r2.loaded_cpu_tokens, r2.loaded_bytes) == (0, 40, 40)
    assert r2.stalled_s == pytest.approx(3.0) and r2.admit_s == 3.0  # waited from admission to dispatch
    eng.cache.check_invariants()


def test_the_option_loads_inside_the_requests_own_prefill_as_hicache() -> None:
    fixed = list(range(40))
    eng = core("kvflow_evict_only", load_then_dispatch=False)
    _cpu_only_prefix(eng, fixed)
    eng.submit(Request("r2", "c", "a", fixed + [901, 902], 40, 3), 0.0)
    it = eng.step(0.0)
    assert [c.request.request_id for c in it.prefill] == ["r2"]
    assert [op.tokens for op in it.blocking_loads] == [40]


OLD_CASES = [c for c in cases() if c[0] in BEFORE]


@pytest.mark.parametrize("name,cfg,trace", OLD_CASES, ids=[c[0] for c in OLD_CASES])
def test_the_options_restore_the_old_results(name: str, cfg: dict[str, Any], trace: Any) -> None:
    """backup_dynamic=true + load_then_dispatch=false reproduce the golden numbers pinned before
    the paper rules became the default (tests/fixtures/kvflow_before_paper_rules.json)."""
    got = pinned(simulate({**cfg, "policy": {**cfg["policy"], **OLD_RULES}}, trace=trace).summary)
    for key, value in BEFORE[name].items():
        if isinstance(value, float):
            assert math.isclose(got[key], value, rel_tol=1e-9, abs_tol=1e-12), (name, key, got[key], value)
        else:
            assert got[key] == value, (name, key, got[key], value)
