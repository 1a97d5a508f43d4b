"""kvflow-replay (sim/replay.py + sim/replay_cli.py): hit rates against the independent reference
(DATA.md) and kvcache-simulator live; every bad input is one FILE:LINE line, exit 2."""

from __future__ import annotations

import gzip
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from sim.replay import read_mooncake, replay
from sim.replay_cli import main

# DATA.md: kvcache-simulator 0.1.3 on synthetic_trace.jsonl, Llama-3.1-8B, last 50% of requests
REFERENCE_LRU = {16: 0.0351, 64: 0.1314, 128: 0.2280}
REFERENCE_OPTIMAL = {16: 0.1823, 64: 0.3679, 128: 0.5022}
BLOCK_BYTES = 131072 * 512


@pytest.fixture(scope="module")
def requests(request):
    from conftest import MOONCAKE

    if not MOONCAKE.exists():
        pytest.skip("shared Mooncake trace missing")
    return read_mooncake(MOONCAKE, 512)


@pytest.mark.parametrize("gib", [16, 64, 128])
def test_lru_matches_reference_within_0_1_points(requests, gib):
    result = replay(requests, "lru", math.floor(gib * 2**30 / BLOCK_BYTES))
    assert result["filled_before_measurement"]
    assert abs(result["hit_rate"] - REFERENCE_LRU[gib]) < 0.001


@pytest.mark.parametrize("gib", [16, 64, 128])
def test_belady_beats_lru_and_is_close_to_reference_optimal(requests, gib):
    capacity = math.floor(gib * 2**30 / BLOCK_BYTES)
    belady = replay(requests, "belady", capacity)["hit_rate"]
    assert belady >= replay(requests, "lru", capacity)["hit_rate"]
    assert abs(belady - REFERENCE_OPTIMAL[gib]) < 0.02


def test_lru_matches_kvcache_simulator_live(requests):
    kcs = pytest.importorskip("kvcache_sim.simulator")
    from conftest import MOONCAKE
    from kvcache_sim.trace import parse_trace_file

    theirs = kcs.run_sweep(
        parse_trace_file(MOONCAKE, block_size=512),
        model_id="llama-3.1-8b",
        budgets_gib=[16, 64, 128],
        policies=["lru", "optimal"],
        backend="python",
    )
    for point in theirs["points"]:
        ours_lru = replay(requests, "lru", point["cacheBlocks"])
        assert ours_lru["hit_tokens"] == point["results"]["lru"]["hitTokens"]
        assert ours_lru["total_tokens"] == point["results"]["lru"]["totalTokens"]
        ours_opt = replay(requests, "belady", point["cacheBlocks"])
        assert abs(ours_opt["hit_rate"] - point["results"]["optimal"]["hitRate"]) < 0.02


def test_cli_last_line_is_json(mooncake_path, capsys):
    assert (
        main(
            [
                "--trace",
                str(mooncake_path),
                "--policy",
                "lru",
                "--model",
                "llama-3.1-8b",
                "--budget-gib",
                "64",
                "--block-tokens",
                "512",
                "--warmup-fraction",
                "0.5",
            ]
        )
        == 0
    )
    last = capsys.readouterr().out.strip().splitlines()[-1]
    result = json.loads(last)
    for key in ("hit_rate", "hit_tokens", "total_tokens", "requests", "policy", "budget_gib"):
        assert key in result
    assert result["policy"] == "lru" and result["budget_gib"] == 64 and result["requests"] == 3993


@pytest.mark.parametrize(
    "line,problem",
    [
        ("{not json", "invalid JSON"),
        ('{"input_length": 5}', "hash_ids"),
        ('{"input_length": -1, "hash_ids": [1]}', "input_length -1 does not fit 1 hash ids"),
        ('{"input_length": 513, "hash_ids": [1]}', "input_length 513 does not fit 1 hash ids"),
        ('{"input_length": 512, "hash_ids": [1, 2]}', "input_length 512 does not fit 2 hash ids"),
        ('{"input_length": 5, "hash_ids": [true]}', "hash_ids"),
        ('{"input_length": 5, "hash_ids": [1], "timestamp": -3}', "timestamp"),
        ("[1, 2]", "expected a JSON object"),
    ],
)
def test_malformed_line_names_file_line_and_problem(tmp_path, capsys, line, problem):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"input_length": 512, "hash_ids": [1]}\n' + line + "\n")
    assert main(["--trace", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert err.startswith(f"kvflow-replay: error: {path}:2: ") and problem in err


def _one_line_error(capsys, path: Path, *flags: str) -> str:
    assert main(["--trace", str(path), *flags]) == 2
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err and captured.out == ""
    assert err.startswith(f"kvflow-replay: error: {path}:")
    return err


def test_unreadable_files_are_one_line_errors(tmp_path, capsys):
    record = b'{"timestamp": 0, "input_length": 600, "output_length": 1, "hash_ids": [1, 2]}\n'
    packed = gzip.compress(record * 50, mtime=0)
    (tmp_path / "truncated.jsonl.gz").write_bytes(packed[: len(packed) // 2])
    (tmp_path / "corrupt.jsonl.gz").write_bytes(packed[:12] + bytes(64) + packed[76:])
    (tmp_path / "bad_magic.jsonl.gz").write_bytes(b"not gzip at all\n")
    (tmp_path / "latin1.jsonl").write_bytes(record + b'{"input_length": 5, "hash_ids": ["caf\xe9"]}\n')
    (tmp_path / "empty.jsonl").write_bytes(b"\n\n")
    (tmp_path / "adir").mkdir()
    expected = {
        "truncated.jsonl.gz": "cannot read file",
        "corrupt.jsonl.gz": "cannot read file",
        "bad_magic.jsonl.gz": "cannot read file",
        "latin1.jsonl": ":2: line is not valid UTF-8",
        "empty.jsonl": ":1: no requests",
        "adir": ":1: cannot read file: Is a directory",
        "missing.jsonl": ":1: cannot read file: No such file or directory",
    }
    for name, problem in expected.items():
        assert problem in _one_line_error(capsys, tmp_path / name), name


def test_gzip_is_told_by_magic_bytes_and_ids_may_be_strings(tmp_path, capsys):
    lines = [
        '{"timestamp": 0, "input_length": 10, "output_length": 1, "hash_ids": ["a", 7]}',
        '{"timestamp": 1, "input_length": 6, "output_length": 1, "hash_ids": ["a"]}',
    ] * 3
    plain, packed = tmp_path / "t.jsonl", tmp_path / "t_without_suffix"
    plain.write_text("\n".join(lines) + "\n")
    packed.write_bytes(gzip.compress(plain.read_bytes()))
    results = []
    for path in (plain, packed):
        assert main(["--trace", str(path), "--block-tokens", "8", "--warmup-fraction", "0"]) == 0
        results.append(json.loads(capsys.readouterr().out.strip().splitlines()[-1]))
    assert results[0]["hit_tokens"] == results[1]["hit_tokens"] == 6 + 10 + 6 + 10 + 6  # all but the first
    assert results[0]["unit"] == "block" and results[0]["total_tokens"] == 3 * (10 + 6)
    # the block size is a parameter: 10 tokens in 2 ids do not fit blocks of 4
    assert ":1: input_length 10 does not fit 2 hash ids (blocks of 4" in _one_line_error(
        capsys, plain, "--block-tokens", "4"
    )


def test_kvflow_trace_gzipped_without_suffix_and_corrupt(tmp_path, capsys):
    from traces import generate, write_trace

    packed = tmp_path / "seq.jsonl.gz"
    write_trace(generate("sequential", agents=2, runs=1, seed=0), packed)
    renamed = tmp_path / "seq.trace"
    renamed.write_bytes(packed.read_bytes())
    assert main(["--trace", str(renamed), "--model", "tiny", "--budget-gib", "0.001"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["unit"] == "token"
    data = packed.read_bytes()
    (tmp_path / "cut.trace").write_bytes(data[: len(data) - 40])
    assert "cannot read file" in _one_line_error(capsys, tmp_path / "cut.trace")


def test_replay_backend_imports_no_simpy_or_torch():
    code = (
        "import sys, sim.replay, sim.replay_cli; "
        "print(sorted({'simpy', 'torch', 'real', 'analysis'} & set(sys.modules)))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


@pytest.mark.parametrize(
    "flag,value,listed",
    [
        (
            "--policy",
            "fifo",
            "lru, kvflow, pause_aware, ttl_pin, kvflow_cost, kvflow_sessions, kvflow_gd, subagent_aware, belady",
        ),
        ("--model", "gpt-5", "llama-3.1-8b"),
    ],
)
def test_unknown_names_list_valid_ones(mooncake_path, capsys, flag, value, listed):
    assert main(["--trace", str(mooncake_path), flag, value]) == 2
    err = capsys.readouterr().err
    assert listed in err and "Traceback" not in err


def test_same_input_same_result(requests):
    a = replay(requests[:500], "kvflow", 200, 0.2)
    b = replay(requests[:500], "kvflow", 200, 0.2)
    assert a == b


def test_imported_mooncake_trace_replays_to_the_same_hit_rates(tmp_path, mooncake_path, capsys):
    from traces import write_trace
    from traces.importers import import_trace

    imported = tmp_path / "mooncake.jsonl.gz"
    write_trace(import_trace("mooncake", [str(mooncake_path)]), imported)
    for policy in ("lru", "belady"):
        rates = []
        for path in (mooncake_path, imported):
            assert main(["--trace", str(path), "--policy", policy, "--budget-gib", "16"]) == 0
            rates.append(json.loads(capsys.readouterr().out.strip().splitlines()[-1])["hit_tokens"])
        assert rates[0] == rates[1]


def test_token_level_replay_of_a_generated_trace(tmp_path, capsys):
    from traces import generate, write_trace

    path = tmp_path / "seq.jsonl"
    write_trace(
        generate("sequential", agents=4, fixed_tokens=256, dynamic_tokens=16, output_tokens=8, runs=3, seed=0), path
    )
    results = {}
    for policy in ("lru", "kvflow", "belady"):
        assert (
            main(
                [
                    "--trace",
                    str(path),
                    "--policy",
                    policy,
                    "--model",
                    "tiny",
                    "--budget-gib",
                    "0.00015",
                    "--warmup-fraction",
                    "0",
                ]
            )
            == 0
        )
        results[policy] = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        assert results[policy]["unit"] == "token"
    # a cyclic workflow under pressure: LRU evicts exactly the next agent; KVFlow's hints keep it
    assert results["lru"]["hit_rate"] < results["kvflow"]["hit_rate"] <= results["belady"]["hit_rate"]


# ---------------------------------------------------------------- property tests of the Mooncake reader
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

_IDS = st.one_of(st.integers(-(2**40), 2**40), st.text("abc", min_size=1, max_size=3))


@st.composite
def _mooncake_files(draw: st.DrawFn) -> tuple[int, list[dict], list[str], bool]:
    """(block_tokens, records, the file's lines with blank ones mixed in, gzipped?)."""
    block = draw(st.sampled_from([1, 3, 16, 512]))
    records = []
    for _ in range(draw(st.integers(1, 12))):
        ids = draw(st.lists(_IDS, min_size=1, max_size=6))
        record = {"hash_ids": ids, "input_length": draw(st.integers(block * (len(ids) - 1) + 1, block * len(ids)))}
        if draw(st.booleans()):
            record["timestamp"] = draw(st.integers(0, 5)) if draw(st.booleans()) else draw(st.floats(0, 5))
        if draw(st.booleans()):
            record["output_length"] = draw(st.integers(0, 100))
        records.append(record)
    lines = []
    for record in records:
        lines += [""] * draw(st.integers(0, 1)) + [json.dumps(record)]
    return block, records, lines, draw(st.booleans())


def _write(path: Path, lines: list[str | bytes], gzipped: bool) -> None:
    data = b"".join((x if isinstance(x, bytes) else x.encode()) + b"\n" for x in lines)
    path.write_bytes(gzip.compress(data) if gzipped else data)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_mooncake_files())
def test_valid_mooncake_records_round_trip_to_direct_requests(tmp_path_factory, case):
    from sim.replay_cli import load_requests

    block, records, lines, gzipped = case
    path = tmp_path_factory.mktemp("mc") / "trace"  # no suffix: gzip is told by its magic bytes
    _write(path, lines, gzipped)
    requests, block_mode = load_requests(path, block)
    # direct: stable arrival order (missing timestamp = 0), one unit per id, the last one partial
    expected = []
    for r in sorted(records, key=lambda r: r.get("timestamp", 0) / 1000):
        full = len(r["hash_ids"]) - 1
        expected.append((r["hash_ids"], [block] * full + [r["input_length"] - block * full]))
    assert block_mode and [(q.keys, q.unit_tokens) for q in requests] == expected


def _corruptions() -> st.SearchStrategy[str | bytes]:
    bad_values = [
        ("hash_ids", []),
        ("hash_ids", [True]),
        ("hash_ids", [1.5]),
        ("hash_ids", "1"),
        ("hash_ids", None),
        ("input_length", 0),
        ("input_length", 10**9),
        ("input_length", "5"),
        ("input_length", True),
        ("output_length", -1),
        ("timestamp", -1),
        ("timestamp", "x"),
    ]
    records = st.sampled_from(bad_values).map(lambda kv: json.dumps({"hash_ids": [1], "input_length": 1, kv[0]: kv[1]}))
    texts = st.sampled_from(["{", "[1, 2]", "3", '"x"', "null", "{} {}", '{"hash_ids": [1]} x'])
    return st.one_of(records, texts, st.just(b'{"hash_ids": ["\xff"], "input_length": 1}'))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_mooncake_files(), st.data())
def test_corrupt_mooncake_record_is_one_line_naming_file_and_line(tmp_path_factory, case, data):
    import contextlib
    import io

    block, _, lines, gzipped = case
    at = data.draw(st.integers(0, len(lines) - 1))
    lines = lines[:at] + [data.draw(_corruptions())] + lines[at + 1 :]
    path = tmp_path_factory.mktemp("bad") / "trace.jsonl"
    _write(path, lines, gzipped)
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(["--trace", str(path), "--block-tokens", str(block)])
    assert code == 2 and out.getvalue() == ""
    assert len(err.getvalue().splitlines()) == 1
    assert err.getvalue().startswith(f"kvflow-replay: error: {path}:{at + 1}: ")
