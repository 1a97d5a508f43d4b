"""harness.host_speed: the host reference printed beside benchmark figures (its value is the host's;
what is tested is its contract, not a speed)."""

from __future__ import annotations

import pytest

from harness import host_speed


def test_reference_is_a_positive_rate_and_the_workload_is_fixed():
    assert host_speed.reference_mops_per_s(steps=2_000, repeats=2) > 0
    assert host_speed._workload(5_000) == host_speed._workload(5_000)  # the same work every run
    assert host_speed._workload(5_000) != host_speed._workload(6_000)


@pytest.mark.parametrize(("steps", "repeats"), [(0, 1), (10, 0), (-1, 3)])
def test_bad_arguments_are_a_clear_error(steps, repeats):
    with pytest.raises(ValueError, match="steps and repeats"):
        host_speed.reference_mops_per_s(steps=steps, repeats=repeats)


def test_the_header_line_names_its_unit_and_use(monkeypatch):
    monkeypatch.setattr(host_speed, "reference_mops_per_s", lambda: 1.25)
    line = host_speed.describe_host()
    assert line.startswith("host reference: 1.25 M steps/s") and "compare hosts" in line
