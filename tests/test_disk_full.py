"""A disk that fills up under compare and report, for real: a small tmpfs holds the store or the report.

Needs root (to mount a tmpfs), as in CI; skipped with the reason elsewhere.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import cli_command

from ffnn.tracking import Tracker

pytestmark = pytest.mark.slow  # subprocesses on a real file system that fills up: `make test-slow`

MODELS, SEEDS = ("C", "D"), 3


class Disk:
    """A tmpfs mounted at ``path``, resized by ``resize``."""

    def __init__(self, path: Path, size: int):
        self.path = path
        path.mkdir()
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], check=True,
                       capture_output=True)

    def used(self) -> int:
        return shutil.disk_usage(self.path).used

    def resize(self, size: int) -> None:
        subprocess.run(["mount", "-o", f"remount,size={size}", str(self.path)], check=True, capture_output=True)

    def leave_free(self, free: int) -> None:
        """Shrink the file system to what it holds now plus ``free`` bytes."""
        self.resize(self.used() + free)


@pytest.fixture
def disk(tmp_path):
    if os.geteuid() != 0 or not shutil.which("mount"):
        pytest.skip("needs root and mount(8) for a tmpfs that can fill up (CI runs as root)")
    try:
        d = Disk(tmp_path / "disk", 64 << 20)
    except subprocess.CalledProcessError as e:
        pytest.skip(f"cannot mount a tmpfs here: {e.stderr.decode().strip()}")
    yield d
    subprocess.run(["umount", "-l", str(d.path)], check=False)


def run_cli(tiny, *argv: str) -> subprocess.CompletedProcess:
    return subprocess.run(cli_command(tiny, *argv), capture_output=True, text=True, timeout=300)


def compare_argv(tmp_path, store: Path, *extra: str) -> list[str]:
    return ["compare", "--dataset", "tiny", "--data-dir", str(tmp_path / "data"),
            "--tracking-uri", f"sqlite:///{store}", "--experiment", "full", "--models", ",".join(MODELS),
            "--seeds", str(SEEDS), "--iters", "300", "--eval-every", "100", "--batch-size", "20",
            "--log-models", "all", *extra]  # every run a LoggedModel: the writes a full disk can cut halfway


def one_error_line(proc: subprocess.CompletedProcess, command: str) -> str:
    """The one line that says what went wrong (progress lines may come before it; no traceback)."""
    lines = proc.stderr.strip().splitlines()
    errors = [line for line in lines if "error" in line.lower() or "Traceback" in line]
    assert errors == lines[-1:], proc.stderr
    assert errors[0].startswith(f"ffnn {command}: error: no space left on "), proc.stderr
    return errors[0]


def test_compare_on_a_disk_that_fills_up_fails_clean_and_the_rerun_completes(tiny, tmp_path, disk):
    store = disk.path / "mlflow.db"
    # the store is made with room to spare (its creation is the exit-2 path); then a model and a half fit
    assert run_cli(tiny, *compare_argv(tmp_path, store, "--models", "LR", "--seeds", "1", "--no-report")
                   ).returncode == 0
    disk.leave_free(1100 << 10)
    proc = run_cli(tiny, *compare_argv(tmp_path, store, "--no-report"))
    assert proc.returncode == 1, proc.stderr
    err = one_error_line(proc, "compare")
    assert str(disk.path) in err and "free space and run the same command again" in err

    client = Tracker.open(f"sqlite:///{store}").client
    exp = client.get_experiment_by_name("full").experiment_id
    runs = client.search_runs([exp], max_results=1000)
    assert not [r.info.run_name for r in runs if r.info.status == "RUNNING"]
    failed = [r for r in runs if r.info.status == "FAILED"]
    assert failed and all("no space left on" in r.data.tags["ffnn.failure"] for r in failed)
    parent = [r for r in failed if r.data.tags.get("ffnn.kind") == "comparison"]
    assert len(parent) == 1
    finished = [r for r in runs if r.info.status == "FINISHED" and r.data.params.get("model") in MODELS]
    assert len(finished) < len(MODELS) * SEEDS

    import mlflow.pytorch
    import torch
    mlflow.set_tracking_uri(f"sqlite:///{store}")  # runs:/ URIs resolve through it
    for r in finished:  # every FINISHED run's model is whole
        model = mlflow.pytorch.load_model(f"runs:/{r.info.run_id}/model")
        assert model(torch.zeros(1, 784)).shape == (1, 10)
    finished_ids = {r.info.run_id for r in runs if r.info.status == "FINISHED"}  # the earlier command's too
    kept = {m.model_id for m in client.search_logged_models(experiment_ids=[exp]) if m.source_run_id in finished_ids}
    partial = [p for p in disk.path.rglob("model.pth") if not any(m in str(p) for m in kept)]
    assert partial == []  # the failed runs' model files are gone, not truncated

    disk.resize(64 << 20)  # space freed: the same command trains exactly what is missing
    again = run_cli(tiny, *compare_argv(tmp_path, store, "--no-report"))
    assert again.returncode == 0, again.stderr
    total = len(MODELS) * SEEDS
    said = f"{len(finished)} of {total} runs already finished; training {total - len(finished)}"
    assert said in again.stdout + again.stderr
    runs = client.search_runs([exp], "attributes.status = 'FINISHED' and tags.`ffnn.kind` = 'run'", max_results=1000)
    keys = [(r.data.params["model"], r.data.params["seed"]) for r in runs if r.data.params["model"] in MODELS]
    assert sorted(keys) == sorted((m, str(s)) for m in MODELS for s in range(SEEDS))


def test_report_on_a_full_disk_says_which_file_and_leaves_the_previous_report(tiny, tmp_path, disk):
    store = tmp_path / "mlruns" / "mlflow.db"
    assert run_cli(tiny, *compare_argv(tmp_path, store, "--seeds", "3", "--no-report")).returncode == 0
    out = disk.path / "report"
    report = ["report", "--experiment", "full", "--tracking-uri", f"sqlite:///{store}", "--out", str(out)]
    assert run_cli(tiny, *report).returncode == 0
    before = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in out.iterdir()}
    assert "summary.html" in before and "comparisons.csv" in before

    disk.leave_free(16 << 10)
    proc = run_cli(tiny, *report, "--margin", "0.5")  # a different report that does not fit
    assert proc.returncode == 2
    err = one_error_line(proc, "report")
    assert f"while writing {out}/" in err and "is left as it was" in err
    assert {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in out.iterdir()} == before
    assert [p.name for p in disk.path.iterdir()] == ["report"]  # no temporary folder left behind


def test_tune_on_a_disk_that_fills_up_ends_every_trial_and_the_study_run_with_the_cause(tiny, tmp_path, disk):
    from conftest import tune_toml
    (tmp_path / "tune.toml").write_text(tune_toml("full-tune", 12).replace("iters = 30", "iters = 300"))
    store, storage = disk.path / "mlflow.db", f"sqlite:///{disk.path}/optuna.db"
    argv = ["tune", "--config", str(tmp_path / "tune.toml"), "--data-dir", str(tmp_path / "data"),
            "--tracking-uri", f"sqlite:///{store}", "--storage", storage, "--workers", "2"]
    assert run_cli(tiny, *argv, "--n-trials", "2").returncode == 0  # both stores made with room to spare
    disk.leave_free(300 << 10)
    proc = run_cli(tiny, *argv)
    assert proc.returncode == 1, proc.stderr
    err = one_error_line(proc, "tune")
    assert str(disk.path) in err and "free space and run the same command again" in err

    import optuna
    client = Tracker.open(f"sqlite:///{store}").client
    runs = client.search_runs([client.get_experiment_by_name("full-tune").experiment_id], max_results=1000)
    assert not [r.info.run_name for r in runs if r.info.status == "RUNNING"], proc.stderr
    parent = [r for r in runs if r.data.tags.get("ffnn.kind") == "study"]
    assert [p.info.status for p in parent] == ["FAILED"] and "no space left on" in parent[0].data.tags["ffnn.failure"]
    trials = optuna.load_study(study_name="tune-C", storage=storage).get_trials(deepcopy=False)
    assert not [t.number for t in trials if t.state == optuna.trial.TrialState.RUNNING]
    assert not [p for p in disk.path.rglob("*") if p.is_file() and p.stat().st_size == 0 and "artifacts" in p.parts]
