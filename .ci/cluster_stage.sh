#!/usr/bin/env bash
# Cluster launcher stage: build (or reuse) a virtualenv with the project's dependencies and its
# `.[cluster]` extra (hydra-ray-launcher + Ray 2.60, hydra-submitit-launcher + submitit; ~700 MB),
# then run tests/cluster: one small sweep with Hydra's basic launcher, on a local Ray cluster (2 CPUs,
# loopback only), through a Ray client (ray://) to a head this stage's tests start, and with
# Submitit's local executor; every launcher must write the basic launcher's files, resume, and leave
# no half-written file when a job is killed or fails. Called by .ci/run as its own stage.
# The venv is cached between runs on one machine (CLUSTER_VENV, default /work/cluster-venv) and is
# rebuilt only when the requirements (pyproject's dependencies + the cluster extra + pytest) change.
# The project itself is not installed into it: the tests put the checkout on PYTHONPATH.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${CLUSTER_VENV:-/work/cluster-venv}"
PY="$VENV/bin/python"
PYTEST_PIN="pytest==9.2.0"

# The requirements, one a line, read from pyproject.toml (so the extra stays the one source).
requirements() {
  python3 - "$ROOT/pyproject.toml" "$PYTEST_PIN" <<'EOF'
import sys, tomllib
project = tomllib.load(open(sys.argv[1], "rb"))["project"]
print("\n".join([*project["dependencies"], *project["optional-dependencies"]["cluster"], sys.argv[2]]))
EOF
}
REQS="$(requirements)"
HASH="$(printf '%s\n' "$REQS" | sha256sum | cut -c1-16)"
MARKER="$VENV/.kvflow-cluster-$HASH"

venv_ok() {
  [ -f "$MARKER" ] && "$PY" -c "import ray, submitit, pytest, hydra_plugins.hydra_ray_launcher.ray_launcher, hydra_plugins.hydra_submitit_launcher.submitit_launcher" >/dev/null 2>&1
}

t0=$(date +%s)
if venv_ok; then
  echo "cluster stage: reusing $VENV (requirements $HASH)"
else
  echo "cluster stage: building $VENV (requirements $HASH)"
  rm -rf "$VENV"
  python3 -m venv "$VENV"
  mapfile -t reqs <<<"$REQS"
  log="$(mktemp)"
  if ! "$VENV/bin/pip" install -q "${reqs[@]}" >"$log" 2>&1; then
    grep -v "is ignored: it is neither a file nor a directory" "$log" | tail -n 20 >&2
    why="$(grep -E "^ERROR" "$log" | tail -n 1)"
    echo "cluster stage: cannot install the cluster extra here: ${why:-pip failed, see above}" >&2
    rm -f "$log"
    exit 1
  fi
  rm -f "$log"
  if ! venv_ok_now="$("$PY" -c "import ray, submitit, hydra_plugins.hydra_ray_launcher.ray_launcher, hydra_plugins.hydra_submitit_launcher.submitit_launcher; print(ray.__version__)" 2>&1)"; then
    echo "cluster stage: the launchers installed but do not import: $(echo "$venv_ok_now" | tail -n 1)" >&2
    exit 1
  fi
  touch "$MARKER"
  echo "cluster stage: ray $venv_ok_now; $("$PY" -m pip list 2>/dev/null | grep -iE '^(hydra-core|hydra-ray-launcher|hydra-submitit-launcher|submitit) ' | tr -s ' ' | tr '\n' ';')"
fi
t1=$(date +%s)

cd "$ROOT"
# -c /dev/null + rootdir tests/cluster: the default suite's conftest (which ignores this folder)
# is not loaded; tests/cluster/conftest.py is.
set +e
PYTHONPATH="$ROOT" "$PY" -m pytest -c /dev/null --rootdir "$ROOT/tests/cluster" -p no:cacheprovider -q --durations=0 \
  -W ignore::DeprecationWarning "$ROOT/tests/cluster"
rc=$?
set -e
t2=$(date +%s)
echo "cluster stage: venv $((t1 - t0))s, tests $((t2 - t1))s"
exit $rc
