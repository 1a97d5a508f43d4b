"""kvflow-report on synthetic run directories: table values, paper references, plots, results.md.

``make_sweep`` builds a Hydra-multirun-shaped tree with the run-directory contract's writer and
summarizer (``harness.run_dir``, ``harness.summary``: what every backend writes) so these tests pin
the report's numbers without running the simulator.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import yaml
from matplotlib import image as mpimg

from analysis.cli import main
from analysis.report import BEGIN, END, write_report
from harness.rows import workflow_rows
from harness.run_dir import validate_run_dir, write_run_dir
from harness.summary import RunCounters, RunIdentity, summarize

POLICIES = ("hicache", "kvflow")


def rows(policy: str, latency_s: float) -> list[dict[str, Any]]:
    """12 requests of one workflow (2 warm-up), spanning ``latency_s``; KVFlow hits 90% on GPU."""
    kv = policy == "kvflow"
    out = []
    for i in range(12):
        start = 0.0 if i == 2 else 0.01 * i
        finish = latency_s if i == 11 else start + latency_s / 10 + i * 0.01
        out.append(
            {
                "request_id": f"c0/r{i}",
                "client_id": "c0",
                "agent_id": f"a{i % 3}",
                "warmup": i < 2,
                "prompt_tokens": 100,
                "fixed_tokens": 64,
                "output_tokens": 8,
                "ready_s": start,
                "arrival_s": start,
                "admit_s": start,
                "queue_s": 0.0,
                "first_token_s": start + 0.001,
                "finish_s": finish,
                "ttft_s": 0.001,
                "latency_s": finish - start,
                "hit_gpu_tokens": 90 if kv else 10,
                "loaded_cpu_tokens": 0 if kv else 80,
                "recomputed_tokens": 10,
                "loaded_bytes": 0,
                "stalled_s": 0.0,
            }
        )
    return out


def summary(policy: str, latency_s: float, config: dict[str, Any] | None = None) -> dict[str, Any]:
    """A summary as every backend writes it: the contract's summarizer over ``rows``."""
    counted = RunCounters(
        makespan_s=latency_s * 1.5,
        h2d_bytes=2_000_000_000 if policy == "kvflow" else 8_000_000_000,
        d2h_bytes=4_000_000_000,
        h2d_busy_s=0.15 * latency_s,
        d2h_busy_s=0.075 * latency_s,
        prefetch_issued=5,
        prefetch_used=5,
    )
    cfg = {
        "policy": {"name": policy},
        "hardware": {"name": "a10g_paper"},
        "model": {"name": "llama-3.1-8b"},
        "workload": {"name": "sequential"},
        "seed": 0,
        **(config or {}),
    }
    r = rows(policy, latency_s)
    return summarize(RunIdentity.from_config("sim", cfg), counted, r, workflow_rows(r))


def make_run(
    d: Path,
    policy: str,
    latency_s: float,
    task: list[str],
    config: dict[str, Any] | None = None,
    experiment: str | None = None,
    timeline: bool = False,
    hydra_overrides: list[str] | None = None,
) -> Path:
    """One job dir written by the contract's writer, plus the .hydra files Hydra adds (overrides,
    choices, the command line)."""
    (d / ".hydra").mkdir(parents=True, exist_ok=True)
    (d / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(task))
    hydra = {
        "hydra": {
            "mode": "MULTIRUN",
            "job": {"name": "cli"},
            "overrides": {"hydra": hydra_overrides or [], "task": task},
            "runtime": {"choices": {"experiment": experiment, "policy": policy}},
        }
    }
    (d / ".hydra" / "hydra.yaml").write_text(yaml.safe_dump(hydra))
    t = [
        ("gpu", 0.0, 1.0, "prefill"),
        ("gpu", 1.0, 1.5, "decode"),
        ("h2d", 0.2, 0.9, "prefetch"),
        ("d2h", 0.1, 0.6, "offload"),
        ("gpu", 1.5, 2.5, "prefill"),
        ("h2d", 1.6, 2.0, "load"),
    ]
    r = rows(policy, latency_s)
    write_run_dir(
        d, summary(policy, latency_s, config), r, workflow_rows(r), config or {}, timeline=t if timeline else ()
    )
    return d


def workload(fixed: int, output: int = 32, generator: str = "sequential", **more: Any) -> dict[str, Any]:
    return {
        "workload": {
            "name": generator,
            "generator": generator,
            "params": {"fixed_tokens": fixed, "dynamic_tokens": 32, "output_tokens": output, **more},
        }
    }


# latencies chosen so every speedup is an exact, distinct number
LATENCY = {("hicache", 4096): 12.0, ("kvflow", 4096): 10.0, ("hicache", 8192): 30.0, ("kvflow", 8192): 15.0}


def make_sweep(root: Path, timeline: bool = True) -> Path:
    """2 policies x 2 fixed lengths, numbered like a Hydra multirun, plus multirun.yaml."""
    root.mkdir(parents=True, exist_ok=True)
    sweep = ["policy=kvflow,hicache", "workload.params.fixed_tokens=4096,8192"]
    (root / "multirun.yaml").write_text(
        yaml.safe_dump(
            {
                "hydra": {
                    "mode": "MULTIRUN",
                    "job": {"name": "cli"},
                    "overrides": {
                        "hydra": ["hydra/launcher=joblib", f"hydra.sweep.dir={root}", "hydra.mode=MULTIRUN"],
                        "task": sweep,
                    },
                }
            }
        )
    )
    for i, (policy, fixed) in enumerate((p, f) for p in ("kvflow", "hicache") for f in (4096, 8192)):
        make_run(
            root / str(i),
            policy,
            LATENCY[(policy, fixed)],
            [f"policy={policy}", f"workload.params.fixed_tokens={fixed}", "output.table=false"],
            workload(fixed),
            timeline=timeline and policy == "kvflow",
        )
    return root


def test_synthetic_runs_pass_the_schema_check(tmp_path: Path) -> None:
    root = make_sweep(tmp_path / "mr")
    for i in range(4):
        assert validate_run_dir(root / str(i))["workflow_latency_mean_s"] in LATENCY.values()


def test_table_values_match_summaries(tmp_path: Path) -> None:
    root = make_sweep(tmp_path / "mr")
    report = write_report(root)
    assert report == root / "report" / "report.md"
    sp = pd.read_csv(root / "report" / "speedups.csv")
    kv = sp[sp["policy"] == "kvflow"].set_index("fixed_tokens")["speedup"]
    assert kv[4096] == pytest.approx(12.0 / 10.0)
    assert kv[8192] == pytest.approx(30.0 / 15.0)
    assert set(sp.loc[sp["policy"] == "hicache", "speedup"]) == {1.0}
    text = report.read_text()
    assert "| 4096 | 12 | 1.20x |" in text
    assert "| 8192 | 30 | 2.00x | kvflow 1.83x |" in text  # paper: A10G, Llama-3.1-8B, 8192/32/32
    assert "kvflow-sim -m hydra/launcher=joblib" in text and "policy=kvflow,hicache" in text
    assert "hydra.mode" not in text


def test_results_csv_one_row_per_run(tmp_path: Path) -> None:
    root = make_sweep(tmp_path / "mr")
    write_report(root)
    df = pd.read_csv(root / "report" / "results.csv")
    assert len(df) == 4
    for col in ("policy", "workload.params.fixed_tokens", "workflow_latency_mean_s", "hit_rate_gpu", "h2d_bytes"):
        assert col in df.columns
    row = df[(df["policy"] == "kvflow") & (df["workload.params.fixed_tokens"] == 8192)].iloc[0]
    assert row["workflow_latency_mean_s"] == 15.0
    assert "output.table" not in df.columns  # display knobs are not settings


def test_plots_are_written_and_readable(tmp_path: Path) -> None:
    root = make_sweep(tmp_path / "mr")
    write_report(root)
    out = root / "report"
    names = {p.name for p in out.glob("*.png")}
    assert names == {
        f"sequential_{n}.png"
        for n in ("speedup_vs_fixed_tokens", "speedup", "hit_rate", "pcie_bytes", "latency_cdf", "timeline")
    }
    for p in out.glob("*.png"):
        assert p.stat().st_size > 5000
    img = mpimg.imread(out / "sequential_speedup_vs_fixed_tokens.png")
    assert img.shape[0] > 200 and img.shape[1] > 300
    assert "![sequential_timeline](sequential_timeline.png)" in (out / "report.md").read_text()


def test_no_speedup_vs_output_or_workflows_when_not_varied(tmp_path: Path) -> None:
    root = make_sweep(tmp_path / "mr", timeline=False)
    write_report(root)
    assert not list((root / "report").glob("*_vs_output_tokens.png"))
    assert not list((root / "report").glob("*_vs_workflows.png"))
    assert not list((root / "report").glob("*timeline.png"))


def test_several_baselines_and_missing_baseline(tmp_path: Path) -> None:
    root = make_sweep(tmp_path / "mr")
    report = write_report(root, baseline="hicache,sglang").read_text()
    assert "Speedup over **hicache**" in report and "Speedup over **sglang**" in report
    assert "| 4096 | — |" in report  # no sglang run: no speedup, no made-up number


def test_cli_results_md_keeps_hand_written_text(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = make_sweep(tmp_path / "mr")
    md = tmp_path / "docs" / "results.md"
    md.parent.mkdir()
    md.write_text(f"# Results\n\nIntro by hand.\n\n{BEGIN}\nold\n{END}\n\nOutro by hand.\n")
    out = tmp_path / "docs" / "results"
    assert main([str(root), "-o", str(out), "--baseline", "hicache,sglang", "--results-md", str(md)]) == 0
    text = md.read_text()
    assert text.startswith("# Results\n\nIntro by hand.") and text.rstrip().endswith("Outro by hand.")
    assert "old" not in text and "2.00x" in text
    assert "](results/sequential_speedup_vs_fixed_tokens.png)" in text  # relative to docs/
    assert f"kvflow-report {root} -o {out}" in text
    assert "report:" in capsys.readouterr().out


def test_malformed_and_partial_runs_are_named_and_skipped(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = make_sweep(tmp_path / "mr")
    (root / "4" / ".hydra").mkdir(parents=True)  # interrupted before summary.json
    bad = make_run(root / "5", "kvflow", 1.0, ["policy=kvflow"], workload(4096))
    (bad / "summary.json").write_text("{not json")
    nopolicy = make_run(root / "6", "kvflow", 1.0, ["policy=kvflow"], workload(4096))
    (nopolicy / "summary.json").write_text("[1, 2]")
    assert main([str(root)]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 3 and all(line.startswith("kvflow-report: skipped ") for line in err)
    assert any(f"{root / '4'}: no summary.json" in line for line in err)
    assert any(f"{root / '5'}" in line and "not valid JSON" in line for line in err)
    assert any(f"{root / '6'}" in line and "expected a JSON object" in line for line in err)
    assert len(pd.read_csv(root / "report" / "results.csv")) == 4


def test_nothing_to_report_is_one_line_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"kvflow-report: error: no complete runs (summary.json) under {tmp_path}"]
    assert main([str(tmp_path / "missing")]) == 2


def test_concurrent_reference_and_workflows_axis(tmp_path: Path) -> None:
    root = tmp_path / "conc"
    lat = {
        ("sglang", 32): 10.0,
        ("hicache", 32): 12.0,
        ("kvflow", 32): 8.0,
        ("sglang", 64): 20.0,
        ("hicache", 64): 35.0,
        ("kvflow", 64): 14.0,
    }
    for i, ((policy, n), latency) in enumerate(lat.items()):
        make_run(
            root / str(i),
            policy,
            latency,
            [f"policy={policy}", f"workload.params.workflows={n}"],
            workload(1024, 256, "concurrent", workflows=n),
            experiment="paper_concurrent",
        )
    report = write_report(root, baseline="sglang").read_text()
    assert "## Experiment `paper_concurrent` (6 runs)" in report
    assert "| 64 | 20 | 0.57x | 1.43x | hicache 0.57x; kvflow up to 1.25x |" in report
    assert (root / "report" / "paper_concurrent_speedup_vs_workflows.png").stat().st_size > 5000


def test_compare_mode_run_dir(tmp_path: Path) -> None:
    """``kvflow-sim`` without a policy: one Hydra run dir, one sub-dir per policy."""
    run = tmp_path / "run"
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra" / "overrides.yaml").write_text("[]\n")
    (run / ".hydra" / "hydra.yaml").write_text(
        yaml.safe_dump(
            {"hydra": {"mode": "RUN", "job": {"name": "cli"}, "overrides": {"hydra": ["hydra.mode=RUN"], "task": []}}}
        )
    )
    for policy, latency in (("sglang", 6.0), ("hicache", 5.0), ("kvflow", 4.0)):
        r = rows(policy, latency)
        write_run_dir(run / policy, summary(policy, latency), r, workflow_rows(r), workload(4096))
    text = write_report(run).read_text()
    assert "| 5 | 0.83x | 1.25x |  |" in text
    assert "```bash\nkvflow-sim\n```" in text


def test_odd_files_never_raise(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Bad values inside otherwise complete runs: named on stderr or shown as —, never a traceback."""
    root = make_sweep(tmp_path / "mr", timeline=False)
    s = json.loads((root / "0" / "summary.json").read_text())
    s["workflow_latency_mean_s"] = "fast"  # not a number: that run is named and skipped
    (root / "0" / "summary.json").write_text(json.dumps(s))
    (root / "1" / "summary.json").write_text(json.dumps({**s, "policy": {"name": "kvflow"}}))
    (root / "2" / "config.yaml").write_text("workload: [unclosed\n")
    (root / "3" / "requests.csv").write_bytes(b"\x00\xff\x00garbage")
    (root / "3" / ".hydra" / "hydra.yaml").write_text(": : :\n")
    assert main([str(root)]) == 0
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert f"{root / '1'}/summary.json: missing or non-string field 'policy'" in err
    assert f"{root / '2'}/config.yaml: not valid YAML" in err
    assert f"{root / '0'}/summary.json: 'workflow_latency_mean_s' must be a number, got 'fast'" in err
    assert "from 1 runs" in (root / "report" / "report.md").read_text()  # the one well-formed run


def test_mistyped_baseline_is_refused_and_the_previous_report_kept(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = make_sweep(tmp_path / "mr")
    assert main([str(root)]) == 0
    before = {p.name: p.read_bytes() for p in (root / "report").iterdir()}
    capsys.readouterr()
    assert main([str(root), "--baseline", "hicahe"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("kvflow-report: error: --baseline 'hicahe': unknown policy; policies in these runs:")
    assert {p.name: p.read_bytes() for p in (root / "report").iterdir()} == before


def test_every_policy_has_its_own_colour_and_bars_say_what_they_are() -> None:
    from analysis import plots

    names = sorted(p.name[:-5] for p in (Path(__file__).parents[1] / "conf" / "policy").glob("*.yaml"))
    shown = names + ["custom_a", "custom_b"]  # policies without a fixed colour get distinct spares
    colours = [plots.policy_color(n, shown) for n in shown]
    assert len(set(colours)) == len(colours), dict(zip(names, colours))
    one = pd.DataFrame({"policy": ["a", "b"]})
    assert plots.runs_note(one) == "one run per policy"
    assert plots.runs_note(pd.DataFrame({"policy": ["a", "a", "b", "b"]})) == "mean over 2 runs per policy"
