"""Batch-1 decode predictions against published end-to-end figures (ENGINES.md section 3,
docs/cost_model.md "Against published end-to-end figures"), Llama-3.1-8B bf16.

- H100: SGLang's CI (``test_bench_one_batch_1gpu.py``) requires > 135 tok/s, i.e. a step under
  1/135 s = 7.407 ms: both H100 profiles (spec ``h100``, fitted ``h100_sglang``) must predict less.
  From below, an end-to-end step cannot be shorter than the kernels it runs: aiconfigurator's
  measured h100_sxm step (the committed golden grid) is the floor.
- A100: vLLM on an A100-40GB, 1024 in / 128 out, concurrency 1: ~75 tok/s (13.3 ms a step). Our
  ``a100`` profile is the 80 GB part; its efficiencies are applied to the 40 GB part's HBM2
  (1,555 GB/s, NVIDIA A100 datasheet; 2,039 GB/s on the 80 GB part [S1]) at the mean context of
  that run (1,024 + 64). Tolerance 15%: the figure is another engine on another memory part, and
  "~" rounded; today's prediction is 65.7 tok/s (-12%): vLLM reaches ~77% of the 40 GB part's HBM2
  while two sources on the 80 GB part agree on ~68% (gpt-fast [U1] 68.5%; aiconfigurator's
  measured a100_sxm kernels 68.2%), which is what the profile uses.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from harness.cost_model import CostModel
from kvflow.model_spec import load_model_spec
from sim.runner import load_conf

SGLANG_CI_STEP_S = 1 / 135  # > 135 tok/s, Llama-3.1-8B bf16, batch 1, one H100 (ENGINES.md 3)
VLLM_A100_40GB_STEP_S = 1 / 75  # ~75 tok/s, 1024/128, concurrency 1 (ENGINES.md 3)
A100_40GB_HBM_GBPS = 1555.0  # NVIDIA A100 datasheet, 40 GB HBM2
A100_TOLERANCE = 0.15
GOLDEN = json.loads((Path(__file__).parent / "golden" / "aic_step_times.json").read_text())


def _step_s(hardware: str, context_tokens: int, **override: float) -> float:
    cost = CostModel.from_config({**load_conf("hardware", hardware), **override}, load_model_spec("llama-3.1-8b"))
    return cost.decode_time_s([context_tokens])


def _aic_ms(hardware: str, context_tokens: int) -> float:
    (point,) = (
        p
        for p in GOLDEN["points"]
        if p["model"] == "llama-3.1-8b"
        and p["hardware"] == hardware
        and p["kind"] == "decode"
        and p["batch"] == 1
        and p["context_tokens"] == context_tokens
    )
    return float(point["aic_ms"])


@pytest.mark.parametrize("profile", ["h100", "h100_sglang"])
@pytest.mark.parametrize("context_tokens", [128, 1024, 2048])
def test_h100_batch1_decode_within_sglang_ci_bound(profile, context_tokens):
    """The CI's context is short; the step grows with it, so 2,048 tokens bounds it from above."""
    assert _step_s(profile, context_tokens) < SGLANG_CI_STEP_S


@pytest.mark.parametrize("profile", ["h100", "h100_sglang"])
def test_h100_batch1_decode_not_faster_than_measured_kernels(profile):
    assert _step_s(profile, 2048) * 1e3 >= _aic_ms("h100", 2048)


def test_a100_batch1_decode_near_the_vllm_figure():
    predicted_s = _step_s("a100", 1024 + 64, hbm_gbps=A100_40GB_HBM_GBPS)
    assert predicted_s == pytest.approx(VLLM_A100_40GB_STEP_S, rel=A100_TOLERANCE)


def test_a100_batch1_decode_matches_measured_kernels_on_the_80gb_part():
    """The profile's end-to-end efficiency is what SGLang's kernels reach on that part (within 3%)."""
    assert _step_s("a100", 2048) * 1e3 == pytest.approx(_aic_ms("a100", 2048), rel=0.03)


def test_iteration_overhead_is_added_when_a_profile_sets_one():
    """Every shipped spec profile has 0 (inside the end-to-end efficiency); the key still works."""
    base = _step_s("h100", 1024)
    assert _step_s("h100", 1024, iteration_overhead_s=1e-3) == pytest.approx(base + 1e-3)
    for name in ("h100", "h200", "a100", "a10g", "a10g_paper"):
        assert load_conf("hardware", name)["iteration_overhead_s"] == 0.0
