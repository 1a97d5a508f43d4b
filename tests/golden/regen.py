"""``python -m tests.golden.regen``: rewrite ``sim_summaries.json`` from the current simulator.

Only after a deliberate change of results; the commit message must say why the numbers moved."""

from __future__ import annotations

import json
from pathlib import Path

from sim.runner import simulate
from tests.golden.cases import cases, pinned

GOLDEN = Path(__file__).with_name("sim_summaries.json")


def main() -> None:
    data = {name: pinned(simulate(cfg, trace=trace).summary) for name, cfg, trace in cases()}
    GOLDEN.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
    print(f"{GOLDEN}: {len(data)} cases")


if __name__ == "__main__":
    main()
