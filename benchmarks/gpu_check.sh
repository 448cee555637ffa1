#!/usr/bin/env bash
# The GPU checks in one command, in the order that matters when GPU time is short:
#   PYTHON=python3 bash benchmarks/gpu_check.sh [OUT_DIR]
# Runs tests/gpu, then the benchmarks with --device cuda (each under its own time limit),
# including inference_latency.py a second time with PyTorch's cuBLASLt addmm path switched
# off (DISABLE_ADDMM_CUDA_LT=1), which tells whether the folded projections' added bias is
# what made the fold slower than the hooks at batch 1 on an H100 (docs/benchmarks.md).
# Each step's output goes to OUT_DIR/<step>.log (default: gpu-check-<date>); a step that
# fails or runs out of time is reported and the next one still runs.
set -u
PYTHON=${PYTHON:-.venv/bin/python}
OUT=${1:-gpu-check-$(date +%Y%m%d-%H%M%S)}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
START=$SECONDS

step() {  # step NAME LIMIT_S COMMAND...
    local name=$1 limit=$2
    shift 2
    echo "=== $name (limit ${limit}s) at $((SECONDS - START)) s"
    timeout "$limit" "$@" >"$OUT/$name.log" 2>&1
    local rc=$?
    [ $rc -eq 0 ] || echo "    $name: exit $rc$([ $rc -eq 124 ] && echo ' (time limit)')"
    grep -E "passed|failed|MISSES|meets|overhead/forward|^P=|fold, |hooks, |x zero-shot|folded|inject_context" \
        "$OUT/$name.log" | tail -12
}

if ! "$PYTHON" -c "import sys, torch; sys.exit(not torch.cuda.is_available())"; then
    echo "no CUDA device here: run this on a GPU machine" >&2
    exit 2
fi
step gpu_tests 180 "$PYTHON" -m pytest -q -p no:cacheprovider tests/gpu \
    tests/unit/participant/test_model_device.py
step inference_latency 240 "$PYTHON" benchmarks/inference_latency.py --device cuda --repeats 9
step inference_latency_no_lt 240 env DISABLE_ADDMM_CUDA_LT=1 \
    "$PYTHON" benchmarks/inference_latency.py --device cuda --repeats 9 --shots 1
step hook_overhead 120 "$PYTHON" benchmarks/hook_overhead.py --device cuda --blocks 20
step privacy_overhead 120 "$PYTHON" benchmarks/privacy_overhead.py --device cuda
# The same with 8 CKKS worker processes, OpenMP threads told not to spin between torch ops
# (on a 2-core CPU spinning threads took the workers' cores; a GPU host has 16).
step privacy_overhead_w8 120 env OMP_WAIT_POLICY=PASSIVE \
    "$PYTHON" benchmarks/privacy_overhead.py --device cuda --ckks-workers 8
step fold_accuracy 90 "$PYTHON" benchmarks/fold_accuracy.py --device cuda
echo "=== done in $((SECONDS - START)) s; logs in $OUT"
