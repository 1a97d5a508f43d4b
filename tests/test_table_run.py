"""``traces.table_run.TableRun``: what the simulator's tree keeps for a cached stream (a first id and a
window of the shared table) instead of a copy. It must read exactly as the array of its ids does
everywhere the tree looks (length, indexing, slicing, iteration, equality), ``table_run`` must
find only runs that are really there, and a simulation must give the same numbers with it as
with copies."""

from __future__ import annotations

from array import array

from hypothesis import given, settings
from hypothesis import strategies as st

from kvflow.radix import common_prefix_len, page_key
from traces import tokens as tk
from traces.schema import Segment
from traces.table_run import RUN_MIN_TOKENS, TableRun, table_run
from traces.tokens import TABLE_SIZE, TOKEN_TYPECODE, token_table

TABLE = token_table()

runs = st.builds(
    lambda first, offset, n: TableRun(first, offset, min(n, TABLE_SIZE - offset + 1)),
    st.integers(0, 2**31 - 1),
    st.integers(0, TABLE_SIZE - RUN_MIN_TOKENS),
    st.integers(RUN_MIN_TOKENS, 3000),
)


def _ids(run: TableRun) -> array:
    out = array(TOKEN_TYPECODE, [run.first])
    out += TABLE[run.offset : run.offset + run.n - 1]
    return out


@given(runs, st.integers(-3100, 3100), st.integers(-3100, 3100), st.sampled_from([None, 1, 2, -1]))
@settings(max_examples=300, deadline=None)
def test_a_run_reads_as_its_ids(run: TableRun, a: int, b: int, step: int | None) -> None:
    ids = _ids(run)
    assert run.ids() == ids and len(run) == len(ids) and list(run) == list(ids)
    assert run == ids and ids == run and not (run != ids) and run == TableRun(run.first, run.offset, run.n)
    assert run != list(ids) and list(ids) != run  # as an array: never equal to a list
    for i in (0, 1, len(ids) - 1, -1, -len(ids), a):
        if -len(ids) <= i < len(ids):
            assert run[i] == ids[i]
    part, expected = run[a:b:step], ids[a:b:step]
    assert len(part) == len(expected) and list(part) == list(expected)
    assert part == expected  # a long step-1 slice is a run again, a short one an array
    assert isinstance(part, TableRun) == (step in (None, 1) and len(expected) >= RUN_MIN_TOKENS)
    if isinstance(part, TableRun):
        assert part[1:] == expected[1:] and part[: len(part) // 2] == expected[: len(expected) // 2]
    assert run.tobytes() == ids.tobytes()
    for page in (1, 64, 512):  # a paged tree keys a run's page as it keys the array's
        start = (abs(a) % len(ids)) // page * page
        assert page_key(run, start, page) == page_key(ids, start, page)


@given(runs, st.integers(0, 50))
@settings(max_examples=100, deadline=None)
def test_runs_of_different_ids_are_unequal(run: TableRun, cut: int) -> None:
    ids = _ids(run)
    other = array(TOKEN_TYPECODE, ids)
    other[cut % len(other)] ^= 1
    assert run != other and not (run == other)
    assert run != TableRun(run.first ^ 1, run.offset, run.n)
    assert run != ids[:-1] and run[:-1] != ids
    # the tree's prefix comparison finds the first differing id as it does on the array itself
    for start in (0, 1):
        assert common_prefix_len(run, other, start) == common_prefix_len(ids, other, start)
        assert common_prefix_len(run[start:], other) == common_prefix_len(ids[start:], other)


@given(
    st.lists(st.tuples(st.sampled_from(["shared", "unique"]), st.integers(1, 2000)), min_size=1, max_size=4),
    st.integers(0, 1000),
)
@settings(max_examples=80, deadline=None)
def test_table_run_finds_the_streams_of_a_prompt_and_nothing_else(parts: list[tuple[str, int]], probe: int) -> None:
    """On a prompt made of streams, each segment long enough is found as a run equal to its slice
    (and so is a long enough part inside one); a slice across two streams or of ids off the table
    is never a run."""
    source = tk.TokenSource(seed=3, block_tokens=64)
    segments = [Segment(kind=kind, key=f"k{i}", n_tokens=n) for i, (kind, n) in enumerate(parts)]
    prompt = source.prompt_array(segments, "inv")
    pos = 0
    for index, seg in enumerate(segments):
        end = pos + seg.n_tokens
        found = table_run(prompt, pos, end)
        if seg.kind == "shared":
            offset = tk._stream_start(("shared", seg.key, 3))[1]
        else:
            offset = tk._unique_stream_start("inv", index, seg.key, 3)[1]
        wraps = offset + seg.n_tokens - 1 > TABLE_SIZE  # (such a stream is built in pieces: no run)
        if seg.n_tokens >= RUN_MIN_TOKENS and not wraps:
            assert isinstance(found, TableRun) and found == prompt[pos:end]
            inner = pos + 1 + probe % max(1, seg.n_tokens - 1)
            if end - inner >= RUN_MIN_TOKENS:
                assert table_run(prompt, inner, end) == prompt[inner:end]
        else:
            assert found is None or found == prompt[pos:end]
        if end < len(prompt):  # across a segment boundary: two streams
            assert table_run(prompt, pos, end + 1) is None
        pos = end
    off_table = array(TOKEN_TYPECODE, range(5, 5 + 300))
    assert table_run(off_table, 0, 300) is None
    assert table_run(list(prompt), 0, len(prompt)) is None  # lists are left alone
    assert table_run(prompt, 0, RUN_MIN_TOKENS - 1) is None


def test_a_simulation_gives_the_same_rows_with_runs_as_with_copies(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """The tree keeps runs instead of copies: every request's counters and times are unchanged."""
    import sim.runner as runner
    from harness.setup import build_trace

    workload = runner.load_conf("workload", "concurrent")
    workload["params"].update(workflows=6, fixed_tokens=300, dynamic_tokens=100, output_tokens=20)
    cfg = {
        "seed": 0,
        "hardware": runner.load_conf("hardware", "h100"),
        "model": runner.load_conf("model", "llama-3.1-8b"),
        "workload": workload,
        "policy": runner.load_conf("policy", "kvflow"),
        "cache": {"gpu_capacity_tokens": 4000, "cpu_capacity_tokens": 8000},
        "engine": {},
        "sim": {"timeline": False, "check_invariants": True},
    }
    with_runs = runner.simulate(cfg, trace=build_trace(workload, seed=0))
    monkeypatch.setattr(runner, "table_run", lambda tokens, start, end: None)
    with_copies = runner.simulate(cfg, trace=build_trace(workload, seed=0))
    assert [dict(r) for r in with_runs.rows] == [dict(r) for r in with_copies.rows]

    def numbers(summary: dict) -> dict:
        return {k: v for k, v in summary.items() if "wall" not in k}

    assert numbers(with_runs.summary) == numbers(with_copies.summary)
    # the tree was exercised: GPU hits, evictions (with splits of partly evicted nodes) on both tiers
    evicted = with_runs.summary["details"]["evicted_tokens"]
    assert with_runs.summary["hit_rate_gpu"] > 0 and evicted["gpu"] > 0 and evicted["cpu"] > 0


@given(st.lists(st.integers(0, 10**9), min_size=1, max_size=6), st.integers(0, 5))
@settings(max_examples=60, deadline=None)
def test_a_block_prompt_is_a_run_per_block_never_across_blocks(hashes: list[int], which: int) -> None:
    """A hash-id prompt (Mooncake, Weka): one block is a run, a span of two or more is not (each
    block's stream starts with its own first id)."""
    source = tk.TokenSource(seed=1, block_tokens=128)
    segments = [Segment(kind="block", key=h, n_tokens=128) for h in hashes]
    prompt = source.prompt_array(segments, "inv")
    k = which % len(hashes)
    one = table_run(prompt, 128 * k, 128 * (k + 1))
    wraps = tk._block_stream_start(hashes[k], 1)[1] + 127 > TABLE_SIZE
    assert (one is None and wraps) or one == prompt[128 * k : 128 * (k + 1)]
    for a in range(len(hashes) - 1):
        assert table_run(prompt, 128 * a, 128 * (a + 2)) is None
