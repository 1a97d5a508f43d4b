#!/usr/bin/env bash
# GPU check of the real backend, sized for ~8 minutes on one H200 (Python 3.12, torch 2.11):
#   0. python -m real.engine_bench: the engine data paths that decide the headline (ENGINES.md
#      section 4: 0.4 gather + pageable copy, 0.5 direct/kernel copies, layer overlap, bidirectional,
#      CUDA-graph decode) -> engine_bench/engine_profile.yaml, read by engine.measured=PATH;
#      parts not started within EB_BUDGET_S (default 120 s) are skipped, the step is killed at +60 s
#   1. kvflow-real calibrate for Llama-3.1-8B shapes -> measured hardware profile
#   2. paper_single-style runs (10 sequential agents, fixed/dynamic/output = 8192/32/32 and
#      4096/32/32) with every policy, a GPU KV cap of 4 agents' prompts (forces eviction)
#   3. kvflow-real validate (real vs simulator with the calibrated profile), kvflow policy at 8192
#   4. if time is left: calibration for Qwen2.5-32B shapes
# Everything lands in one results folder; with the device tool's $OUT set, a tarball of it plus the
# key files are copied to $OUT (the tool returns at most 8 files, 2 folders deep).
#
#   benchmarks/gpu_check.sh              on the GPU machine
#   benchmarks/gpu_check.sh --dry-run    the same steps on CPU with the tiny model (tests run this)
#
# Pure-Python packages missing on the GPU image travel as wheels in .whl/ (git-ignored); fetch them
# here once (device README):
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
#     -d .whl simpy==4.1.2 hydra-core==1.3.8 omegaconf==2.3.1
#   python3 -m pip wheel --no-deps -w .whl antlr4-python3-runtime==4.9.3   # sdist only on PyPI: build the
#                                                                           # pure-Python wheel here
# (pyyaml, numpy, pandas, matplotlib, tqdm, torch are on the image; the project itself runs from the
# tree via PYTHONPATH.) Then: run(command="bash benchmarks/gpu_check.sh", carry=[".whl"], timeout_s=600).
set -uo pipefail
cd "$(dirname "$0")/.."

DRY=0
[ "${1:-}" = "--dry-run" ] && DRY=1
STAMP=$(date +%Y%m%d-%H%M%S)
PY=${PYTHON:-python3}
BUDGET_S=${BUDGET_S:-480}
EB_BUDGET_S=${EB_BUDGET_S:-120}

if compgen -G ".whl/*.whl" > /dev/null; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
export PYTHONUNBUFFERED=1

if [ $DRY = 1 ]; then
  RES=${RESULTS_DIR:-/tmp/kvflow-gpu-check-dry-$STAMP}
  EB_ARGS=(--dry-run)
  MODEL=tiny; MODEL2=""; DEVICE=cpu; FIXED_LIST="64 32"; RUNS=1; AGENTS=8; PAD=64
  CAL_GRID=(--prefill-new 16,64 --prefill-ctx 0,64 --decode-batch 1,2 --decode-ctx 32,128 --copy-tokens 64,1024
            --reps 2 --loop-fixed-tokens 64)
  CAL2_GRID=()
else
  RES=${RESULTS_DIR:-results/h200/$STAMP}
  EB_ARGS=()
  MODEL=llama-3.1-8b; MODEL2=qwen2.5-32b; DEVICE=cuda; FIXED_LIST="8192 4096"; RUNS=2; AGENTS=10; PAD=64
  CAL_GRID=(--reps 3)
  CAL2_GRID=(--prefill-new 512,2048,8192 --prefill-ctx 0,8192 --decode-batch 1,8,16 --decode-ctx 1024,8192 --reps 2
             --loop-fixed-tokens 2048)
fi
mkdir -p "$RES"
LOG="$RES/gpu_check.log"
exec > >(tee -a "$LOG") 2>&1
echo "== kvflow gpu_check ($([ $DRY = 1 ] && echo dry-run || echo gpu)) -> $RES"
"$PY" - <<'EOF'
import platform, torch
print("python", platform.python_version(), "torch", torch.__version__,
      "cuda", torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")
EOF

STATUS=0
step() {  # step NAME CMD... : run, time and record the exit code of one step
  local name=$1; shift
  local t0=$SECONDS
  echo "== [$((SECONDS))s] $name"
  "$@"
  local rc=$?
  echo "== $name: rc=$rc in $((SECONDS - t0))s"
  echo "$name $rc $((SECONDS - t0))" >> "$RES/steps.txt"
  [ $rc -ne 0 ] && STATUS=1
  return 0
}

ENGINE_PROFILE="$RES/engine_bench/engine_profile.yaml"
step engine_bench timeout $((EB_BUDGET_S + 60)) "$PY" -m real.engine_bench --device $DEVICE --out "$RES/engine_bench" \
  --budget-s "$EB_BUDGET_S" "${EB_ARGS[@]}"

PROFILE="$RES/h200_${MODEL//./}_measured.yaml"
step calibrate "$PY" -m real.cli calibrate --device $DEVICE --model $MODEL --base h200 \
  --name "h200_${MODEL//./}_measured" --profile-out "$PROFILE" --out "$RES/calibration" "${CAL_GRID[@]}"
HW="hardware=$PROFILE"
[ -f "$PROFILE" ] || HW="hardware=h200"

for F in $FIXED_LIST; do
  GPU_CAP=$((4 * (F + PAD)))
  CPU_CAP=$((3 * AGENTS * (F + PAD)))
  step "runs_fixed$F" "$PY" -m real.cli run --device $DEVICE --policies sglang,hicache,kvflow,kvflow_evict_only,clairvoyant \
    --out "$RES/runs/fixed$F" "$HW" model=$MODEL workload=sequential workload.params.agents=$AGENTS \
    workload.params.fixed_tokens=$F workload.params.dynamic_tokens=32 workload.params.output_tokens=32 \
    workload.params.warmup=1 workload.params.runs=$RUNS engine.max_running_requests=1 \
    cache.gpu_capacity_tokens=$GPU_CAP cache.cpu_capacity_tokens=$CPU_CAP
done

F=${FIXED_LIST%% *}
step validate "$PY" -m real.cli validate --device $DEVICE --out "$RES/validate" "$HW" model=$MODEL policy=kvflow \
  workload=sequential workload.params.agents=$AGENTS workload.params.fixed_tokens=$F workload.params.dynamic_tokens=32 \
  workload.params.output_tokens=32 workload.params.warmup=1 workload.params.runs=$RUNS engine.max_running_requests=1 \
  cache.gpu_capacity_tokens=$((4 * (F + PAD))) cache.cpu_capacity_tokens=$((3 * AGENTS * (F + PAD)))

if [ -n "$MODEL2" ] && [ $SECONDS -lt $((BUDGET_S - 150)) ]; then
  step calibrate_$MODEL2 "$PY" -m real.cli calibrate --device $DEVICE --model $MODEL2 --base h200 \
    --name "h200_${MODEL2//./}_measured" --profile-out "$RES/h200_${MODEL2//./}_measured.yaml" \
    --out "$RES/calibration_${MODEL2//./}" "${CAL2_GRID[@]}"
else
  [ -n "$MODEL2" ] && echo "== skipping $MODEL2 calibration: ${SECONDS}s used of ${BUDGET_S}s"
fi

step summary "$PY" benchmarks/gpu_summary.py "$RES"
echo "== done in ${SECONDS}s, status $STATUS: $RES"

if [ -n "${OUT:-}" ] && [ -d "${OUT:-}" ]; then
  tar -czf "$OUT/gpu_check_results.tar.gz" -C "$(dirname "$RES")" "$(basename "$RES")"
  for f in "$RES/summary.md" "$ENGINE_PROFILE" "$PROFILE" "$RES/validate/validation.json" "$RES/validate/scatter.png" "$LOG"; do
    [ -f "$f" ] && cp "$f" "$OUT/"
  done
fi
exit $STATUS
