"""Crash safety, signals, concurrent writers and strict input, through the real CLI in subprocesses."""

from __future__ import annotations

import contextlib
import os
import random
import signal
import subprocess
import time

import pytest
from conftest import cli_command

from ffnn.tracking import Tracker

pytestmark = pytest.mark.slow  # subprocesses and real signals: `make test-slow`

MODELS, SEEDS = ["LR", "C", "D"], 3
BUDGET = ["--iters", "600", "--eval-every", "200", "--batch-size", "20"]


def compare_argv(tmp_path, *extra):
    return ["compare", "--dataset", "tiny", "--data-dir", str(tmp_path / "data"),
            "--tracking-uri", f"sqlite:///{tmp_path}/mlruns/mlflow.db", "--experiment", "faults",
            "--models", ",".join(MODELS), "--seeds", str(SEEDS), "--no-report", *BUDGET, *extra]


def all_runs(tmp_path):
    client = Tracker.open(f"sqlite:///{tmp_path}/mlruns/mlflow.db").client  # waits while the store is created
    exp = client.get_experiment_by_name("faults")
    return [] if exp is None else client.search_runs([exp.experiment_id], max_results=1000)


def assert_complete(tmp_path):
    runs = all_runs(tmp_path)
    children = [r for r in runs if r.data.tags.get("ffnn.kind") == "run"]
    finished = [(r.data.params["model"], r.data.params["seed"]) for r in children if r.info.status == "FINISHED"]
    assert sorted(finished) == sorted((m, str(s)) for m in MODELS for s in range(SEEDS))  # each exactly once
    assert all(r.info.status != "RUNNING" for r in runs)
    return children


def wait_for_first_run(tmp_path, proc, timeout=60):
    """Until the store has a child run (startup done), or the process ended."""
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        if (tmp_path / "mlruns" / "mlflow.db").exists():
            try:
                if any(r.data.tags.get("ffnn.kind") == "run" for r in all_runs(tmp_path)):
                    return
            except Exception:  # the store is being created
                pass
        time.sleep(0.2)


def test_kill_9_at_a_random_moment_then_resume_completes(tiny, tmp_path):
    proc = subprocess.Popen(cli_command(tiny, *compare_argv(tmp_path)), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, start_new_session=True)
    wait_for_first_run(tmp_path, proc)
    time.sleep(random.uniform(0, 3))
    os.killpg(proc.pid, signal.SIGKILL)  # the process and its training workers
    proc.wait()
    resumed = subprocess.run(cli_command(tiny, *compare_argv(tmp_path)), capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    children = assert_complete(tmp_path)
    for r in children:
        if r.info.status != "FINISHED":
            assert r.info.status in ("FAILED", "KILLED")


@pytest.mark.parametrize("signum, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_interrupt_marks_the_run_killed_and_exits_128_plus_signal(tiny, tmp_path, signum, code):
    proc = subprocess.Popen(cli_command(tiny, *compare_argv(tmp_path, "--iters", "3000", "--eval-every", "1000")),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    wait_for_first_run(tmp_path, proc)
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == code, err[-2000:]
    assert "run the same command again to resume" in err.strip().splitlines()[-1]
    runs = all_runs(tmp_path)
    assert runs and all(r.info.status != "RUNNING" for r in runs)
    assert "KILLED" in {r.info.status for r in runs if r.data.tags.get("ffnn.kind") == "run"}
    assert [r.info.status for r in runs if r.data.tags.get("ffnn.kind") == "comparison"] == ["KILLED"]


def test_two_concurrent_compares_train_each_run_once(tiny, tmp_path):
    # prepare the data once so that both processes only read it
    from ffnn import data
    data.prepare(tiny, tmp_path / "data")
    procs = [subprocess.Popen(cli_command(tiny, *compare_argv(tmp_path, "--workers", "1")),
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    errs = [p.communicate(timeout=300)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], errs
    assert not any("database is locked" in e for e in errs)
    assert_complete(tmp_path)


def group_members(pgid: int) -> list[int]:
    """Pids of the live (not zombie) processes in process group ``pgid``."""
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[2]) == pgid and fields[0] != "Z":
                pids.append(int(entry))
    return pids


@pytest.mark.parametrize("command", ["compare", "tune"])
def test_kill_9_leaves_no_process_behind(tiny, tmp_path, command):
    from conftest import tune_toml
    if command == "compare":
        argv = compare_argv(tmp_path, "--workers", "2", "--iters", "100000", "--eval-every", "1000")
    else:
        (tmp_path / "tune.toml").write_text(tune_toml("faults", 50).replace("iters = 30", "iters = 100000"))
        argv = ["tune", "--config", str(tmp_path / "tune.toml"), "--data-dir", str(tmp_path / "data"),
                "--tracking-uri", f"sqlite:///{tmp_path}/mlruns/mlflow.db",
                "--storage", f"sqlite:///{tmp_path}/optuna.db", "--workers", "2"]
    proc = subprocess.Popen(cli_command(tiny, *argv), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)  # its own process group: the workers are found by pgid
    try:
        deadline = time.time() + 120
        while len(group_members(proc.pid)) < 3 and time.time() < deadline and proc.poll() is None:
            time.sleep(0.2)  # the parent and its two training processes
        assert len(group_members(proc.pid)) >= 3, "the workers never started"
        time.sleep(1)
        os.kill(proc.pid, signal.SIGKILL)  # the parent alone, as the OOM killer or a user's kill -9 would
        proc.wait()
        time.sleep(5)
        assert group_members(proc.pid) == []
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
