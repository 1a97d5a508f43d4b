"""One setup path (harness.setup / harness.profile): profiles are complete or name what they lack,
and the simulator and the real backend get the same capacities, rates and gain per token."""

from __future__ import annotations

from importlib.resources import files

import pytest

from harness.cost_model import CostModel
from harness.errors import SetupError
from harness.profile import HARDWARE_KEYS, NULLABLE_KEYS, check_hardware, conf_profile, load_profile
from harness.setup import build_core, build_trace, capacities, gain_s_per_token, prepare
from kvflow.model_spec import load_model_spec
from real.runner import RealInputError
from sim.runner import SimInputError, load_conf

PROFILES = sorted(p.name[:-5] for p in (files("conf") / "hardware").iterdir() if p.name.endswith(".yaml"))
MEASURED = {
    "prefill": {"a_s": 2e-3, "b_s_per_token": 3e-5, "c_s_per_token_ctx": 4e-9},
    "decode": {"a_s": 5e-3, "b_s_per_seq": 1e-5, "c_s_per_ctx_token": 2e-9},
    "h2d": {"latency_s": 2e-5, "gbps": 20.0},
    "d2h": {"latency_s": 3e-5, "gbps": 18.0},
}


@pytest.mark.parametrize("name", PROFILES)
def test_every_packaged_profile_loads(name: str) -> None:
    hw = conf_profile(name)
    assert set(HARDWARE_KEYS) <= set(hw)
    CostModel.from_config(hw, load_model_spec("llama-3.1-8b")).gpu_kv_capacity_tokens()


@pytest.mark.parametrize("key", [k for k in HARDWARE_KEYS if k != "name"])
def test_a_missing_key_is_named(key: str) -> None:
    hw = {k: v for k, v in load_conf("hardware", "h100").items() if k != key}
    with pytest.raises(SetupError, match=rf"^hardware 'h100': missing key '{key}'$"):
        CostModel.from_config(hw, load_model_spec("tiny"))


def test_null_only_where_it_means_something() -> None:
    hw = load_conf("hardware", "h100")
    for key in NULLABLE_KEYS:
        assert hw[key] is None and check_hardware(hw)
    with pytest.raises(SetupError, match="'pcie_latency_s' is null"):
        check_hardware({**hw, "pcie_latency_s": None})
    with pytest.raises(SetupError, match=r"missing key 'measured.h2d.gbps'"):
        check_hardware({**hw, "measured": {"h2d": {"latency_s": 1e-5}}})


def test_profile_file_errors_are_one_line(tmp_path) -> None:
    with pytest.raises(SetupError, match="no such hardware profile"):
        load_profile(tmp_path / "nope.yaml")
    (tmp_path / "bad.yaml").write_text("- a\n")
    with pytest.raises(SetupError, match="must be a mapping"):
        load_profile(tmp_path / "bad.yaml")


def test_one_error_class() -> None:
    assert SimInputError is SetupError and RealInputError is SetupError


def test_gain_from_a_measured_profile_is_the_real_backends_formula() -> None:
    """The real backend used to compute b + c x context - (latency + 512 KV bytes / rate) / 512."""
    model = load_model_spec("tiny")
    cost = CostModel.from_config({**load_conf("hardware", "h100"), "measured": MEASURED}, model)
    pre, link = MEASURED["prefill"], MEASURED["h2d"]
    old = (
        pre["b_s_per_token"]
        + pre["c_s_per_token_ctx"] * 2048
        - (link["latency_s"] + model.kv_bytes_per_token * 512 / (link["gbps"] * 1e9)) / 512
    )
    assert gain_s_per_token(cost) == pytest.approx(old, rel=1e-9, abs=1e-15)
    assert cost.transfer_gbps("h2d") == link["gbps"]


def test_capacities_and_core_from_one_setup() -> None:
    cfg = {
        "model": "tiny",
        "hardware": load_conf("hardware", "h100"),
        "seed": 0,
        "workload": {
            "name": "s",
            "generator": "sequential",
            "params": {"agents": 2, "runs": 1, "fixed_tokens": 32, "dynamic_tokens": 8, "output_tokens": 4},
        },
        "policy": load_conf("policy", "hicache"),
        "cache": {"gpu_tokens_per_client": 500},
    }
    setup = prepare(cfg)
    assert (setup.gpu_tokens, setup.cpu_tokens) == capacities(cfg, setup.cost, setup.trace)
    assert setup.gpu_tokens == 500 and setup.cpu_tokens > 0
    engine = build_core(cfg, setup, free_ops=False)
    assert engine.cache.config.gpu_capacity_tokens == 500
    with pytest.raises(SetupError, match="can never run"):
        prepare({**cfg, "cache": {"gpu_capacity_tokens": 10}})


def test_import_on_the_fly_errors_name_the_source(tmp_path) -> None:
    with pytest.raises(SetupError, match="no such file or folder"):
        build_trace({"import_format": "chatdev", "import_from": str(tmp_path / "nope")}, 0)
    with pytest.raises(SetupError, match="no chatdev logs found"):
        build_trace({"import_format": "chatdev", "import_from": str(tmp_path)}, 0)


def test_page_size_follows_a_hash_id_traces_block_size_on_a_paged_engine():
    from harness.engines import load_engine
    from harness.setup import page_size
    from sim.runner import load_conf
    from traces.schema import Trace

    weka_like = Trace({"block_tokens": 64}, {}, [])
    generated = Trace({}, {}, [])
    paged, layer_first = load_engine(load_conf("engine", "sglang_0.5")), load_engine(load_conf("engine", "sglang_0.4"))
    assert page_size({"cache": {}}, paged, weka_like) == 64
    assert page_size({"cache": {}}, paged, generated) == paged.page_size == 1
    assert page_size({"cache": {}}, layer_first, weka_like) == 1  # 0.4's layout takes page size 1 only
    assert page_size({"cache": {"page_size": 16}}, paged, weka_like) == 16  # a set value wins
