"""kvflow-replay: hit rates against the independent reference (DATA.md) and kvcache-simulator live."""

from __future__ import annotations

import json
import math

import pytest

from kvflow.replay import main, read_mooncake, replay

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
def test_oracle_beats_lru_and_is_close_to_reference_optimal(requests, gib):
    capacity = math.floor(gib * 2**30 / BLOCK_BYTES)
    oracle = replay(requests, "oracle", capacity)["hit_rate"]
    assert oracle >= replay(requests, "lru", capacity)["hit_rate"]
    assert abs(oracle - REFERENCE_OPTIMAL[gib]) < 0.02


def test_lru_matches_kvcache_simulator_live(requests):
    kcs = pytest.importorskip("kvcache_sim.simulator")
    from kvcache_sim.trace import parse_trace_file

    from conftest import MOONCAKE

    theirs = kcs.run_sweep(parse_trace_file(MOONCAKE, block_size=512), model_id="llama-3.1-8b",
                           budgets_gib=[16, 64, 128], policies=["lru", "optimal"], backend="python")
    for point in theirs["points"]:
        ours_lru = replay(requests, "lru", point["cacheBlocks"])
        assert ours_lru["hit_tokens"] == point["results"]["lru"]["hitTokens"]
        assert ours_lru["total_tokens"] == point["results"]["lru"]["totalTokens"]
        ours_opt = replay(requests, "oracle", point["cacheBlocks"])
        assert abs(ours_opt["hit_rate"] - point["results"]["optimal"]["hitRate"]) < 0.02


def test_cli_last_line_is_json(mooncake_path, capsys):
    assert main(["--trace", str(mooncake_path), "--policy", "lru", "--model", "llama-3.1-8b",
                 "--budget-gib", "64", "--block-tokens", "512", "--warmup-fraction", "0.5"]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    result = json.loads(last)
    for key in ("hit_rate", "hit_tokens", "total_tokens", "requests", "policy", "budget_gib"):
        assert key in result
    assert result["policy"] == "lru" and result["budget_gib"] == 64 and result["requests"] == 3993


@pytest.mark.parametrize("line,problem", [
    ("{not json", "invalid JSON"),
    ('{"input_length": 5}', "'hash_ids'"),
    ('{"input_length": -1, "hash_ids": [1]}', "'input_length'"),
    ('[1, 2]', "expected a JSON object"),
])
def test_malformed_line_names_file_line_and_problem(tmp_path, capsys, line, problem):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"input_length": 512, "hash_ids": [1]}\n' + line + "\n")
    assert main(["--trace", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert f"{path}:2:" in err and problem in err


@pytest.mark.parametrize("flag,value,listed", [
    ("--policy", "fifo", "lru, kvflow, oracle"),
    ("--model", "gpt-5", "llama-3.1-8b"),
])
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
    for policy in ("lru", "oracle"):
        rates = []
        for path in (mooncake_path, imported):
            assert main(["--trace", str(path), "--policy", policy, "--budget-gib", "16"]) == 0
            rates.append(json.loads(capsys.readouterr().out.strip().splitlines()[-1])["hit_tokens"])
        assert rates[0] == rates[1]


def test_token_level_replay_of_a_generated_trace(tmp_path, capsys):
    from traces import generate, write_trace

    path = tmp_path / "seq.jsonl"
    write_trace(generate("sequential", agents=4, fixed_tokens=256, dynamic_tokens=16, output_tokens=8,
                         runs=3, seed=0), path)
    results = {}
    for policy in ("lru", "kvflow", "oracle"):
        assert main(["--trace", str(path), "--policy", policy, "--model", "tiny", "--budget-gib", "0.00015",
                     "--warmup-fraction", "0"]) == 0
        results[policy] = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        assert results[policy]["unit"] == "token"
    # a cyclic workflow under pressure: LRU evicts exactly the next agent; KVFlow's hints keep it
    assert results["lru"]["hit_rate"] < results["kvflow"]["hit_rate"] <= results["oracle"]["hit_rate"]
