"""What a simulation keeps per request is compact and reads the same (issue 17 item 3): rows in
slots, finished requests dropped by the driver, one shared empty user set per untagged node,
packed token-stream starts, the token table without int objects. Memory itself is measured by
``benchmarks/scale.py --breakdown``, not here; these pin the behaviour the compaction must keep."""

from __future__ import annotations

import csv
import io

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from harness.rows import ROW_FIELDS, RequestRow, request_row
from kvflow.radix import NO_USERS, RadixNode, RadixTree
from traces import tokens as tk
from traces.schema import Segment


class _Req:
    prompt_tokens, fixed_tokens, output_tokens = 1280, 1024, 256
    arrival_s, admit_s, first_token_s, finish_s = 1.0, 1.5, 2.25, 4.0
    hit_gpu_tokens, loaded_cpu_tokens, recomputed_tokens, loaded_bytes, stalled_s = 1024, 0, 256, 0, 0.0


class _Inv:
    id, client_id, agent_id = "wf0/it0/agent3", "wf0", "agent3"


def _row() -> RequestRow:
    return request_row(_Inv(), _Req(), 0.5)


def test_request_row_reads_as_the_dict_it_replaced() -> None:
    row = _row()
    expected = {
        "request_id": "wf0/it0/agent3",
        "client_id": "wf0",
        "agent_id": "agent3",
        "warmup": False,
        "prompt_tokens": 1280,
        "fixed_tokens": 1024,
        "output_tokens": 256,
        "ready_s": 0.5,
        "arrival_s": 1.0,
        "admit_s": 1.5,
        "queue_s": 0.5,
        "first_token_s": 2.25,
        "finish_s": 4.0,
        "ttft_s": 1.25,
        "latency_s": 3.0,
        "hit_gpu_tokens": 1024,
        "loaded_cpu_tokens": 0,
        "recomputed_tokens": 256,
        "loaded_bytes": 0,
        "stalled_s": 0.0,
    }
    assert list(row) == list(ROW_FIELDS) == list(expected)
    assert dict(row) == expected and row == expected and expected == row
    assert row["latency_s"] == 3.0 and row.get("nope", "default") == "default" and "ttft_s" in row
    assert {**row, "extra": 1}["extra"] == 1
    with pytest.raises(KeyError):
        row["keys"]  # an attribute of the class, not a field
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=ROW_FIELDS)
    writer.writeheader()
    writer.writerow(row)
    assert out.getvalue().splitlines()[1].startswith("wf0/it0/agent3,wf0,agent3,False,1280,1024,256,0.5,1.0,1.5,0.5")


def test_a_row_takes_its_stored_fields_in_order() -> None:
    """``RequestRow`` assigns each slot from its own parameter: the names are the slots, in order."""
    import inspect

    from harness.rows import _STORED_FIELDS

    assert tuple(inspect.signature(RequestRow).parameters) == _STORED_FIELDS == RequestRow.__slots__


def test_the_driver_keeps_rows_not_requests() -> None:
    """The simulator's driver keeps no request nor ready time (each request carries its own) and
    its rows are in trace order, one per invocation."""
    from harness.setup import build_trace
    from sim.driver import WorkflowDriver
    from sim.runner import load_conf, simulate

    workload = load_conf("workload", "concurrent")
    workload["params"].update(workflows=3, fixed_tokens=128, dynamic_tokens=32, output_tokens=8)
    trace = build_trace(workload, seed=0)
    seen: list[WorkflowDriver] = []
    rows = WorkflowDriver.rows

    def spy(self: WorkflowDriver) -> list[RequestRow]:
        seen.append(self)
        return rows(self)

    cfg = {
        "seed": 0,
        "hardware": load_conf("hardware", "h100"),
        "model": load_conf("model", "llama-3.1-8b"),
        "workload": workload,
        "policy": load_conf("policy", "kvflow"),
        "cache": {"gpu_capacity_tokens": 2048, "cpu_capacity_tokens": 8192},
        "engine": {},
        "sim": {"timeline": False},
    }
    WorkflowDriver.rows = spy  # type: ignore[method-assign]
    try:
        result = simulate(cfg, trace=trace)
    finally:
        WorkflowDriver.rows = rows  # type: ignore[method-assign]
    (driver,) = seen
    assert not hasattr(driver, "requests") and not hasattr(driver, "ready_s")
    assert [r["request_id"] for r in result.rows] == [inv.id for inv in trace.invocations]
    assert all(isinstance(r, RequestRow) for r in result.rows)


class _Key:
    def key(self, node: RadixNode) -> tuple:
        return (0, 0.0, node.last_access)


@given(st.lists(st.tuples(st.integers(0, 5), st.integers(0, 2), st.booleans()), max_size=40))
@settings(max_examples=60, deadline=None)
def test_users_start_shared_and_empty_and_never_leak_between_nodes(ops: list[tuple[int, int, bool]]) -> None:
    """Every node starts with the one shared empty set; adding a user gives that node its own set
    only; a split head copies the users it has (the shared empty set when none)."""
    tree = RadixTree(_Key())
    nodes = [tree.insert_below(tree.root, [i * 10 + j for j in range(4)]) for i in range(6)]
    model: list[tuple[set, set]] = [(set(), set()) for _ in nodes]
    for index, who, dynamic in ops:
        user = (f"c{who}", "a")
        if dynamic:
            nodes[index].add_dynamic_user(user)
            model[index][1].add(user)
        else:
            nodes[index].add_user(user)
            model[index][0].add(user)
    for node, (users, dynamic_users) in zip(nodes, model):
        assert set(node.users) == users and set(node.dynamic_users) == dynamic_users
        assert (node.users is NO_USERS) == (not users)
        assert (node.dynamic_users is NO_USERS) == (not dynamic_users)
        for user in list(dynamic_users):
            node.discard_dynamic_user(user)
        node.discard_dynamic_user(("never", "a"))  # absent: nothing happens (the shared set included)
        assert not node.dynamic_users
    assert not NO_USERS
    tagged = nodes[0]
    tagged.add_user(("c9", "a"))
    users_before = set(tagged.users)
    head = tree.split(tagged, 2)
    assert set(head.users) == users_before == set(tagged.users) and head.users is not tagged.users
    untagged = tree.insert_below(tree.root, [100, 101, 102, 103])
    assert tree.split(untagged, 2).users is NO_USERS and untagged.users is NO_USERS


@given(st.lists(st.tuples(st.text(min_size=1, max_size=12), st.integers(0, 3)), min_size=1, max_size=30))
@settings(max_examples=50, deadline=None)
def test_packed_unique_starts_give_the_unpacked_streams(keys: list[tuple[str, int]]) -> None:
    """A unique segment's ids are the stream its (invocation, index) names, whether its start was
    just hashed or read back packed from the per-trace cache."""
    source = tk.TokenSource(seed=7, block_tokens=64)
    seg = Segment(kind="unique", key="", n_tokens=40)
    for _ in range(2):  # first hashed, then read back
        for inv_id, index in keys:
            expected = tk.stream_array(40, "unique", inv_id, index, "", 7)
            assert source.segment_array(seg, inv_id, index) == expected


def test_the_table_has_the_ids_of_the_list_expansion() -> None:
    """The table is filled from numpy without int objects; the list path (made on first use) has
    the same ids, so list and array expansions agree."""
    assert tk._table_array.tolist() == tk.random_tokens(tk.TABLE_SIZE, "token-table") or not tk._table_array
    assert tk.stream_tokens(3000, "shared", "x", 1) == tk.stream_array(3000, "shared", "x", 1).tolist()
    assert tk._table_array.tolist() == tk.random_tokens(tk.TABLE_SIZE, "token-table")
