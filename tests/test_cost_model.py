"""Cost model against hand calculations (REFERENCE_NUMBERS.md sections 1, 5, 6)."""

import dataclasses

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from harness.cost_model import CostModel
from kvflow.model_spec import load_model_spec
from sim.runner import load_conf


def hw(name: str) -> dict:
    return load_conf("hardware", name)


@pytest.fixture
def h100_llama() -> CostModel:
    return CostModel.from_config(hw("h100"), load_model_spec("llama-3.1-8b"))


def test_prefill_is_compute_bound_roofline(h100_llama):
    # 1000 new tokens, no context: 2 N_mm n + a n(n+1)/2 over 989 TF x 0.6 (no separate overhead:
    # iteration_overhead_s is 0, docs/cost_model.md "Profile values").
    flops = 15_009_316_864 * 1000 + 524_288 * (1000 * 1001 / 2)
    expect = flops / (989e12 * 0.6)
    assert h100_llama.prefill_time_s([(1000, 0)]) == pytest.approx(expect, rel=1e-12)
    # a chunk after a 4096-token prefix adds a * n * p attention FLOPs
    flops2 = flops + 524_288 * 1000 * 4096
    assert h100_llama.prefill_time_s([(1000, 4096)]) == pytest.approx(flops2 / (989e12 * 0.6))


def test_decode_is_memory_bound_roofline(h100_llama):
    ctx = [1000, 3000]
    nbytes = 16_060_522_496 + 131072 * 4000
    expect = nbytes / (3350e9 * 0.685)
    assert h100_llama.decode_time_s(ctx) == pytest.approx(expect, rel=1e-12)


def test_decode_run_matches_step_by_step(h100_llama):
    ctx = [100, 2000, 5]
    run = h100_llama.decode_run_times_s(ctx, 50)
    step = np.cumsum([h100_llama.decode_time_s([c + k for c in ctx]) for k in range(50)])
    assert np.allclose(run, step, rtol=1e-12)


def test_empty_iteration_costs_nothing(h100_llama):
    assert h100_llama.iteration_time_s([], []) == 0.0


def test_transfer_times_with_the_efficiency_override():
    """``pcie_efficiency`` set: the one-knob model, whatever the engine (docs/engines.md)."""
    h100_llama = CostModel.from_config({**hw("h100"), "pcie_efficiency": 0.83}, load_model_spec("llama-3.1-8b"))
    gib = 1 << 30
    t = h100_llama.transfer_time_s(gib, "h2d")
    assert t == pytest.approx(1e-5 + gib / (63e9 * 0.83))
    assert h100_llama.transfer_time_s(gib, "h2d", other_direction_busy=True) == pytest.approx(
        1e-5 + gib / (63e9 * 0.83 * 0.5)
    )
    assert h100_llama.transfer_time_s(gib, "d2h", other_direction_busy=True) == pytest.approx(t)
    with pytest.raises(ValueError, match="sideways"):
        h100_llama.transfer_time_s(1, "sideways")


def test_paper_a10g_link_is_2_gbps():
    cm = CostModel.from_config(hw("a10g_paper"), load_model_spec("llama-3.1-8b"))
    # 8192-token Llama-3.1-8B prefix = 1 GiB -> ~0.54 s at 2 GB/s: the link caps sglang_0.5's
    # kernel (19.6 GB/s), which launches once per layer (32 x 10 us)
    assert cm.transfer_time_s(8192 * 131072, "h2d") == pytest.approx(32 * 1e-5 + 8192 * 131072 / 2e9)


def test_capacity_arithmetic():
    cm = CostModel.from_config(hw("h100"), load_model_spec("qwen2.5-32b"))
    free = 81559 * 2**20 * 0.87 - 32_763_876_352 * 2
    assert cm.gpu_kv_capacity_tokens() == int(free // 262144)
    assert 30_000 < cm.gpu_kv_capacity_tokens() < 40_000
    over = dict(hw("h100"), kv_capacity_tokens=12345)
    assert CostModel.from_config(over, load_model_spec("qwen2.5-32b")).gpu_kv_capacity_tokens() == 12345


def test_model_that_does_not_fit_is_an_error():
    cm = CostModel.from_config(hw("a10g"), load_model_spec("qwen2.5-32b"))
    with pytest.raises(ValueError, match="does not fit"):
        cm.gpu_kv_capacity_tokens()


def test_measured_profile_overrides_spec(h100_llama):
    prof = dict(hw("h100"))
    prof["measured"] = {
        "prefill": {"a_s": 0.01, "b_s_per_token": 1e-5, "c_s_per_token_ctx": 1e-9},
        "decode": {"a_s": 0.02, "b_s_per_seq": 1e-4, "c_s_per_ctx_token": 1e-7},
        "h2d": {"latency_s": 2e-5, "gbps": 10.0},
    }
    cm = CostModel.from_config(prof, load_model_spec("llama-3.1-8b"))
    assert cm.prefill_time_s([(100, 50), (10, 0)]) == pytest.approx(0.01 + 1e-5 * 110 + 1e-9 * 5000)
    assert cm.decode_time_s([10, 20]) == pytest.approx(0.02 + 2e-4 + 3e-6)
    assert cm.decode_run_times_s([10, 20], 2)[-1] == pytest.approx(2 * (0.02 + 2e-4) + 1e-7 * (30 + 32))
    assert cm.transfer_time_s(1e9, "h2d") == pytest.approx(2e-5 + 0.1)
    assert cm.transfer_time_s(1e9, "d2h") == h100_llama.transfer_time_s(1e9, "d2h")  # not measured: spec


def test_overlapped_load(h100_llama):
    assert h100_llama.overlapped_load_time_s(1.0, 0.0) == 1.0
    assert h100_llama.overlapped_load_time_s(1.0, 3.2) == pytest.approx(3.2 + 3.2 / 32)
    assert h100_llama.overlapped_load_time_s(1.0, 0.32) == pytest.approx(1.0 + 0.01)


def _with(name: str, **keys) -> dict:
    return {**hw(name), **keys}


def test_new_keys_default_to_the_model_before_them():
    """Profiles without scheduler_overhead_s / mixed_step time every iteration as before."""
    llama = load_model_spec("llama-3.1-8b")
    old = CostModel.from_config(hw("h100"), llama)
    explicit = CostModel.from_config(_with("h100", scheduler_overhead_s=0.0, mixed_step="max"), llama)
    for chunks, ctx in (([(512, 4096)], [2048] * 64), ([(8192, 0)], []), ([], [8192] * 8)):
        assert old.iteration_time_s(chunks, ctx) == explicit.iteration_time_s(chunks, ctx)


def test_mixed_step_sum_times_kernel_phases_one_after_another():
    """sum: GEMMs over every token, then prefill attention, then decode attention, each its own
    roofline: never cheaper than one max over the step, dearer when the phases are bound differently."""
    llama = load_model_spec("llama-3.1-8b")
    m = llama
    both = CostModel.from_config(_with("h100", mixed_step="sum"), llama)
    one = CostModel.from_config(hw("h100"), llama)
    chunks, ctx = [(512, 4096)], [2048] * 64
    assert both.iteration_time_s(chunks, ctx) > one.iteration_time_s(chunks, ctx)
    peak, bw = 989e12 * 0.6, 3350e9 * 0.685
    linear = max((512 + 64) * m.matmul_flops_per_token / peak, m.weight_bytes / bw)
    pre = max(
        m.attn_flops_per_ctx_token * (512 * 4096 + 512 * 513 / 2) / peak, (4096 + 512) * m.kv_bytes_per_token / bw
    )
    dec = max(m.attn_flops_per_ctx_token * 64 * 2048 / peak, 64 * 2048 * m.kv_bytes_per_token / bw)
    assert both.iteration_time_s(chunks, ctx) == pytest.approx(linear + pre + dec, rel=1e-12)
    # a memory-bound decode step reads the same bytes either way
    assert both.decode_time_s([2048] * 4) == pytest.approx(one.decode_time_s([2048] * 4), rel=1e-12)
    run = both.decode_run_times_s([100, 5000], 20)
    assert run == pytest.approx(np.cumsum([both.decode_time_s([100 + k, 5000 + k]) for k in range(20)]))


def test_scheduler_overhead_is_added_per_iteration_and_per_decode_step():
    llama = load_model_spec("llama-3.1-8b")
    base = CostModel.from_config(hw("h100"), llama)
    more = CostModel.from_config(_with("h100", scheduler_overhead_s=5e-4), llama)
    assert more.prefill_time_s([(1000, 0)]) - base.prefill_time_s([(1000, 0)]) == pytest.approx(5e-4)
    assert more.kernel_time_s([(1000, 0)], [10]) == base.iteration_time_s([(1000, 0)], [10])
    diff = np.asarray(more.decode_run_times_s([100], 10)) - np.asarray(base.decode_run_times_s([100], 10))
    assert diff == pytest.approx(5e-4 * np.arange(1, 11))


def test_bad_mixed_step_is_a_one_line_error():
    with pytest.raises(ValueError, match="hardware 'h100': mixed_step='mean'; valid: max, sum"):
        CostModel.from_config(_with("h100", mixed_step="mean"), load_model_spec("llama-3.1-8b"))


def test_measured_prefill_own_attention_term():
    """d_s_per_token_pair charges the new tokens' causal attention among themselves, n(n+1)/2."""
    measured = {"prefill": {"a_s": 1e-3, "b_s_per_token": 1e-5, "c_s_per_token_ctx": 1e-9, "d_s_per_token_pair": 2e-9}}
    cost = CostModel.from_config(_with("h100", measured=measured), load_model_spec("llama-3.1-8b"))
    n, p = 4096, 1024
    assert cost.prefill_time_s([(n, p)]) == pytest.approx(1e-3 + 1e-5 * n + 1e-9 * n * p + 2e-9 * n * (n + 1) / 2)
    measured["prefill"].pop("d_s_per_token_pair")  # absent: the calibrate form, no own-attention term
    cost = CostModel.from_config(_with("h100", measured=measured), load_model_spec("llama-3.1-8b"))
    assert cost.prefill_time_s([(n, p)]) == pytest.approx(1e-3 + 1e-5 * n + 1e-9 * n * p)


@settings(max_examples=80, deadline=None)
@given(
    st.lists(st.integers(min_value=1, max_value=200_000), min_size=1, max_size=64),
    st.integers(min_value=1, max_value=600),
    st.sampled_from(["h100", "h100_sglang", "a100_sglang", "a10g"]),
    st.sampled_from(["max", "sum"]),
    st.sampled_from([0.0, 3.7e-4]),
)
def test_decode_step_times_loop_equals_the_numpy_form_bit_for_bit(contexts, steps, name, mixed_step, sched_s):
    """harness.step_times gives exactly the floats of the numpy expression (== , not approx): the
    simulator's decode run times, and so every result, do not depend on which one ran."""
    cm = CostModel.from_config(
        _with(name, mixed_step=mixed_step, scheduler_overhead_s=sched_s), load_model_spec("llama-3.1-8b")
    )
    numpy_form = np.cumsum(cm._decode_kernel_s(contexts, steps) + cm.scheduler_overhead_s).tolist()
    assert cm._decode_ends_loop_s(contexts, steps) == numpy_form
    assert list(cm.decode_run_times_s(contexts, steps)) == numpy_form


def test_a_subclass_kernel_is_used_for_its_decode_runs():
    """A cost model that overrides the decode kernel (aiconfigurator's) gets its own step times,
    never the built-in kernel's loop; a subclass that does not keeps the loop."""

    class Doubled(CostModel):
        def _decode_kernel_s(self, contexts, steps):
            return 2 * super()._decode_kernel_s(contexts, steps)

    class Plain(CostModel):
        pass

    base = CostModel.from_config(hw("h100"), load_model_spec("llama-3.1-8b"))
    fields = {f.name: getattr(base, f.name) for f in dataclasses.fields(base)}
    doubled, plain = Doubled(**fields), Plain(**fields)
    assert doubled.decode_run_times_s([100, 200], 5) == pytest.approx(
        [2 * t for t in base.decode_run_times_s([100, 200], 5)]
    )
    assert plain.decode_run_times_s([100, 200], 5) == base.decode_run_times_s([100, 200], 5)
    assert not Doubled._builtin_decode_kernel and Plain._builtin_decode_kernel
