"""``kvflow-report DIR [DIR ...] [-o OUT] [--baseline hicache[,sglang]] [--results-md docs/results.md]``

Reads run or Hydra multirun directories (any depth), writes ``results.csv``, ``speedups.csv``,
PNG plots and ``report.md`` into OUT (default ``DIR/report``). Malformed or partial runs are named
on stderr, one line each, and skipped. Exit 0 on success, 2 when there is nothing to report.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from analysis.report import write_report
from analysis.runs import RunError


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="kvflow-report", description=__doc__.split("\n\n")[1].replace("\n", " "))
    ap.add_argument("dirs", nargs="+", type=Path, metavar="DIR", help="run dir or (multi)run root; several allowed")
    ap.add_argument("-o", "--out", type=Path, default=None, help="output dir (default: first DIR/report)")
    ap.add_argument(
        "--baseline",
        default="hicache",
        help="policy the speedups are over; comma-separated for one table each (default: hicache)",
    )
    ap.add_argument(
        "--results-md",
        type=Path,
        default=None,
        help="also write the tables and plots into this markdown file (between generated markers)",
    )
    return ap


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    words = ["kvflow-report"] + [str(a) for a in (argv if argv is not None else sys.argv[1:])]
    try:
        report = write_report(
            args.dirs,
            args.out,
            baseline=args.baseline,
            results_md=args.results_md,
            invocation=" ".join(shlex.quote(w) for w in words),
        )
    except (RunError, OSError) as exc:
        print(f"kvflow-report: error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2
    print(f"report: {report}")
    print(f"plots and results.csv: {report.parent}")
    if args.results_md is not None:
        print(f"results: {args.results_md}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
