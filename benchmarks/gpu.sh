#!/usr/bin/env bash
# GPU figures (issue 9), run on the device machine from the project root with the wheels (.whl) and the
# MNIST files (.devdata) carried along, as ../shared/device/README.md says. Logs go to $OUT (or /tmp).
# PROFILE=1 adds a cProfile of one default compare (to $OUT/compare-cuda.prof); CHECK=0 skips gpu_check.py.
set -u
out=${OUT:-/tmp}
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 MLFLOW_DISABLE_TELEMETRY=true DO_NOT_TRACK=true
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader; nproc; python3 -c "import torch; print('torch', torch.__version__)"
python3 -m ffnn data --data-source .devdata
db=/tmp/gpu/mlflow.db
mkdir -p /tmp/gpu
timed() {  # label, limit in seconds, then the command; prints the wall time, the parent run's own figures
    local label=$1 limit=$2; shift 2
    local start=$(date +%s.%N)
    timeout "$limit" "$@" > "$out/$label.log" 2>&1
    local rc=$?
    echo "$label: exit $rc, $(python3 -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.1f}')" "$start" "$(date +%s.%N)") s wall"
    grep -A8 '^model ' "$out/$label.log" | head -9
    python3 - "$label" <<'PY'
import sqlite3, sys
c = sqlite3.connect("/tmp/gpu/mlflow.db")
rows = c.execute("""select m.key, m.value from latest_metrics m join runs r on r.run_uuid = m.run_uuid
    join experiments e on e.experiment_id = r.experiment_id join tags t on t.run_uuid = r.run_uuid
    where e.name = ? and t.key = 'ffnn.kind' and t.value = 'comparison'
    and m.key in ('wall_seconds', 'tracking_seconds', 'runs_trained')""", (sys.argv[1],)).fetchall()
print("  parent run:", ", ".join(f"{k} {v:.1f}" for k, v in sorted(rows)))
PY
}
uri=sqlite:///$db
timed cuda-fresh-store 150 python3 -m ffnn compare --device cuda --tracking-uri $uri --experiment cuda-fresh-store --no-report
timed cuda 150 python3 -m ffnn compare --device cuda --tracking-uri $uri --experiment cuda --no-report
timed cpu 200 python3 -m ffnn compare --device cpu --tracking-uri $uri --experiment cpu --no-report
timed capacity 300 python3 -m ffnn compare --device cuda --config experiments/capacity.toml --tracking-uri $uri \
    --experiment capacity
if [ "${PROFILE:-0}" = 1 ]; then
    python3 -X importtime -m cProfile -o "$out/compare-cuda.prof" -m ffnn compare --device cuda --tracking-uri $uri \
        --experiment cuda-profiled --no-report > "$out/cuda-profiled.log" 2> "$out/importtime.log"
    python3 -c "import pstats, sys; pstats.Stats(sys.argv[1]).sort_stats('cumulative').print_stats(40)" \
        "$out/compare-cuda.prof" | grep -v '^$' | cut -c1-150 | tail -42
fi
timed c-1000 240 python3 -m ffnn compare --device cuda --models C --seeds 1000 --tracking-uri $uri --experiment c-1000 --no-report
timed e-lr-100 60 python3 -m ffnn compare --device cuda --models E --seeds 3 --lr 100 --tracking-uri $uri --experiment e-lr-100 --no-report
grep -h "E seed" "$out/e-lr-100.log" | head -3
[ "${CHECK:-1}" = 0 ] || timeout 200 python3 benchmarks/gpu_check.py 2>&1 | tee "$out/gpu_check.log"
# the default compare on a local Ray cluster (make ray's) beside the local engine, where Ray is installed
if python3 -c "import ray" 2>/dev/null; then
    timeout 400 python3 benchmarks/bench.py --ray-only --device cuda 2>&1 | tee "$out/ray.log"
else
    echo "ray: not installed (carry its wheel in .whl/, or pip install 'ffnn[ray]'): skipped"
fi
