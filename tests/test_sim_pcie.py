"""PCIe channels: full duplex across directions, serial within one, optional bidirectional slowdown."""

import pytest
import simpy

from harness.cost_model import CostModel
from kvflow.model_spec import load_model_spec
from sim.pcie import PCIeLink
from sim.runner import load_conf

GB = 10**9


def link(penalty: bool) -> tuple[simpy.Environment, PCIeLink, CostModel]:
    hw = load_conf("hardware", "h100")
    cost = CostModel.from_config(hw, load_model_spec("tiny"))
    env = simpy.Environment()
    return env, PCIeLink(env, cost, bidirectional_penalty=penalty), cost


def run_copies(penalty: bool, directions: list[str]) -> tuple[list[float], CostModel, PCIeLink]:
    env, pcie, cost = link(penalty)
    ends: list[float] = [0.0] * len(directions)
    for i, d in enumerate(directions):
        env.process(pcie.transfer(GB, d, on_done=lambda i=i: ends.__setitem__(i, env.now)))
    env.run()
    return ends, cost, pcie


def test_opposite_directions_overlap():
    ends, cost, pcie = run_copies(False, ["h2d", "d2h"])
    assert ends[0] == pytest.approx(cost.transfer_time_s(GB, "h2d"))
    assert ends[1] == pytest.approx(cost.transfer_time_s(GB, "d2h"))
    assert pcie.bytes_moved == {"h2d": GB, "d2h": GB}


def test_same_direction_serialises():
    ends, cost, _ = run_copies(False, ["h2d", "h2d"])
    t = cost.transfer_time_s(GB, "h2d")
    assert sorted(ends) == pytest.approx([t, 2 * t])


def test_bidirectional_penalty_slows_h2d_only_while_d2h_runs():
    ends, cost, _ = run_copies(True, ["d2h", "h2d"])
    d2h_s = cost.transfer_time_s(GB, "d2h")
    assert ends[0] == pytest.approx(d2h_s)
    # by hand: slowed rate until the D2H copy ends, the rest of the bytes at full rate
    lat = cost.transfer_time_s(0, "h2d")
    slow_rate = GB / (cost.transfer_time_s(GB, "h2d", other_direction_busy=True) - lat)
    fast_rate = GB / (cost.transfer_time_s(GB, "h2d") - lat)
    moved_slow = slow_rate * (d2h_s - lat)
    expected = d2h_s + (GB - moved_slow) / fast_rate
    assert ends[1] == pytest.approx(expected)
    assert cost.transfer_time_s(GB, "h2d") < ends[1] < cost.transfer_time_s(GB, "h2d", other_direction_busy=True)


def test_short_backup_barely_slows_a_long_load():
    env, pcie, cost = link(True)
    ends: dict[str, float] = {}
    env.process(pcie.transfer(GB // 128, "d2h", on_done=lambda: ends.__setitem__("d2h", env.now)))
    env.process(pcie.transfer(GB, "h2d", on_done=lambda: ends.__setitem__("h2d", env.now)))
    env.run()
    fast = cost.transfer_time_s(GB, "h2d")
    assert fast < ends["h2d"] < fast + ends["d2h"]  # at most the overlap, not the whole copy, is slowed


def test_utilisation():
    ends, cost, pcie = run_copies(False, ["h2d", "h2d"])
    assert pcie.utilisation(max(ends)) == pytest.approx({"h2d": 1.0, "d2h": 0.0})


def test_reactive_load_overtakes_queued_background_copies():
    """A load a scheduled request waits on goes next, not behind every queued prefetch."""
    env, pcie, cost = link(False)
    done: dict[str, float] = {}
    for k in "abc":
        pcie.copy(GB, "h2d", lambda k=k: done.__setitem__(k, env.now), "prefetch")

    def urgent():
        yield env.timeout(cost.transfer_time_s(GB, "h2d") / 2)  # while copy "a" runs
        yield from pcie.transfer(GB, "h2d", on_done=lambda: done.__setitem__("urgent", env.now))

    env.process(urgent())
    env.run()
    t = cost.transfer_time_s(GB, "h2d")
    assert done["a"] == pytest.approx(t)
    assert done["urgent"] == pytest.approx(2 * t)  # right after the copy in progress
    assert done["c"] == pytest.approx(4 * t)
