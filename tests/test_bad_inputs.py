"""The bad-input corpus: every CLI on corrupt, truncated, wrong-typed, extreme and faulty inputs
(files in tests/bad_inputs/, values generated from tables below). Each case must end with a
non-zero exit, no traceback, and a message naming the file or the field. CLIs run in-process
(their ``main(argv)``; ``kvflow-sim`` through ``sim.cli.run``, the function its Hydra app calls,
on one composed config, plus a sample through the full Hydra entry point) to stay fast."""

from __future__ import annotations

import contextlib
import copy
import io
import json
import math
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from omegaconf import OmegaConf

import sim.cli as sim_cli
from analysis.cli import main as report_main
from harness.config_schema import SECTIONS, boolean, text
from real.cli import main as real_main
from real.config import compose
from sim.replay_cli import main as replay_main
from traces.cli import main as trace_main

HERE = Path(__file__).parent / "bad_inputs"
FILES = sorted(p.name for p in HERE.iterdir() if p.is_file())
FAULTY = ["/proc/self/mem", str(HERE), str(HERE / "missing.jsonl")]  # unreadable, a directory, absent


@dataclass
class Outcome:
    code: int
    err: str


def _in_process(fn: Callable[[], Any]) -> Outcome:
    err, out = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
        try:
            code = fn()
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
    return Outcome(int(code or 0), err.getvalue())


def _assert_clean_failure(o: Outcome, needle: str) -> None:
    assert o.code != 0, f"silently accepted (exit 0): {o.err!r}"
    assert "Traceback" not in o.err, o.err
    lines = [line for line in o.err.strip().splitlines() if line.strip()]
    assert lines, "failed without a message"
    assert needle in o.err, f"message does not name {needle!r}: {o.err!r}"


# ----- kvflow-sim: the config matrix --------------------------------------------------------------
BASE = compose(["policy=kvflow_cost", "workload.params.runs=1", "workload.params.agents=2"])
NUMBER_BAD = [math.nan, math.inf, -math.inf, -1, "abc", [], True]
POSITIVE_EXTRA = [0]  # where zero is not allowed


def _bad_values(rule: Callable[[str, Any], None]) -> list[Any]:
    """The table's invalid values for one key: each is rejected by the rule (checked here too, so
    the corpus never holds a value the schema accepts)."""
    if rule is boolean:
        candidates: list[Any] = ["abc", 2, [], None]
    elif rule is text:
        candidates = [3, [], ""]
    else:
        candidates = [*NUMBER_BAD, *POSITIVE_EXTRA, 0.5, 2, "bogus", 1e300]
    bad = []
    for v in candidates:
        try:
            rule("k", v)
        except ValueError:
            bad.append(v)
    return bad


def _config_cases() -> list[tuple[str, str, Any]]:
    cases = []
    for section, rules in SECTIONS.items():
        for key, rule in rules.items():
            if key in ("name", "gpu", "calibration", "measured", "eviction", "params", "generator", "trace"):
                continue
            for value in _bad_values(rule):
                cases.append((section, key, value))
        cases.append((section, "no_such_key", 1))  # unknown keys
    cases += [("workload.params", k, v) for k in ("fixed_tokens", "runs") for v in (math.nan, math.inf, -1, [])]
    return cases


CONFIG_CASES = _config_cases()


def _run_sim(cfg: Any, tmp_path: Path) -> Outcome:
    def go() -> int:
        try:
            sim_cli.run(OmegaConf.create(cfg), tmp_path / "run")
        except sim_cli.USER_ERRORS as exc:
            print(f"kvflow-sim: error: {sim_cli.one_line(exc)}", file=sys.stderr)
            return 2
        return 0

    return _in_process(go)


@pytest.mark.parametrize("section, key, value", CONFIG_CASES, ids=[f"sim-{s}.{k}={v!r}" for s, k, v in CONFIG_CASES])
def test_sim_config_value(section: str, key: str, value: Any, tmp_path: Path) -> None:
    cfg = copy.deepcopy(BASE)
    node = cfg
    for part in section.split("."):
        node = node[part]
    node[key] = value
    _assert_clean_failure(_run_sim(cfg, tmp_path), f"{section}.{key}=")


SIM_TRACE_FILES = FILES + FAULTY


@pytest.mark.parametrize("name", SIM_TRACE_FILES, ids=[f"sim-trace-{Path(n).name}" for n in SIM_TRACE_FILES])
def test_sim_trace_file(name: str, tmp_path: Path) -> None:
    path = name if name.startswith("/") else str(HERE / name)
    cfg = copy.deepcopy(BASE)
    cfg["workload"] = {"name": "trace", "generator": None, "trace": path, "params": {}}
    _assert_clean_failure(_run_sim(cfg, tmp_path), Path(path).name)


HYDRA_SAMPLE = [
    "hardware.pcie_h2d_gbps=0",
    "hardware.hbm_gbps=nan",
    "engine.chunk_tokens=0",
    "sim.bidirectional_penalty=abc",
    "policy.cpu_capacity_ratio=-1",
    "workload=trace",
]


@pytest.mark.parametrize("override", HYDRA_SAMPLE, ids=[f"sim-hydra-{o}" for o in HYDRA_SAMPLE])
def test_sim_full_entry_point(override: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    extra = ["policy=kvflow"] if override.startswith("policy.") else []
    monkeypatch.setattr(sys, "argv", ["kvflow-sim", *extra, override, f"hydra.run.dir={tmp_path}/run"])
    _assert_clean_failure(_in_process(sim_cli.main), override.split("=")[0])


# ----- kvflow-trace ------------------------------------------------------------------------------
READ_CMDS = [["validate"], ["stats"], ["export", "mooncake"]]
IMPORT_FORMATS = ["chatdev", "mooncake", "openai", "weka", "otel"]
TRACE_CASES = [(cmd, f) for cmd in READ_CMDS for f in FILES + FAULTY] + [
    (["import", fmt], f) for fmt in IMPORT_FORMATS for f in FILES + FAULTY
]


def _trace_argv(cmd: list[str], path: str, out: Path) -> list[str]:
    if cmd[0] == "import":
        return [*cmd, path, "-o", str(out / "t.jsonl.gz")]
    if cmd[0] == "export":
        return [*cmd, path, "-o", str(out / "m.jsonl")]
    return [*cmd, path]


@pytest.mark.parametrize("cmd, name", TRACE_CASES, ids=[f"trace-{'-'.join(c)}-{Path(f).name}" for c, f in TRACE_CASES])
def test_trace_reader(cmd: list[str], name: str, tmp_path: Path) -> None:
    path = name if name.startswith("/") else str(HERE / name)
    o = _in_process(lambda: trace_main(_trace_argv(cmd, path, tmp_path)))
    _assert_clean_failure(o, Path(path).name)
    assert not (tmp_path / "t.jsonl.gz").exists() or cmd[0] != "import"


GENERATE_CASES = [
    (k, v)
    for k in ("fixed_tokens", "dynamic_tokens", "output_tokens", "runs", "agents", "delay_s")
    for v in ("nan", "inf", "-1", "abc", "uniform:5:1")
] + [("no_such_param", "1"), ("arrival", "poisson:0"), ("arrival", "poisson:nan"), ("shared_prompts", "maybe")]


@pytest.mark.parametrize("key, value", GENERATE_CASES, ids=[f"trace-generate-{k}={v}" for k, v in GENERATE_CASES])
def test_trace_generate_param(key: str, value: str, tmp_path: Path) -> None:
    o = _in_process(lambda: trace_main(["generate", "sequential", f"{key}={value}", "-o", str(tmp_path / "t.jsonl")]))
    _assert_clean_failure(o, key)
    assert not (tmp_path / "t.jsonl").exists()


# ----- kvflow-replay ------------------------------------------------------------------------------
REPLAY_FILES = FILES + FAULTY
REPLAY_FLAGS = (
    [("--budget-gib", v) for v in ("nan", "inf", "-1", "0", "abc")]
    + [("--block-tokens", v) for v in ("0", "-1", "abc")]
    + [("--warmup-fraction", v) for v in ("nan", "1", "-0.1", "abc")]
    + [("--policy", "bogus"), ("--model", "bogus")]
)


@pytest.mark.parametrize("name", REPLAY_FILES, ids=[f"replay-{Path(n).name}" for n in REPLAY_FILES])
def test_replay_file(name: str) -> None:
    path = name if name.startswith("/") else str(HERE / name)
    _assert_clean_failure(_in_process(lambda: replay_main(["--trace", path])), Path(path).name)


@pytest.mark.parametrize("flag, value", REPLAY_FLAGS, ids=[f"replay{f}={v}" for f, v in REPLAY_FLAGS])
def test_replay_flag(flag: str, value: str) -> None:
    o = _in_process(lambda: replay_main(["--trace", str(HERE / "mooncake_bool_ids.jsonl"), flag, value]))
    _assert_clean_failure(o, flag.lstrip("-").split("-")[0])


# ----- kvflow-report ------------------------------------------------------------------------------
def _summary(tmp_path: Path) -> dict[str, Any]:
    from harness.summary import DETAIL_KEYS, SUMMARY_KEYS

    s: dict[str, Any] = {k: 1.0 for k in SUMMARY_KEYS}
    s.update(policy="kvflow", backend="sim", params={}, details={k: 0 for k in DETAIL_KEYS}, workload="w")
    return s


REPORT_CASES = {
    "string_latency": lambda s: {**s, "workflow_latency_mean_s": "slow"},
    "list_latency": lambda s: {**s, "workflow_latency_mean_s": [1.0]},
    "bool_requests": lambda s: {**s, "requests": True},
    "missing_key": lambda s: {k: v for k, v in s.items() if k != "makespan_s"},
    "no_policy": lambda s: {k: v for k, v in s.items() if k != "policy"},
    "bad_backend": lambda s: {**s, "backend": "gpu??"},
    "details_list": lambda s: {**s, "details": []},
    "not_json": None,
    "json_array": [1, 2],
    "empty": "",
}


@pytest.mark.parametrize("case", list(REPORT_CASES), ids=[f"report-{c}" for c in REPORT_CASES])
def test_report_summary(case: str, tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    make = REPORT_CASES[case]
    if case == "not_json":
        body = "{not json"
    elif isinstance(make, (list, str)):
        body = make if isinstance(make, str) else json.dumps(make)
    else:
        body = json.dumps(make(_summary(tmp_path)), allow_nan=True)
    (run / "summary.json").write_text(body)
    (run / "config.yaml").write_text("seed: 0\n")
    o = _in_process(lambda: report_main([str(run)]))
    _assert_clean_failure(o, "summary.json")


@pytest.mark.parametrize("arg", ["/proc/self/mem", str(HERE / "missing"), str(HERE / "empty.jsonl")], ids=str)
def test_report_dirs(arg: str) -> None:
    _assert_clean_failure(_in_process(lambda: report_main([arg])), arg)


# ----- kvflow-real (model=tiny, CPU: every case fails at load, before any model is built) --------
REAL_CASES = [
    "hardware.pcie_h2d_gbps=0",
    "hardware.peak_bf16_flops=nan",
    "engine.max_running_requests=0",
    "policy.cpu_capacity_ratio=-1",
    "cache.page_size=abc",
    "workload=trace",
    f"workload.trace={HERE / 'corrupt.jsonl.gz'}",
]


@pytest.mark.parametrize("override", REAL_CASES, ids=[f"real-{o.split('/')[-1]}" for o in REAL_CASES])
def test_real_run(override: str, tmp_path: Path) -> None:
    argv = ["run", "--device", "cpu", "--out", str(tmp_path / "out"), "model=tiny", "policy=kvflow", override]
    if override.startswith("workload.trace"):
        argv.insert(-1, "workload=trace")
    o = _in_process(lambda: real_main(argv))
    needle = "corrupt.jsonl.gz" if "corrupt" in override else override.split("=")[0]
    _assert_clean_failure(o, needle if needle != "workload" else "workload.trace")


# ----- absurd sizes, namespaced ids, empty imports, failed export writes (issue #16 items 2 and 3) -----
LIMIT_CASES = [
    (["import", "chatdev", "chatdev_huge_tokens.log"], "chatdev_huge_tokens.log:70: prompt_tokens: prompt of 1"),
    (["import", "chatdev", "chatdev_truncated.log.gz"], "chatdev_truncated.log.gz:"),
    (["import", "mooncake", "mooncake_over_limit.jsonl"], "mooncake_over_limit.jsonl:1: input_length: prompt of"),
    (["import", "weka", "weka_over_limit.json"], "weka_over_limit.json: requests[0].in: prompt of"),
    (["import", "otel", "otel_over_limit.json"], "gen_ai.usage.input_tokens: prompt of"),
    (["validate", "trace_over_limit.jsonl"], "trace_over_limit.jsonl:2: prompt of 1,000,000,000 tokens"),
    (["stats", "trace_output_over_limit.jsonl"], "trace_output_over_limit.jsonl:2: output of"),
    (["export", "mooncake", "trace_over_limit.jsonl"], "trace_over_limit.jsonl:2: prompt of"),
    (["validate", "--max-prompt-tokens", "0", "trace_over_limit.jsonl"], "--max-prompt-tokens"),
    (["validate", "--max-prompt-tokens", "abc", "trace_over_limit.jsonl"], "--max-prompt-tokens"),
    (["import", "mooncake", "empty.jsonl"], "empty.jsonl: no records"),
]


def _corpus_argv(argv: list[str], out: Path) -> list[str]:
    args = [a if not (HERE / a).is_file() else str(HERE / a) for a in argv]
    if argv[0] == "import":
        return [*args, "-o", str(out / "t.jsonl.gz")]
    return [*args, "-o", str(out / "m.jsonl")] if argv[0] == "export" else args


@pytest.mark.parametrize("argv, needle", LIMIT_CASES, ids=[f"trace-limit-{'-'.join(a)}" for a, _ in LIMIT_CASES])
def test_trace_limits(argv: list[str], needle: str, tmp_path: Path) -> None:
    o = _in_process(lambda: trace_main(_corpus_argv(argv, tmp_path)))
    _assert_clean_failure(o, needle)
    assert o.err.count("\n") <= 1 or "skipped" in o.err  # one line (plus the importer's skip notice)
    assert not (tmp_path / "t.jsonl.gz").exists() and not (tmp_path / "m.jsonl").exists()


GENERATE_SIZE_CASES = [
    ("sequential", "runs=1000000000", "runs"),
    ("concurrent", "workflows=100000000", "workflows"),
    ("branches", "agents=100000000", "agents"),
    ("fanout", "width=100000000", "width"),
    ("sequential", "fixed_tokens=1e18", "fixed_tokens"),
    ("peer_loop", "output_tokens=100000000", "output_tokens"),
]


@pytest.mark.parametrize(
    "workload, param, needle", GENERATE_SIZE_CASES, ids=[f"trace-generate-{w}-{p}" for w, p, _ in GENERATE_SIZE_CASES]
)
def test_trace_generate_too_big(workload: str, param: str, needle: str, tmp_path: Path) -> None:
    o = _in_process(lambda: trace_main(["generate", workload, param, "-o", str(tmp_path / "t.jsonl")]))
    _assert_clean_failure(o, needle)
    assert "exceeds the limit" in o.err and o.err.count("\n") == 1
    assert not (tmp_path / "t.jsonl").exists()


REPLAY_LIMIT_CASES = [
    (["--trace", "mooncake_over_limit.jsonl"], "mooncake_over_limit.jsonl:1: input_length: prompt of"),
    (["--trace", "trace_over_limit.jsonl"], "trace_over_limit.jsonl:2: prompt of"),
    (["--trace", "chatdev_huge_tokens.log"], "chatdev_huge_tokens.log"),
    (["--trace", "weka_over_limit.json"], "weka_over_limit.json"),
    (["--trace", "mooncake_bool_ids.jsonl", "--max-prompt-tokens", "0"], "--max-prompt-tokens"),
    (["--trace", "mooncake_bool_ids.jsonl", "--max-prompt-tokens", "abc"], "--max-prompt-tokens"),
]


@pytest.mark.parametrize(
    "argv, needle", REPLAY_LIMIT_CASES, ids=[f"replay-limit-{'-'.join(a)}" for a, _ in REPLAY_LIMIT_CASES]
)
def test_replay_limits(argv: list[str], needle: str) -> None:
    args = [a if not (HERE / a).is_file() else str(HERE / a) for a in argv]
    _assert_clean_failure(_in_process(lambda: replay_main(args)), needle)


def test_replay_limit_is_configurable() -> None:
    """The limit is a setting, not a hard wall: raised, the same file replays (block level: one
    key per 512-token block, never one per token)."""
    path = str(HERE / "mooncake_over_limit.jsonl")
    o = _in_process(lambda: replay_main(["--trace", path, "--max-prompt-tokens", "30000000"]))
    assert o.code == 2 and "does not fit 1 hash ids" in o.err  # past the limit: the next check speaks


def _twice(tmp_path: Path) -> list[list[str]]:
    """Inputs that used to make importers write a trace their own reader rejects (duplicate ids)."""
    log = str(Path(__file__).parent / "fixtures" / "traces" / "20230821204606.log.gz")
    other = str(Path(__file__).parent / "fixtures" / "traces" / "20230726121145.log.gz")
    for d, src in (("a", log), ("b", other)):
        (tmp_path / d).mkdir(exist_ok=True)
        (tmp_path / d / "x.log.gz").write_bytes(Path(src).read_bytes())
    return [["chatdev", log, log], ["chatdev", str(tmp_path / "a" / "x.log.gz"), str(tmp_path / "b" / "x.log.gz")]]


@pytest.mark.parametrize("case", [0, 1], ids=["trace-import-same-log-twice", "trace-import-same-name-two-dirs"])
def test_import_namespaces_ids(case: int, tmp_path: Path) -> None:
    argv = _twice(tmp_path)[case]
    out = tmp_path / "t.jsonl.gz"
    o = _in_process(lambda: trace_main(["import", *argv, "-o", str(out)]))
    assert o.code == 0 and "Traceback" not in o.err, o.err
    o = _in_process(lambda: trace_main(["validate", str(out)]))
    assert o.code == 0, o.err


def test_export_failed_write_keeps_previous_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import errno
    import os

    import traces.atomic

    trace = tmp_path / "t.jsonl"
    assert _in_process(lambda: trace_main(["generate", "sequential", "runs=1", "-o", str(trace)])).code == 0
    out = tmp_path / "m.jsonl"
    out.write_text("previous\n")

    def full(*_: object) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(traces.atomic.os, "replace", full)
    for fmt, target in (("mooncake", out), ("weka", tmp_path / "w")):
        o = _in_process(lambda: trace_main(["export", fmt, str(trace), "-o", str(target)]))
        _assert_clean_failure(o, str(target))
        assert "No space left on device" in o.err and o.err.count("\n") == 1
    assert out.read_text() == "previous\n"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp file left
