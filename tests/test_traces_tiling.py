"""traces.tiling: a long Mooncake-style trace from one file, and the bounded block-stream cache."""

from __future__ import annotations

import json
from array import array

import pytest

from traces import tokens
from traces.importers.mooncake import import_files
from traces.tiling import tile_mooncake
from traces.tokens import stream_array


@pytest.fixture
def mooncake_file(tmp_path):
    lines = [
        {"timestamp": 0, "input_length": 1000, "output_length": 3, "hash_ids": [1, 2]},
        {"timestamp": 30, "input_length": 1024, "output_length": 5, "hash_ids": [1, 2]},
        {"timestamp": 10, "input_length": 600, "output_length": 0, "hash_ids": [1, 7]},
    ]
    path = tmp_path / "m.jsonl"
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    return path


def test_tiles_repeat_the_file_in_fresh_namespaces(mooncake_file):
    trace = tile_mooncake(mooncake_file, 7)
    invs = trace.invocations
    assert [inv.id for inv in invs] == [str(i) for i in range(7)]
    assert [inv.arrival_s for inv in invs] == pytest.approx([0, 0.01, 0.03, 0.045, 0.055, 0.075, 0.09])
    assert [inv.output_tokens for inv in invs] == [3, 0, 5] * 2 + [3]
    first = import_files([str(mooncake_file)]).invocations
    for k, inv in enumerate(invs):
        base = first[k % 3]
        assert [s.n_tokens for s in inv.segments] == [s.n_tokens for s in base.segments]
        assert [s.key for s in inv.segments] == [s.key + 8 * (k // 3) for s in base.segments]  # stride 1 + max id
    assert invs[0].segments[0] is invs[1].segments[0]  # one shared Segment per full block of a tile


def test_tiled_prompts_are_the_block_streams(mooncake_file):
    trace = tile_mooncake(mooncake_file, 6)
    for inv in trace.invocations:
        want = array(tokens.TOKEN_TYPECODE)
        for seg in inv.segments:
            want += stream_array(seg.n_tokens, "block", seg.key, trace.seed)
        assert trace.prompt_array(inv) == want
        assert trace.prompt_tokens(inv) == list(want)


def test_block_cache_is_bounded(mooncake_file, monkeypatch):
    monkeypatch.setattr(tokens, "BLOCK_CACHE_LIMIT", 2)
    trace = tile_mooncake(mooncake_file, 9)
    source = tokens.TokenSource(trace.seed, trace.block_tokens)
    for inv in trace.invocations:
        assert source.prompt_array(inv.segments, inv.id) == trace.prompt_array(inv)
    assert len(source._block_starts) == 2


def test_bad_count(mooncake_file):
    with pytest.raises(ValueError, match="n_requests"):
        tile_mooncake(mooncake_file, 0)


def test_one_block_prompts_and_gc_state(tmp_path):
    """A one-block request (the picker's short-list path) tiles like the rest, and the build
    leaves the garbage collector as it found it (it pauses it while allocating)."""
    import gc

    lines = [
        {"timestamp": 0, "input_length": 512, "output_length": 1, "hash_ids": [4]},
        {"timestamp": 5, "input_length": 700, "output_length": 2, "hash_ids": [4, 9]},
    ]
    path = tmp_path / "one.jsonl"
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    for enabled in (True, False):
        (gc.enable if enabled else gc.disable)()
        try:
            invs = tile_mooncake(path, 4).invocations
            assert gc.isenabled() is enabled
        finally:
            gc.enable()
        assert [[s.key for s in inv.segments] for inv in invs] == [[4], [4, 9], [14], [14, 19]]
        assert [[s.n_tokens for s in inv.segments] for inv in invs] == [[512], [512, 188]] * 2
        assert invs[2].segments[0] is invs[3].segments[0]
