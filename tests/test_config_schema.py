"""harness.config_schema: every preset passes, every bad value is one line naming the key, and
(fuzzed) any hardware/model value it accepts gives a finite, non-negative cost model."""

from __future__ import annotations

import copy
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from harness.config_schema import SECTIONS, ConfigError, validate_config
from harness.cost_model import CostModel
from harness.errors import SetupError
from harness.profile import load_model
from real.config import compose

EXPERIMENTS = [None, "paper_single", "paper_concurrent", "paper_branches", "paper_peer", "chatdev"]
POLICIES = [
    "kvflow",
    "hicache",
    "sglang",
    "clairvoyant",
    "kvflow_cost",
    "kvflow_gd",
    "kvflow_inferred",
    "kvflow_evict_only",
]
BASE = compose(["policy=kvflow_cost"])


@pytest.mark.parametrize("experiment", EXPERIMENTS)
@pytest.mark.parametrize("policy", [None, *POLICIES])
def test_every_preset_is_valid(experiment, policy):
    overrides = [f"experiment={experiment}"] * bool(experiment) + [f"policy={policy}"] * bool(policy)
    validate_config(compose(overrides))


@pytest.mark.parametrize(
    "override, needle",
    [
        ("hardware.pcie_h2d_gbps=0", "hardware.pcie_h2d_gbps=0: must be a number > 0"),
        ("hardware.pcie_d2h_gbps=0", "hardware.pcie_d2h_gbps=0"),
        ("hardware.hbm_gbps=0", "hardware.hbm_gbps=0"),
        ("hardware.peak_bf16_flops=nan", "hardware.peak_bf16_flops=nan"),
        ("hardware.mem_fraction_static=2", "hardware.mem_fraction_static=2: must be a number > 0 and <= 1"),
        ("engine.chunk_tokens=0", "engine.chunk_tokens=0: must be an integer >= 1"),
        ("engine.max_running_requests=0", "engine.max_running_requests=0"),
        ("policy.cpu_capacity_ratio=-1", "policy.cpu_capacity_ratio=-1: must be a number >= 0"),
        ("sim.bidirectional_penalty=abc", "sim.bidirectional_penalty='abc': must be true or false"),
        ("cache.page_size=[]", "cache.page_size=[]"),
        ("cache.gpu_capacity_tokens=2.5", "cache.gpu_capacity_tokens=2.5: must be an integer"),
        ("+cache.foo=1", "cache.foo=1: unknown key"),
        ("+policy.eviction.foo=1", "policy.eviction.foo=1: unknown key"),
        ("policy.write_policy=sometimes", "policy.write_policy='sometimes': must be one of"),
        ("workload.params.fixed_tokens=nan", "workload.params.fixed_tokens=nan"),
        ("seed=-1", "seed=-1"),
        ("+bogus=1", "bogus=1: unknown key"),
    ],
)
def test_bad_values_name_key_and_value(override, needle):
    with pytest.raises(ConfigError, match=None) as exc:
        validate_config(compose(["policy=kvflow", override]))
    assert needle in str(exc.value) and "\n" not in str(exc.value)


def test_trace_workload_without_a_path():
    with pytest.raises(ConfigError, match="workload.trace is required"):
        validate_config(compose(["workload=trace"]))


VALUES = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(min_value=-(10**6), max_value=10**12),
    st.booleans(),
    st.none(),
    st.text(max_size=5),
    st.lists(st.integers(), max_size=2),
)
HW_MODEL_KEYS = [(s, k) for s in ("hardware", "model") for k in SECTIONS[s] if k not in ("name", "gpu", "calibration")]
ALL_KEYS = [(s, k) for s, rules in SECTIONS.items() for k in rules]


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(HW_MODEL_KEYS), VALUES)
def test_accepted_hardware_gives_a_sane_cost_model(where, value):
    section, key = where
    cfg = copy.deepcopy(BASE)
    cfg[section][key] = value
    try:
        validate_config(cfg)
    except SetupError as exc:
        assert f"{section}.{key}" in str(exc) or f"'{key}'" in str(exc)
        return
    cost = CostModel.from_config(cfg["hardware"], load_model(cfg["model"]))
    times = [
        cost.prefill_time_s([(512, 2048)]),
        cost.decode_time_s([2048, 4096]),
        cost.transfer_time_s(1e6, "h2d"),
        cost.transfer_time_s(1e6, "d2h", other_direction_busy=True),
    ]
    assert all(math.isfinite(t) and t >= 0 for t in times), (where, value, times)


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(ALL_KEYS), VALUES)
def test_any_value_is_accepted_or_named(where, value):
    section, key = where
    cfg = copy.deepcopy(BASE)
    cfg[section][key] = value
    try:
        validate_config(cfg)
    except SetupError as exc:
        message = str(exc)
        assert "\n" not in message and (f"{section}.{key}" in message or f"'{key}'" in message or section in message)
