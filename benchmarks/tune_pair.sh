#!/usr/bin/env bash
# Trials per minute of `ffnn tune --model C --n-trials 12 --pruner none` against the single-run autograd
# trials of f6b9585 on the same 12 configurations (enqueued in its fresh study), run alternately, each in a
# fresh store: the README's tune *Speed* table. Usage: bash benchmarks/tune_pair.sh [ROUNDS]
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
py=$root/.venv/bin/python
rounds=${1:-2}
tmp=$(mktemp -d)
trap 'git -C "$root" worktree remove --force "$tmp/before" >/dev/null 2>&1 || true; rm -rf "$tmp"' EXIT
git -C "$root" worktree add --detach "$tmp/before" f6b9585 >/dev/null 2>&1
args=(tune --model C --n-trials 12 --pruner none --data-dir "$root/data")

now() {
  rm -rf "$tmp/now" && mkdir "$tmp/now" && cd "$tmp/now"
  "$py" -m ffnn "${args[@]}" --config "$root/experiments/tune.toml" 2>&1 | grep "this invocation"
}

before() {
  rm -rf "$tmp/old" && mkdir -p "$tmp/old/mlruns" && cd "$tmp/old"
  "$py" - "$tmp/now/reports/tune/tune-C/trials.csv" <<'PY'
import csv, sys
import optuna
optuna.logging.set_verbosity(optuna.logging.WARNING)
study = optuna.create_study(study_name="tune-C", storage="sqlite:///mlruns/optuna.db", direction="maximize")
for row in csv.DictReader(open(sys.argv[1])):
    study.enqueue_trial({"n_units_l0": int(row["params_n_units_l0"]), "lr": float(row["params_lr"])})
PY
  PYTHONPATH="$tmp/before" "$py" -m ffnn "${args[@]}" --config "$tmp/before/experiments/tune.toml" 2>&1 \
    | grep "this invocation"
}

now >/dev/null  # the 12 configurations, from a fresh study with sampler seed 0
for _ in $(seq "$rounds"); do
  echo "before (f6b9585): $(before)"
  echo "now:              $(now)"
done
uptime
