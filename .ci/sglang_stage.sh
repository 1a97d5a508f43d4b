#!/usr/bin/env bash
# SGLang adapter stage: build (or reuse) a CPU-only SGLang 0.5.23 virtualenv, install the project
# into it, and run tests/sglang with pytest. Called by .ci/run as a separate stage.
# The venv is cached between runs on one machine (SGLANG_VENV, default /work/sglang-venv) and is
# rebuilt only when its marker is missing or the import check fails (~3 min, ~6 GB); the project's
# own dependencies are installed into it whenever pyproject's list changes.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${SGLANG_VENV:-/work/sglang-venv}"
MARKER="$VENV/.kvflow-sglang-0.5.23-v1"
PY="$VENV/bin/python"

deps=(orjson psutil pybase64 requests packaging pillow starlette msgspec pydantic pyzmq tqdm IPython
      aiohttp "transformers==5.19.0" "tokenizers==0.23.2" dill "apache-tvm-ffi==0.1.11"
      "sentencepiece==0.2.1" "compressed-tensors==0.18.0" gguf "openai==2.8.0" partial_json_parser
      datasets setproctitle einops uvicorn fastapi jsonschema "xgrammar==0.2.7"
      pytest numpy pyyaml)

venv_ok() {
  [ -f "$MARKER" ] && "$PY" -c "import sglang.srt.mem_cache.unified_radix_cache, sglang.srt.managers.scheduler, sglang.srt.entrypoints.openai.serving_chat" >/dev/null 2>&1
}

t0=$(date +%s)
if venv_ok; then
  echo "sglang stage: reusing $VENV"
else
  echo "sglang stage: building $VENV"
  rm -rf "$VENV"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q "torch==2.14.1" "torchvision==0.29.1"
  "$VENV/bin/pip" install -q --no-deps "sglang==0.5.23"
  "$VENV/bin/pip" install -q "${deps[@]}"
  venv_ok_now=1
  "$PY" -c "import sglang.srt.mem_cache.unified_radix_cache, sglang.srt.managers.scheduler" || venv_ok_now=0
  [ "$venv_ok_now" = 1 ] || { echo "sglang stage: venv import check failed" >&2; exit 1; }
  touch "$MARKER"
fi
t1=$(date +%s)

# The project's own dependencies (pyproject's list; pure Python or already there), installed again
# only when that list changes (a marker keyed by its hash): a cached venv gets a new one too.
mapfile -t project_deps < <(python3 - "$ROOT/pyproject.toml" <<'EOF'
import sys, tomllib
print("\n".join(tomllib.load(open(sys.argv[1], "rb"))["project"]["dependencies"]))
EOF
)
DEPS_MARKER="$VENV/.kvflow-project-deps-$(printf '%s\n' "${project_deps[@]}" | sha256sum | cut -c1-16)"
if [ ! -f "$DEPS_MARKER" ]; then
  "$VENV/bin/pip" install -q "${project_deps[@]}"
  rm -f "$VENV"/.kvflow-project-deps-*
  touch "$DEPS_MARKER"
fi
# The project itself (editable, no deps: installed above); registers the entry point.
"$VENV/bin/pip" install -q --no-deps -e "$ROOT"
t2=$(date +%s)

cd "$ROOT"
# -c /dev/null + rootdir tests/sglang: the default suite's conftest (which ignores this folder)
# is not loaded; tests/sglang/conftest.py is.
set +e
"$PY" -m pytest -c /dev/null --rootdir "$ROOT/tests/sglang" -p no:cacheprovider -W ignore::DeprecationWarning \
  -W ignore::UserWarning "$ROOT/tests/sglang"
rc=$?
set -e
t3=$(date +%s)
echo "sglang stage: venv $((t1 - t0))s, install $((t2 - t1))s, tests $((t3 - t2))s"
exit $rc
