"""The chaos loop: compare, compare --until-decided and tune are killed (kill -9 or SIGTERM) at 20 random
moments, and each is run again. After every rerun nothing is lost, nothing is duplicated, nothing is
left RUNNING, and every FINISHED run's model loads (no truncated artifact)."""

from __future__ import annotations

import contextlib
import os
import random
import signal
import subprocess
import tempfile
import time
from collections import Counter

import optuna
import pytest
import torch
from conftest import cli_command, tune_toml

from ffnn.tracking import Tracker
from ffnn.tune.storage import trial_number

pytestmark = pytest.mark.slow  # 40 CLI processes: `make test-slow`

SEED = int(os.environ.get("FFNN_CHAOS_SEED", "20261201"))  # the moments and signals; printed on failure
KILLS = {"tune": 6, "compare": 7, "until-decided": 7}  # 20 moments in all
BUDGET = ["--iters", "300", "--eval-every", "100", "--batch-size", "20", "--workers", "2"]


def argv_for(kind: str, tmp_path, uri: str, experiment: str) -> list[str]:
    if kind == "tune":
        toml = tmp_path / f"{experiment}.toml"
        toml.write_text(tune_toml(experiment, 6).replace("iters = 30", "iters = 300"))
        return ["tune", "--config", str(toml), "--data-dir", str(tmp_path / "data"), "--tracking-uri", uri,
                "--storage", f"sqlite:///{tmp_path}/{experiment}.db", "--workers", "2"]
    extra = ["--models", "LR,C,D", "--seeds", "4"] if kind == "compare" else \
        ["--models", "LR,C", "--until-decided", "--round", "3", "--max-seeds", "6", "--lr", "0.01"]
    return ["compare", "--dataset", "tiny", "--data-dir", str(tmp_path / "data"), "--tracking-uri", uri,
            "--experiment", experiment, "--no-report", *BUDGET, *extra]


def check_store(uri: str, experiment: str, kind: str, tmp_path) -> None:
    import mlflow.pytorch
    client = Tracker.open(uri).client
    exp = client.get_experiment_by_name(experiment)
    assert exp is not None
    runs = client.search_runs([exp.experiment_id], max_results=5000)
    running = [r.info.run_name for r in runs if r.info.status == "RUNNING"]
    assert running == [], f"left RUNNING: {running}"
    if kind == "tune":
        study = optuna.load_study(study_name="tune-C", storage=f"sqlite:///{tmp_path}/{experiment}.db")
        trials = study.get_trials(deepcopy=False)
        assert not [t.number for t in trials if t.state == optuna.trial.TrialState.RUNNING]
        numbers = Counter(trial_number(r) for r in runs if r.data.tags.get("ffnn.kind") == "trial")
        assert all(n == 1 for n in numbers.values()), f"a trial logged twice: {numbers}"
        assert set(numbers) <= {t.number for t in trials}  # no MLflow run without its trial
        done = [t for t in trials if t.state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)]
        assert len(done) >= 6  # the rerun's trials, at least
        return
    children = [r for r in runs if r.data.tags.get("ffnn.kind") == "run"]
    done = Counter(r.data.tags["ffnn.run_key"] for r in children if r.info.status == "FINISHED")
    assert done and all(n == 1 for n in done.values()), f"duplicated: {[k for k, n in done.items() if n > 1]}"
    if kind == "compare":  # every (model, seed) once: nothing lost
        seeds = sorted((r.data.params["model"], r.data.params["seed"]) for r in children if r.info.status == "FINISHED")
        assert seeds == sorted((m, str(s)) for m in ("LR", "C", "D") for s in range(4))
    mlflow.set_tracking_uri(uri)  # runs:/ URIs resolve through it
    with_model = {m.source_run_id for m in client.search_logged_models(experiment_ids=[exp.experiment_id])
                  if m.status == "READY"}  # one a kill -9 cut short is PENDING, and nobody's model
    for r in children:
        if r.info.status == "FINISHED":  # the network is whole: its weights, and its LoggedModel where it has one
            with tempfile.TemporaryDirectory() as tmp:
                torch.load(client.download_artifacts(r.info.run_id, "weights.pt", tmp))
            if r.info.run_id in with_model:
                mlflow.pytorch.load_model(f"runs:/{r.info.run_id}/model")


def wait_started(proc: subprocess.Popen, log, timeout: float = 60) -> None:
    """Until the command has said its first line (imports done), or ended."""
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None and os.path.getsize(log.name) == 0:
        time.sleep(0.05)


def test_chaos_loop_kill_at_random_moments_then_rerun(tiny, tmp_path):
    rng = random.Random(SEED)
    uri = f"sqlite:///{tmp_path}/mlruns/mlflow.db"
    cycle = 0
    for kind, kills in KILLS.items():
        for i in range(kills):
            cycle += 1
            experiment = f"chaos-{kind}-{i}"
            argv = cli_command(tiny, *argv_for(kind, tmp_path, uri, experiment))
            how = rng.choice([signal.SIGKILL, signal.SIGTERM])
            moment = rng.uniform(0.0, 6.0)
            where = f"cycle {cycle} ({kind}, {how.name} {moment:.2f}s after start; FFNN_CHAOS_SEED={SEED})"
            with open(tmp_path / f"{experiment}.log", "w+") as log:
                proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
                try:
                    wait_started(proc, log)
                    time.sleep(moment)
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(proc.pid, how)
                    proc.wait(timeout=120)
                finally:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(proc.pid, signal.SIGKILL)  # any worker the kill -9 left behind
                assert proc.returncode in (0, 1, 143, -9), f"{where}: exit {proc.returncode}"
            again = subprocess.run(argv, capture_output=True, text=True, timeout=300)
            assert again.returncode == 0, f"{where}: the rerun failed\n{again.stderr[-2000:]}"
            check_store(uri, experiment, kind, tmp_path)
