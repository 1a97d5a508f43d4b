#!/usr/bin/env bash
# Runs every command of the README's "Usage" section as written, top to bottom, in a fresh clone of
# this checkout (issue 16: "every Usage example runs as written on a fresh clone"), and reports each
# one's exit status and wall time. A command passes when it exits 0; the GPU-only lines (they need
# CUDA: `--base h200`, `hardware=h200_measured`) pass on a CPU machine when they exit 2 with a one-line
# error and no traceback; gpu_check.sh is skipped (an H200 script; tests run its --dry-run). `pip install` lines are skipped (the venv is given).
# Usage: bash benchmarks/readme_examples.sh [PYTHON]      (~20 min on 2 cores; exit 0: all passed)
set -uo pipefail
SRC=$(cd "$(dirname "$0")/.." && pwd)
PY=${1:-$SRC/.venv/bin/python}
BIN=$(cd "$(dirname "$PY")" && pwd)  # the venv's bin (not the interpreter a symlink points to)
PY="$BIN/$(basename "$PY")"
WORK=$(mktemp -d)
git clone -q "$SRC" "$WORK/repo" && ln -s "$(realpath "$SRC/../shared")" "$WORK/shared"
cd "$WORK/repo" || exit 1
export PATH="$BIN:$PATH" PYTHONPATH="$WORK/repo"
"$PY" - "$SRC/README.md" > "$WORK/commands.txt" <<'PYEOF'
import sys
text = open(sys.argv[1]).read()
usage = text[text.index("## Usage"):text.index("## Documentation")]
blocks = usage.split("```bash")[1:]
lines, cont = [], ""
for block in blocks:
    for raw in block.split("```")[0].splitlines():
        line = (cont + " " + raw.strip()).strip() if cont else raw.strip()
        if line.endswith("\\"):
            cont = line[:-1]
            continue
        cont = ""
        if line and not line.startswith("pip install"):
            lines.append(line)
print("\n".join(lines))
PYEOF
status=0
while IFS= read -r cmd; do
    gpu_only=0
    case "$cmd" in *gpu_check.sh*) echo "skip        $cmd  (needs an H200; its --dry-run is a test)"; continue ;; esac
    case "$cmd" in *"--base h200"*|*"hardware=h200_measured"*) gpu_only=1 ;; esac
    start=$(date +%s)
    bash -c "$cmd" > "$WORK/out.txt" 2> "$WORK/err.txt"
    rc=$?
    took=$(( $(date +%s) - start ))
    verdict=FAIL
    if [ $rc -eq 0 ]; then verdict=ok
    elif [ $gpu_only -eq 1 ] && [ $rc -eq 2 ] && ! grep -q Traceback "$WORK/err.txt" && [ "$(grep -c . "$WORK/err.txt")" -le 2 ]; then
        verdict="ok (no CUDA: $(tail -1 "$WORK/err.txt" | cut -c1-100))"
    fi
    printf '%-4s %4ss rc=%s  %s\n' "${verdict%% *}" "$took" "$rc" "${cmd:0:110}"
    if [ "$verdict" = FAIL ]; then status=1; tail -3 "$WORK/err.txt" | sed 's/^/      /'; fi
done < "$WORK/commands.txt"
rm -rf "$WORK"
exit $status
