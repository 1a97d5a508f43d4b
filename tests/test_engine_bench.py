"""``python -m real.engine_bench`` in its CPU dry run writes a well-formed engine profile, an engine
model reads it (``engine.measured=PATH`` overrides the sourced rates, so ``copy_link`` changes),
and a bad or missing profile is one line and exit 2."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("torch")
yaml = pytest.importorskip("yaml")

import torch  # noqa: E402

from harness.config_schema import validate_config  # noqa: E402
from harness.engines import ENGINE_CLASSES, conf_engine, engine_keys, load_engine, resolved  # noqa: E402
from harness.engines.measured import PROFILE_FORMAT, RATE_KEYS  # noqa: E402
from harness.errors import SetupError  # noqa: E402
from harness.profile import HARDWARE_KEYS  # noqa: E402
from kvflow.model_spec import load_model_spec  # noqa: E402
from real import engine_bench  # noqa: E402
from real.engine_bench.direct_05 import fit_direct  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SPEC = load_model_spec("llama-3.1-8b")


@pytest.fixture(scope="module")
def dry_profile(tmp_path_factory) -> tuple[Path, dict, float]:
    out = tmp_path_factory.mktemp("engine_bench")
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "real.engine_bench", "--device", "cpu", "--out", str(out), "--dry-run"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    wall_s = time.perf_counter() - t0
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    path = out / engine_bench.PROFILE_NAME
    return path, yaml.safe_load(path.read_text()), wall_s


def test_dry_run_writes_a_well_formed_profile(dry_profile):
    path, prof, wall_s = dry_profile
    assert wall_s < 30  # 5-10 s on the 2-core development VM, torch import included
    assert prof["format"] == PROFILE_FORMAT and prof["device"] == "cpu" and prof["dry_run"] is True
    assert set(engine_bench.ENGINE_PARAMS) <= set(prof) and set(prof["hardware"]) == set(engine_bench.HARDWARE_PARAMS)
    assert list(prof["parts"]) == [name for name, _ in engine_bench.PARTS]
    assert prof["parts"]["bidirectional"] == prof["parts"]["overlap"] == engine_bench.NO_CUDA
    assert all(prof["parts"][p] == "ok" for p in ("path_04", "direct_05", "graph_decode", "kernel_05"))
    for key in ("host_gather_gbps", "pageable_h2d_gbps", "pageable_d2h_gbps", "direct_copy_latency_s"):
        assert isinstance(prof[key], float) and prof[key] > 0, key
    assert prof["kernel_gbps"] is None  # the zero-copy kernel needs CUDA
    raw = prof["raw"]
    assert raw["graph_decode"]["graph"] == raw["kernel_05"]["uva"] == engine_bench.NO_CUDA
    assert raw["graph_decode"]["eager_step_s"] > 0
    tiny = raw["path_04"]["models"]["tiny"]
    assert [p["tokens"] for p in tiny["load"]] == list(engine_bench.DRY_SIZES.tokens)
    pages = [p["page_tokens"] for p in raw["direct_05"]["points"]]
    assert pages[: len(engine_bench.PAGE_SIZES)] == list(engine_bench.PAGE_SIZES)


def test_profile_names_are_the_models_parameter_names():
    """The keys the bench writes are exactly the ones the engine models and profiles read."""
    assert engine_bench.ENGINE_PARAMS == RATE_KEYS
    all_params = {k for kind in ENGINE_CLASSES for k in engine_keys(kind)}
    assert set(RATE_KEYS) <= all_params
    assert set(engine_bench.HARDWARE_PARAMS) <= set(HARDWARE_KEYS)


def test_measured_profile_overrides_the_04_rates(dry_profile):
    path, prof, _ = dry_profile
    base = load_engine(conf_engine("sglang_0.4"))
    measured = load_engine({**conf_engine("sglang_0.4"), "measured": str(path)})
    assert measured.host_gather_gbps == pytest.approx(prof["host_gather_gbps"])
    assert measured.pageable_h2d_gbps == pytest.approx(prof["pageable_h2d_gbps"])
    assert measured.gating == base.gating and measured.write_through_hits == base.write_through_hits
    assert measured.copy_link("h2d", 63.0, 1e-5, SPEC) != base.copy_link("h2d", 63.0, 1e-5, SPEC)
    assert "measured" not in resolved({**conf_engine("sglang_0.4"), "measured": str(path)})


def _profile(tmp_path: Path, **rates) -> Path:
    path = tmp_path / "engine_profile.yaml"
    path.write_text(yaml.safe_dump({"format": PROFILE_FORMAT, "host_gather_gbps": None, **rates}))
    return path


def test_measured_profile_overrides_05_rates_layout_by_layout(tmp_path):
    path = _profile(tmp_path, kernel_gbps={"layer_first": 40.0, "page_first": None}, direct_gbps=30.0)
    conf = conf_engine("sglang_0.5")
    engine = load_engine({**conf, "measured": str(path)})
    assert engine.kernel_gbps == {"layer_first": 40.0, "page_first": conf["kernel_gbps"]["page_first"]}
    assert engine.direct_gbps == 30.0 and engine.direct_copy_latency_s == conf["direct_copy_latency_s"]
    kernel = load_engine({**conf, "host_layout": "layer_first", "measured": str(path)})
    assert kernel.copy_link("h2d", 63.0, 1e-5, SPEC).gbps == 40.0
    null = load_engine({**conf, "measured": None})  # null: the sourced rates
    assert null == load_engine(conf)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "no such file"),
        ("[1, 2", "not readable YAML"),
        ("host_gather_gbps: 3.0\n", "not an engine profile"),
        (f"format: {PROFILE_FORMAT}\nhost_gather_gbps: -1\n", "host_gather_gbps=-1 must be a positive number"),
        (f"format: {PROFILE_FORMAT}\npageable_h2d_gbps: fast\n", "pageable_h2d_gbps='fast'"),
    ],
)
def test_bad_profile_is_one_setup_error(tmp_path, content, message):
    path = tmp_path / "p.yaml"
    if content is not None:
        path.write_text(content)
    with pytest.raises(SetupError, match=message) as info:
        load_engine({**conf_engine("sglang_0.4"), "measured": str(path)})
    assert "\n" not in str(info.value) and str(path) in str(info.value)


def test_unknown_kernel_layout_is_rejected(tmp_path):
    path = _profile(tmp_path, kernel_gbps={"page_last": 5.0})
    with pytest.raises(SetupError, match="kernel_gbps.page_last: unknown host layout"):
        load_engine({**conf_engine("sglang_0.5"), "measured": str(path)})


def test_config_schema_accepts_measured(dry_profile):
    from real.config import compose

    cfg = compose(["engine=sglang_0.4", f"engine.measured={dry_profile[0]}"])
    validate_config(cfg)  # no unknown-key error: resolved() folds the profile in
    cfg["engine"]["measured"] = str(dry_profile[0].parent / "missing.yaml")
    with pytest.raises(SetupError, match="no such file"):
        validate_config(cfg)


def _sim(*overrides: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "sim.cli",
            "policy=hicache",
            "output.report=false",
            f"hydra.run.dir={cwd}/run",
            *overrides,
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_kvflow_sim_with_a_bad_profile_exits_2_with_one_line(tmp_path, dry_profile):
    bad = tmp_path / "bad.yaml"
    bad.write_text(f"format: {PROFILE_FORMAT}\ndirect_gbps: 0\n")
    proc = _sim(f"engine.measured={bad}", cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "direct_gbps=0 must be a positive number" in lines[0], proc.stderr
    ok = _sim("engine=sglang_0.4", f"engine.measured={dry_profile[0]}", cwd=tmp_path)
    assert ok.returncode == 0, ok.stderr[-2000:]


def test_cli_rejects_cuda_without_a_gpu_in_one_line(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    proc = subprocess.run(
        [sys.executable, "-m", "real.engine_bench", "--device", "cuda", "--out", str(tmp_path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1 and "no CUDA" in proc.stderr


def test_direct_fit_recovers_latency_and_rate():
    points = [
        {"page_layers": c, "bytes": b, "time_s": c * 3e-6 + b / 40e9}
        for c, b in ((8192, 4 << 20), (8192, 64 << 20), (2048, 64 << 20), (32, 64 << 20))
    ]
    fit = fit_direct(points)
    assert fit["latency_s"] == pytest.approx(3e-6, rel=1e-6) and fit["gbps"] == pytest.approx(40.0, rel=1e-6)


def test_synthetic_decoder_step_is_deterministic():
    spec = load_model_spec("tiny")
    dec = engine_bench.SyntheticDecoder(spec, torch.device("cpu"), torch.float32, ctx_tokens=16)
    x = torch.randn(1, spec.hidden)
    first, second = dec.decode_step(x), dec.decode_step(x)  # the step rewrites the same slot
    assert first.shape == (1,) and torch.equal(first, second)
    assert dec.prefill_layer(0, torch.randn(8, spec.hidden)).shape == (8, spec.hidden)


def test_a_failing_part_is_recorded_and_the_rest_run(tmp_path):
    def broken(ctx):
        raise RuntimeError("no such\nkernel")

    parts = (("broken", broken), ("graph_decode", engine_bench.part_graph_decode))
    ctx = engine_bench.Ctx(torch.device("cpu"), engine_bench.DRY_SIZES)
    prof = engine_bench.run(ctx, tmp_path, dry_run=True, budget_s=60.0, parts=parts)
    assert prof["parts"] == {"broken": "failed: RuntimeError: no such kernel", "graph_decode": "ok"}
    on_disk = yaml.safe_load((tmp_path / engine_bench.PROFILE_NAME).read_text())
    assert on_disk["parts"] == prof["parts"] and on_disk["raw"]["graph_decode"]["eager_step_s"] > 0
    late = engine_bench.run(ctx, tmp_path, dry_run=True, budget_s=-1.0, parts=parts)
    assert all(status.startswith("skipped: time budget") for status in late["parts"].values())
