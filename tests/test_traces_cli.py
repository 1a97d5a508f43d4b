"""kvflow-trace CLI: each command works; every error is one stderr line, exit 2, no traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from traces import load_trace
from traces.cli import main

FIXTURES = Path(__file__).parent / "fixtures" / "traces"
SAMPLE = Path(__file__).resolve().parents[1] / "traces" / "data" / "sample_sequential.jsonl"


def _one_line_error(capsys: pytest.CaptureFixture[str], argv: list[str], needle: str) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err and needle in err, err


def test_generate_paper_setting_validate_and_stats(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "x.jsonl"
    argv = [
        "generate",
        "sequential",
        "agents=10",
        "fixed_tokens=8192",
        "dynamic_tokens=32",
        "output_tokens=32",
        "runs=10",
        "-o",
        str(out),
    ]
    assert main(argv) == 0
    assert len(load_trace(out).invocations) == 110
    capsys.readouterr()
    assert main(["validate", str(out)]) == 0
    stdout = capsys.readouterr().out
    assert stdout.count("\n") == 1 and "OK" in stdout and "110 invocation" in stdout
    assert main(["stats", str(out)]) == 0
    stats = capsys.readouterr().out
    assert "ideal hit-rate ceiling" in stats and "90.6%" in stats and "loop over 10 agent(s)" in stats
    assert main(["stats", "--json", str(out)]) == 0
    assert '"invocations": 110' in capsys.readouterr().out


def test_import_chatdev_reports_skips(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "cd.jsonl.gz"
    empty = tmp_path / "nousage.log"  # every fixture log has usage blocks now (all three layouts are read)
    empty.write_text("[2023-26-07 12:11:45 INFO] ChatDev Starts (20230726121145)\n")
    logs = [str(p) for p in sorted(FIXTURES.glob("*.log.gz"))] + [str(empty)]
    assert main(["import", "chatdev", *logs, "-o", str(out)]) == 0
    captured = capsys.readouterr()
    assert "1 skipped" in captured.out and captured.err.count("\n") == 1 and "no usage blocks" in captured.err
    assert main(["stats", str(out)]) == 0
    stats = capsys.readouterr().out
    assert "per role" in stats and "Programmer:" in stats and "graph chatdev" in stats


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["generate", "sequential", "bogus=1", "-o", "{tmp}/a.jsonl"], "'bogus'"),
        (["generate", "sequential", "agents=x", "-o", "{tmp}/a.jsonl"], "'agents'"),
        (["generate", "sequential", "output_tokens=uniform:9", "-o", "{tmp}/a.jsonl"], "'output_tokens'"),
        (["generate", "sequential", "agents", "-o", "{tmp}/a.jsonl"], "key=value"),
        (["generate", "nosuch", "-o", "{tmp}/a.jsonl"], "unknown workload"),
        (["generate", "sequential"], "required"),
        (["generate", "sequential", "-o", "/nonexistent/dir/a.jsonl"], "No such file"),
        (["import", "nosuch", "x", "-o", "{tmp}/a.jsonl"], "unknown import format"),
        (["import", "mooncake", "{tmp}/missing.jsonl", "-o", "{tmp}/a.jsonl"], "missing.jsonl"),
        (["validate", "{tmp}/missing.jsonl"], "missing.jsonl:1: cannot read file"),
        (["stats", "{tmp}/bad.jsonl"], "bad.jsonl:2: "),
        (["frobnicate"], "invalid choice"),
        ([], "required"),
    ],
)
def test_errors_are_one_line_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], needle: str
) -> None:
    (tmp_path / "bad.jsonl").write_text(SAMPLE.read_text().splitlines()[0] + "\n{broken\n")
    _one_line_error(capsys, [a.replace("{tmp}", str(tmp_path)) for a in argv], needle)


def test_validate_lists_each_error_up_to_20(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    lines = SAMPLE.read_text().splitlines()
    bad = lines[:2] + [lines[2].replace('"n":64', '"n":-1').replace("agent0", f"x{k}", 1) for k in range(25)]
    (tmp_path / "v.jsonl").write_text("\n".join(bad) + "\n")
    assert main(["validate", str(tmp_path / "v.jsonl")]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 20 and err[0].startswith(f"{tmp_path / 'v.jsonl'}:3: ")
    assert all("Traceback" not in e for e in err)


SCRIPT = Path(sys.executable).parent / "kvflow-trace"  # the console script of this interpreter's env


@pytest.mark.skipif(not SCRIPT.exists(), reason="console script not installed in this environment")
def test_console_script_subprocess(tmp_path: Path) -> None:
    exe = str(SCRIPT)
    bad = subprocess.run(
        [exe, "generate", "fanout", "width=-2", "-o", str(tmp_path / "f.jsonl")], capture_output=True, text=True
    )
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "'width'" in bad.stderr
    ok = subprocess.run(
        [exe, "generate", "fanout", "width=2", "-o", str(tmp_path / "f.jsonl")], capture_output=True, text=True
    )
    assert ok.returncode == 0 and len(load_trace(tmp_path / "f.jsonl").invocations) == 4


@pytest.mark.parametrize(
    "cmd, needles",
    [
        ("generate", ["sequential", "peer_loop", "fanout", "fixed_tokens", "shared_fraction", "width"]),
        ("import", ["chatdev", "mooncake", "openai", "weka", "otel"]),
    ],
)
def test_help_lists_workloads_formats_and_keys(
    cmd: str, needles: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exc:
        main([cmd, "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert all(n in out for n in needles), out


def test_generate_rejects_nan_and_inf(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for value in ("nan", "inf", "-inf"):
        assert main(["generate", "sequential", f"fixed_tokens={value}", "-o", str(tmp_path / "t.jsonl")]) == 2
        err = capsys.readouterr().err.strip()
        assert "fixed_tokens" in err and value in err and "\n" not in err
    assert not (tmp_path / "t.jsonl").exists()
