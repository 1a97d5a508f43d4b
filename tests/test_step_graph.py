import math

import pytest

from kvflow.step_graph import INF, StepGraph


def chain(*names, agg="AND"):
    return StepGraph.from_dict(
        {"agents": {n: {"aggregation": agg} for n in names}, "edges": [[a, b] for a, b in zip(names, names[1:])]}
    )


def test_sequential_chain_counts_steps():
    g = chain("a", "b", "c", "d")
    assert g.steps_to_execution(["b"]) == {"a": INF, "b": 0, "c": 1, "d": 2}


def test_paper_and_node_waits_for_slowest_predecessor():
    # A -> B -> D and A -> C, C -> D ; D is AND: max(pred)+1
    g = StepGraph.from_dict(
        {
            "agents": {"A": {}, "B": {}, "C": {}, "X": {}, "D": {"aggregation": "AND"}},
            "edges": [["A", "B"], ["B", "X"], ["X", "D"], ["A", "C"], ["C", "D"]],
        }
    )
    s = g.steps_to_execution(["A"])
    assert s["B"] == 1 and s["C"] == 1 and s["X"] == 2
    assert s["D"] == 3  # waits for the longer branch


def test_paper_or_node_runs_after_fastest_predecessor():
    g = StepGraph.from_dict(
        {
            "agents": {"A": {}, "B": {}, "C": {}, "X": {}, "D": {"aggregation": "OR"}},
            "edges": [["A", "B"], ["B", "X"], ["X", "D"], ["A", "C"], ["C", "D"]],
        }
    )
    assert g.steps_to_execution(["A"])["D"] == 2


def test_finished_branch_no_longer_gates_and_node():
    g = StepGraph.from_dict(
        {
            "agents": {"P": {}, "w1": {}, "w2": {}, "agg": {"aggregation": "AND"}},
            "edges": [["P", "w1"], ["P", "w2"], ["w1", "agg"], ["w2", "agg"]],
        }
    )
    s = g.steps_to_execution(["w2"])  # w1 already done
    assert s["agg"] == 1 and s["P"] == INF and s["w1"] == INF


def test_four_agent_loop_gives_next_occurrence():
    g = StepGraph.from_dict(
        {
            "agents": {"Planner": {"aggregation": "OR"}, "Executor": {}, "Expresser": {}, "Reviewer": {}},
            "edges": [
                ["Planner", "Executor"],
                ["Executor", "Expresser"],
                ["Expresser", "Reviewer"],
                ["Reviewer", "Planner"],
            ],
        }
    )
    assert g.steps_to_execution(["Executor"]) == {"Planner": 3, "Executor": 0, "Expresser": 1, "Reviewer": 2}
    # the planner that just finished comes back after the loop: next occurrence, not INF
    assert g.steps_to_execution(["Reviewer"])["Planner"] == 1


def test_horizon_bounds_loops():
    names = [f"a{i}" for i in range(6)]
    d = {
        "agents": {n: {"aggregation": "OR"} for n in names},
        "edges": [[a, b] for a, b in zip(names, names[1:] + names[:1])],
        "horizon": 3,
    }
    s = StepGraph.from_dict(d).steps_to_execution(["a0"])
    assert s["a3"] == 3 and s["a4"] == INF and math.isinf(s["a5"])


def test_round_trip_and_errors():
    d = {"agents": {"x": {"aggregation": "OR"}, "y": {"aggregation": "AND"}}, "edges": [["x", "y"]], "horizon": 5}
    assert StepGraph.from_dict(d).to_dict() == d
    with pytest.raises(ValueError, match="unknown agent 'z'"):
        StepGraph.from_dict({"agents": {"x": {}}, "edges": [["x", "z"]]})
    with pytest.raises(ValueError, match="aggregation"):
        StepGraph.from_dict({"agents": {"x": {"aggregation": "XOR"}}})
    with pytest.raises(ValueError, match="unknown agents"):
        chain("a").steps_to_execution(["q"])
