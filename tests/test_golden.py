"""Golden numbers: the summary figures of small simulations are pinned, so a refactor that changes
a result fails loudly. Regenerate (``python -m tests.golden.regen``) only with a commit message
that says why the numbers moved."""

from __future__ import annotations

import json
import math

import pytest

from sim.runner import simulate
from tests.golden.cases import cases, pinned
from tests.golden.regen import GOLDEN

EXPECTED = json.loads(GOLDEN.read_text())
CASES = cases()


def test_every_golden_case_is_run():
    names = {name for name, _, _ in CASES}
    missing = set(EXPECTED) - names
    shared_missing = all(n.startswith(("chatdev", "mooncake")) for n in missing)
    assert not missing or shared_missing, f"golden cases no longer produced: {sorted(missing)}"
    assert names <= set(EXPECTED), f"cases without golden numbers: {sorted(names - set(EXPECTED))}"


@pytest.mark.parametrize("name,cfg,trace", CASES, ids=[c[0] for c in CASES])
def test_golden_summary(name, cfg, trace):
    got = pinned(simulate(cfg, trace=trace).summary)
    want = EXPECTED[name]
    for key, value in want.items():
        if isinstance(value, float):
            assert math.isclose(got[key], value, rel_tol=1e-9, abs_tol=1e-12), (name, key, got[key], value)
        else:
            assert got[key] == value, (name, key, got[key], value)
