"""``python -m sim.paper``: the one-parameter fit, the mapping of settings to the paper's numbers,
a --quick end-to-end run and its files, bad arguments."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest

from analysis.paper import REFERENCES, matches
from sim import paper
from sim.paper import Setting, fit_one, fit_reference, log_grid, predict


def test_fit_finds_the_root_of_a_monotone_function():
    evaluated = []

    def f(x: float) -> float:
        evaluated.append(x)
        return 1 + math.log(x)  # 1.24 at x = e^0.24

    fit = fit_one(f, 1.24, log_grid(0.125, 64, 19), rel_tol=1e-4)
    assert fit.value == pytest.approx(math.exp(0.24), rel=1e-4)
    assert fit.achieved == pytest.approx(1.24, abs=1e-4)
    assert len(fit.brackets) == 1 and fit.method.startswith("bisection")
    assert len(fit.curve) == 19 and fit.evaluations == len(set(evaluated))  # memoised


def test_fit_takes_the_highest_crossing_and_reports_every_bracket():
    def bump(x: float) -> float:
        return 1.5 - (math.log(x) - 1) ** 2  # crosses 1.24 twice, at e^(1 -+ 0.51)

    fit = fit_one(bump, 1.24, log_grid(0.125, 64, 19), rel_tol=1e-4)
    assert len(fit.brackets) == 2
    assert fit.value == pytest.approx(math.exp(1 + math.sqrt(0.26)), rel=1e-3)


def test_fit_without_a_crossing_minimises_the_distance():
    fit = fit_one(lambda x: 2 + math.log(x) ** 2, 1.24, log_grid(0.125, 64, 19), rel_tol=1e-4)
    assert not fit.brackets and fit.method.startswith("golden")
    assert fit.value == pytest.approx(1.0, rel=1e-3)


def _setting(label: str, ctx: dict, **latency_s: float) -> Setting:
    cfg = {
        "workload": {"generator": ctx.pop("generator"), "params": ctx},
        "hardware": {"name": ctx.pop("hardware")},
        "model": {"name": ctx.pop("model")},
    }
    return Setting(label, {}, {"any": cfg}, None, dict(latency_s))


def _seq(hw: str, model: str, fixed: int, out: int) -> dict:
    return dict(
        generator="sequential", hardware=hw, model=model, fixed_tokens=fixed, dynamic_tokens=32, output_tokens=out
    )


def test_rows_map_to_the_papers_numbers():
    """Exact settings give their ratio, "up to" the max, "avg" the mean, the ablation 8192/32 only."""
    a10g = _setting("a", _seq("a10g_paper", "llama-3.1-8b", 8192, 32), sglang=30.0, hicache=20.0, kvflow=10.0)
    h4096 = _setting("b", _seq("h100", "qwen2.5-32b", 4096, 32), sglang=14.0, hicache=12.0, kvflow=10.0)
    h8192 = _setting(
        "c", _seq("h100", "qwen2.5-32b", 8192, 32), sglang=16.0, hicache=13.0, kvflow=10.0, kvflow_evict_only=12.0
    )
    conc = [
        _setting(f"w{w}", dict(generator="concurrent", hardware="h100", model="llama-3.1-8b", fixed_tokens=1024,
                               dynamic_tokens=256, output_tokens=256, workflows=w), sglang=10.0, hicache=h, kvflow=5.0)
        for w, h in ((32, 8.0), (64, 12.0))
    ]  # fmt: skip
    rows = {
        (r.ref.setting, r.ref.policy, r.ref.baseline): r
        for r in (predict(ref, [a10g, h4096, h8192, *conc]) for ref in REFERENCES)
    }
    assert len(rows) == len(REFERENCES)
    assert rows["single, A10G, Llama-3.1-8B, 8192/32/32", "kvflow", "hicache"].predicted == 2.0
    assert rows["single, A10G, Llama-3.1-8B, 8192/32/32", "kvflow", "sglang"].predicted == 3.0
    fit_row = rows["single, H100, Qwen2.5-32B, 4096/32/32", "kvflow", "hicache"]
    assert fit_row.fitted and fit_row.predicted == 1.2 and fit_row.ref.speedup == 1.24
    assert rows["single, average at 8192 fixed", "kvflow", "sglang"].predicted == pytest.approx((3.0 + 1.6) / 2)
    assert rows["ablation on H100: eviction only", "kvflow_evict_only", "hicache"].predicted == pytest.approx(13 / 12)
    assert rows["ablation on H100: eviction + prefetch", "kvflow", "hicache"].predicted == pytest.approx(1.3)
    assert rows["concurrency", "kvflow", "hicache"].predicted == 2.4  # up to: the max
    hicache_row = rows["HiCache at 1024 fixed x 64 workflows", "hicache", "sglang"]
    assert hicache_row.predicted == pytest.approx(10 / 12) and hicache_row.settings == ["w64"]
    peer = rows["PEER-style", "kvflow", "hicache"]
    assert peer.predicted is None and peer.within is None  # no PEER setting given
    assert abs(rows["concurrency", "kvflow", "sglang"].rel_error - (2.0 / 1.25 - 1)) < 1e-12
    assert sum(r.fitted for r in rows.values()) == 1


def test_fit_setting_is_the_fit_reference_and_presets_cover_every_number():
    (cfg,) = paper.compose_all([(paper.FIT_EXPERIMENT, paper.FIT_SETTING, "kvflow")])
    ctx = {
        "generator": cfg["workload"]["generator"],
        "hardware": cfg["hardware"]["name"],
        "model": cfg["model"]["name"],
    }
    ctx.update(cfg["workload"]["params"])
    assert [r for r in matches(ctx, "kvflow", "hicache") if r.qualifier != "ablation"] == [fit_reference()]
    assert cfg["engine"]["kind"] == "sglang_0.4" and fit_reference().speedup == 1.24
    sweeps = {e: paper.sweep_points(e, quick=False) for e in paper.EXPERIMENTS}
    assert {k: v for k, v in paper.FIT_SETTING.items()} in sweeps["paper_single"]
    assert len(sweeps["paper_single"]) == 8 and len(sweeps["paper_concurrent"]) == 8
    assert set(paper.policies_of("paper_single")) == {"sglang", "hicache", "kvflow", "kvflow_evict_only"}


def test_quick_run_writes_the_files_and_the_marked_block(tmp_path):
    md = tmp_path / "results.md"
    md.write_text(f"# Results\n\nhand text\n\n{paper.BEGIN}\nold\n{paper.END}\n\nafter\n")
    assert paper.main(["--quick", "--out", str(tmp_path / "out"), "--results-md", str(md)]) == 0
    data = json.loads((tmp_path / "out" / "paper_fit.json").read_text())
    assert data["quick"] and data["fit"]["parameter"] == "engine.host_gather_gbps"
    assert len(data["rows"]) == len(REFERENCES) and len(data["fit"]["curve"]) == 7
    assert 0.5 <= data["fit"]["value_gbps"] <= 32
    text = md.read_text()
    assert text.startswith("# Results\n\nhand text\n") and text.rstrip().endswith("after")
    assert "old" not in text and text.count(paper.BEGIN) == 1
    assert "engine.host_gather_gbps" in (tmp_path / "out" / "paper_fit.md").read_text()


@pytest.mark.parametrize(
    "args, message",
    [
        (["--grid", "5:1:3"], "--grid '5:1:3': needs 0 < LO < HI and N >= 2"),
        (["--grid", "fast"], "--grid 'fast': expected LO:HI:N"),
        (["--bogus"], "unrecognized arguments: --bogus"),
    ],
)
def test_bad_arguments_are_one_line_exit_2(args, message, capsys):
    assert paper.main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("sim.paper: error: ") and message in err


def test_bad_paths_are_one_line_exit_2(tmp_path):
    (tmp_path / "f").write_text("")
    for args in (["--out", str(tmp_path / "f")], ["--results-md", str(tmp_path)]):
        done = subprocess.run([sys.executable, "-m", "sim.paper", *args], capture_output=True, text=True)
        assert done.returncode == 2 and done.stdout == ""
        assert done.stderr.count("\n") == 1 and done.stderr.startswith("sim.paper: error: ")
