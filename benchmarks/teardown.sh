#!/usr/bin/env bash
# What Python's exit costs a process that imported what ffnn commands import, with and without gc.freeze():
# the seconds between the script's last line and the process's end.  bash benchmarks/teardown.sh [RUNS]
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
for how in "pass" "import gc; gc.freeze()"; do
  for _ in $(seq "${1:-3}"); do
    last=$("$PY" -c "import time, torch, mlflow, mlflow.pytorch, pandas, matplotlib, optuna; $how; print(time.time())")
    end=$(date +%s.%N)
    echo "$how: exit took $("$PY" -c "print(f'{$end - $last:.2f}')") s"
  done
done
