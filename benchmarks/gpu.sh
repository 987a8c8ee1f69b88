#!/usr/bin/env bash
# GPU figures (issue 9), run on the device machine from the project root with the wheels (.whl) and the
# MNIST files (.devdata) carried along, as ../shared/device/README.md says. Logs go to $OUT (or /tmp).
set -u
out=${OUT:-/tmp}
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 MLFLOW_DISABLE_TELEMETRY=true DO_NOT_TRACK=true
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader; nproc
python3 -m ffnn data --data-source .devdata
timed() {  # label, then the command; prints the wall time and keeps the output
    local label=$1; shift
    local start=$(date +%s.%N)
    "$@" > "$out/$label.log" 2>&1
    local rc=$?
    echo "$label: exit $rc, $(python3 -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.1f}')" "$start" "$(date +%s.%N)") s wall"
    grep -A8 '^model ' "$out/$label.log" | head -9
}
db=sqlite:////tmp/gpu/mlflow.db
mkdir -p /tmp/gpu
timed compare-cuda-fresh-store python3 -m ffnn compare --device cuda --tracking-uri $db --experiment cuda1 --no-report
timed compare-cuda python3 -m ffnn compare --device cuda --tracking-uri $db --experiment cuda2 --no-report
timed compare-cpu python3 -m ffnn compare --device cpu --tracking-uri $db --experiment cpu --no-report
timed c-1000-seeds python3 -m ffnn compare --device cuda --models C --seeds 1000 --tracking-uri $db --experiment c1000 --no-report
timed e-lr-100 python3 -m ffnn compare --device cuda --models E --seeds 3 --lr 100 --tracking-uri $db --experiment diverge --no-report
timeout 240 python3 benchmarks/gpu_check.py 2>&1 | tee "$out/gpu_check.log"
