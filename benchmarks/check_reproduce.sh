#!/usr/bin/env bash
# Regenerates the committed results into a temp dir and diffs them against the repository:
# python -m sim.beyond (docs/results/beyond.md, byte for byte) and the docs/results.md sweeps
# (speedups.csv and the per-run summary figures of results.csv, wall-clock columns dropped).
# Usage: bash benchmarks/check_reproduce.sh [PYTHON]   (exit 0: everything reproduced)
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${1:-.venv/bin/python}
BIN=$(dirname "$PY")
TMP=$(mktemp -d)
status=0
"$PY" -m sim.beyond --json "$TMP/beyond.json" > "$TMP/beyond.md" 2> /dev/null || status=1
if cmp -s "$TMP/beyond.md" docs/results/beyond.md; then echo "beyond.md: identical"; else
    echo "beyond.md: DIFFERS"; diff docs/results/beyond.md "$TMP/beyond.md" | head -20; status=1; fi
"$BIN/kvflow-sim" -m experiment=paper_single hydra.sweep.dir="$TMP/paper_single" output.table=false > /dev/null 2>&1 || status=1
"$BIN/kvflow-sim" -m experiment=paper_concurrent hydra.sweep.dir="$TMP/paper_concurrent" output.table=false > /dev/null 2>&1 || status=1
"$BIN/kvflow-report" "$TMP/paper_single" "$TMP/paper_concurrent" -o "$TMP/report" --baseline hicache,sglang > /dev/null || status=1
if cmp -s "$TMP/report/speedups.csv" docs/results/speedups.csv; then echo "speedups.csv: identical"; else
    echo "speedups.csv: DIFFERS"; diff docs/results/speedups.csv "$TMP/report/speedups.csv" | head -20; status=1; fi
"$PY" - "$TMP/report/results.csv" docs/results/results.csv <<'PYEOF' || status=1
import sys
import pandas as pd
new, old = (pd.read_csv(p) for p in sys.argv[1:3])
drop = [c for c in old.columns if c in ("run_dir", "wall_s", "command") or "wall" in c]
key = ["experiment", "policy", "setup", "workload.params.fixed_tokens", "workload.params.output_tokens",
       "workload.params.workflows"]
cols = [c for c in old.columns if c not in drop and c in new.columns]
a = old[cols].sort_values(key).reset_index(drop=True)
b = new[cols].sort_values(key).reset_index(drop=True)
missing = sorted(set(old.columns) - set(new.columns) - set(drop))
same = a.equals(b)
print(f"results.csv: {'identical' if same else 'DIFFERS'} ({len(cols)} columns compared"
      + (f"; missing now: {missing}" if missing else "") + ")")
if not same:
    for c in cols:
        if not a[c].equals(b[c]):
            print("  column differs:", c)
sys.exit(0 if same and not missing else 1)
PYEOF
rm -rf "$TMP"
exit $status
