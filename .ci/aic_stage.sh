#!/usr/bin/env bash
# aiconfigurator stage: build (or reuse) a virtualenv with the project's `.[aic]` extra
# (aiconfigurator-core 0.12.0, ~600 MB installed) and the project's test deps (no torch: the
# simulator does not need it), then
#  1. check that the committed reference grid (tests/golden/aic_step_times.json, used by the
#     default test run) and the fitted profiles (conf/hardware/*_sglang.yaml) still match the package;
#  2. run the tests that need the package: cost_model=aiconfigurator against the fitted profiles on
#     paper_single and a coding-agent trace, within the fit error (tests/test_cost_model_aic.py);
#  3. print the cost per simulated request of cost_model=aiconfigurator next to the built-in model.
# The venv is cached between runs on one machine (AIC_VENV, default /work/aic-venv).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${AIC_VENV:-/work/aic-venv}"
if ! "$VENV/bin/python" -c "import aiconfigurator_core.sdk" >/dev/null 2>&1; then
  echo "aic stage: building $VENV"
  rm -rf "$VENV"
  python3 -m venv "$VENV"
else
  echo "aic stage: reusing $VENV"
fi
"$VENV/bin/pip" install -q -e "$ROOT[aic,test]"
cd "$ROOT"
quiet() { "$@" 2> >(grep -v "low-fidelity fallback\|below all entries" >&2); }
quiet "$VENV/bin/python" benchmarks/aic_reference.py --check
quiet "$VENV/bin/python" benchmarks/aic_fit.py --check
quiet "$VENV/bin/python" -m pytest -q -p no:cacheprovider tests/test_cost_model_aic.py tests/test_cost_model_reference.py
quiet "$VENV/bin/python" benchmarks/aic_speed.py
