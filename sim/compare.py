"""``python -m sim.compare DIR``: KVFlow's speedups from a kvflow-sim run or multirun directory.

Jobs are grouped by their Hydra overrides minus ``policy``; within a group the speedup over a
policy is its mean end-to-end workflow latency divided by KVFlow's. Prints a markdown table (the
richer plots and CSVs belong to analysis/).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path

import yaml

BASELINES = ("hicache", "sglang")


def _setting(job_dir: Path) -> tuple[str, ...]:
    ov = job_dir / ".hydra" / "overrides.yaml"
    if not ov.exists():
        ov = job_dir.parent / ".hydra" / "overrides.yaml"  # compare mode: <run>/<policy>/summary.json
    items = yaml.safe_load(ov.read_text()) if ov.exists() else []
    keep = [o for o in items or [] if not o.startswith(("policy=", "output.", "experiment=", "hydra"))]
    return tuple(sorted(keep))


def collect(root: Path) -> dict[tuple[str, ...], dict[str, float]]:
    """Setting -> policy -> mean workflow latency (s)."""
    groups: dict[tuple[str, ...], dict[str, float]] = defaultdict(dict)
    for path in sorted(root.rglob("summary.json")):
        s = json.loads(path.read_text())
        groups[_setting(path.parent)][s["policy"]] = s["workflow_latency_mean_s"]
    return dict(groups)


def markdown(groups: dict[tuple[str, ...], dict[str, float]]) -> str:
    policies = sorted({p for g in groups.values() for p in g}, key=lambda p: (p != "kvflow", p))
    cols = [f"KVFlow vs {b}" for b in BASELINES] + [f"{p} s" for p in policies]
    lines = ["| setting | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for setting, lat in sorted(groups.items()):
        base = lat.get("kvflow")
        sp = [f"{lat[b] / base:.2f}x" if base and b in lat else "-" for b in BASELINES]
        vals = [f"{lat[p]:.2f}" if p in lat else "-" for p in policies]
        lines.append(f"| {' '.join(setting) or '(default)'} | " + " | ".join(sp + vals) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m sim.compare", description=__doc__.splitlines()[0])
    ap.add_argument("dir", type=Path)
    args = ap.parse_args(argv)
    if not args.dir.is_dir():
        print(f"sim.compare: error: not a directory: {args.dir}", file=sys.stderr)
        return 2
    groups = collect(args.dir)
    if not groups:
        print(f"sim.compare: error: no summary.json under {args.dir}", file=sys.stderr)
        return 2
    print(markdown(groups))
    return 0


if __name__ == "__main__":
    sys.exit(main())
