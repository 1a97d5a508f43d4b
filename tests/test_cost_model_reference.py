"""Our cost model against aiconfigurator's measured operator database (a committed golden grid,
``tests/golden/aic_step_times.json``; regenerate with ``python benchmarks/aic_reference.py``).

Spec-derived profiles (h100, h200, a100): the band is what the model meets today, so a change that makes it worse fails; tighten it as the
model improves (target: within 10% on every point once scheduler overhead is modelled apart).
Known today (docs/cost_model.md): prefill 0.81-1.30x (small chunks fast, long ones slow: one
compute efficiency for every shape), decode 0.79-1.28x (one memory efficiency; the 1 ms per-iteration
overhead that made it 1.15-1.3x slow is gone: the efficiency is an end-to-end figure), mixed steps
too cheap (max over the whole step instead of kernel phases one after another).

Measured profiles (``conf/hardware/*_sglang.yaml``, ``benchmarks/aic_fit.py``): their kernel time
(scheduler overhead left out: the database does not model it) must stay within the fit error each
profile records, per kind of iteration.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from harness.cost_model import CostModel
from kvflow.model_spec import load_model_spec
from sim.runner import load_conf

GOLDEN = Path(__file__).parent / "golden" / "aic_step_times.json"
DATA = json.loads(GOLDEN.read_text())
GPUS = ("h100", "h200", "a100")
# spec-derived profiles, ours / aiconfigurator: (lowest, highest) allowed per (kind, GPU family)
BANDS = {
    ("prefill", "h"): (0.80, 1.21),
    ("decode", "h"): (1.00, 1.29),
    ("mixed", "h"): (0.70, 1.15),
    ("prefill", "a100"): (0.97, 1.30),
    ("decode", "a100"): (0.78, 1.05),
    ("mixed", "a100"): (0.63, 1.17),
}
KINDS = ("prefill", "decode", "mixed")


def _ours_ms(point: dict, hardware: str | None = None, kernel_only: bool = False) -> float:
    hw = load_conf("hardware", hardware or point["hardware"])
    cost = CostModel.from_config(hw, load_model_spec(point["model"]))
    chunks = [(point["new_tokens"], point["cached_tokens"])] if point["kind"] != "decode" else []
    contexts = [point["context_tokens"]] * point["batch"] if point["kind"] != "prefill" else []
    timer = cost.kernel_time_s if kernel_only else cost.iteration_time_s
    return timer(chunks, contexts) * 1e3


def test_golden_grid_covers_both_models_and_gpus():
    combos = {(p["model"], p["hardware"]) for p in DATA["points"]}
    assert combos == {(m, h) for m in ("llama-3.1-8b", "qwen2.5-32b") for h in GPUS}
    assert DATA["versions"]["aiconfigurator-core"]
    assert {p["kind"] for p in DATA["points"]} == set(KINDS)


@pytest.mark.parametrize("kind", KINDS)
def test_cost_model_within_band_of_measured_database(kind):
    outside = []
    for point in (p for p in DATA["points"] if p["kind"] == kind):
        low, high = BANDS[kind, "a100" if point["hardware"] == "a100" else "h"]
        ratio = _ours_ms(point) / point["aic_ms"]
        if not low <= ratio <= high:
            outside.append((point, round(ratio, 3)))
    assert not outside, f"{len(outside)} {kind} points outside their band: {outside[:3]}"


@pytest.mark.parametrize("gpu", GPUS)
def test_fitted_profile_within_its_recorded_fit_error(gpu):
    """Every golden point of the profile's model, kernel time only, within the recorded max error."""
    prof = load_conf("hardware", f"{gpu}_sglang")
    assert prof["calibration"]["versions"]["aiconfigurator-core"] == DATA["versions"]["aiconfigurator-core"]
    errors = prof["calibration"]["fit_error"]
    outside = []
    for point in DATA["points"]:
        if point["hardware"] != gpu or point["model"] != prof["measured_model"]:
            continue
        err = abs(_ours_ms(point, f"{gpu}_sglang", kernel_only=True) / point["aic_ms"] - 1)
        if err > errors[point["kind"]]["max"] + 1e-4:  # + the rounding of the stored coefficients
            outside.append((point, round(err, 4)))
    assert not outside, f"{gpu}_sglang: {len(outside)} points beyond the recorded fit error: {outside[:3]}"


def test_fitted_profile_adds_scheduler_overhead_per_iteration_and_step():
    prof = load_conf("hardware", "h100_sglang")
    cost = CostModel.from_config(prof, load_model_spec("llama-3.1-8b"))
    assert prof["scheduler_overhead_s"] > 0
    ctx = [2048] * 4
    assert cost.iteration_time_s([(512, 0)], ctx) - cost.kernel_time_s([(512, 0)], ctx) == pytest.approx(
        prof["scheduler_overhead_s"]
    )
    runs = cost.decode_run_times_s(ctx, 3)
    assert runs[-1] == pytest.approx(sum(cost.decode_time_s([c + k for c in ctx]) for k in range(3)))
    with pytest.raises(ValueError, match="measured for model 'llama-3.1-8b', not 'qwen2.5-32b'"):
        CostModel.from_config(prof, load_model_spec("qwen2.5-32b"))
