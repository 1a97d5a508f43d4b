#!/usr/bin/env bash
# The compiled core (python -m harness.compiled_core): compile kvflow/ and the simulator's per-event
# modules (kvflow.source_digest.COMPILED_EXTRAS) with mypyc in the stage-1
# venv (mypy comes with the lint stage's .[lint]), check that importing kvflow runs the build, run the
# whole test suite against it (the golden simulations must come out the same), then remove the build
# so the tree is pure Python again for the stages after this one.
set -euo pipefail
cd "$(dirname "$0")/.."
trap '.venv/bin/python -m harness.compiled_core clean' EXIT
.venv/bin/python -m harness.compiled_core build
.venv/bin/python -c "import sys, kvflow; sys.exit(0 if kvflow.COMPILED else 'kvflow.COMPILED is False after the build')"
.venv/bin/python -m pytest
