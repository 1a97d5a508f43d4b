#!/usr/bin/env bash
# aiconfigurator stage: build (or reuse) a virtualenv with the project's `.[aic]` extra
# (aiconfigurator-core 0.12.0, ~600 MB installed) and check that the committed reference grid
# (tests/golden/aic_step_times.json, used by the default test run) still matches the package.
# The venv is cached between runs on one machine (AIC_VENV, default /work/aic-venv).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${AIC_VENV:-/work/aic-venv}"
if ! "$VENV/bin/python" -c "import aiconfigurator_core.sdk" >/dev/null 2>&1; then
  echo "aic stage: building $VENV"
  rm -rf "$VENV"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q "aiconfigurator-core==0.12.0"
else
  echo "aic stage: reusing $VENV"
fi
cd "$ROOT"
"$VENV/bin/python" benchmarks/aic_reference.py --check 2> >(grep -v "low-fidelity fallback" >&2)
