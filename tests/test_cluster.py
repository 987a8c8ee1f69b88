"""Several machines on one PostgreSQL and one MLflow tracking server (`make test-cluster`).

Processes stand in for machines: each has its own working folder, data dir and ``FFNN_HOST``, so the
pid check never applies between them and only heartbeats can tell a dead one. The services are the
real ones, started by ``ffnn.cluster`` (what ``make cluster`` runs) in a temporary folder, or the
cluster whose root ``FFNN_TEST_CLUSTER`` names (CI: the one ``make cluster`` started).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
from conftest import cli_command, tune_toml

from ffnn.cluster import Cluster, request
from ffnn.tracking.server import kill_group
from ffnn.tune.storage import trial_number

pytestmark = pytest.mark.cluster

GRACE = "10"  # FFNN_HEARTBEAT_GRACE, seconds: short, so a dead machine is noticed quickly
BUDGET = ["--iters", "30", "--eval-every", "10", "--batch-size", "20"]
SUFFIX = f"-{time.time_ns() % 10**9}"  # experiments and studies of this session: a kept cluster may hold older ones


@pytest.fixture(scope="module")
def cluster():
    if not Path("/usr/lib/postgresql/15/bin/pg_ctl").exists():
        pytest.skip("PostgreSQL 15 is not installed (apt-get install postgresql)")
    given = os.environ.get("FFNN_TEST_CLUSTER")
    tmp = None
    if given:
        c = Cluster(given)
    else:
        tmp = tempfile.mkdtemp(prefix="ffnn-cluster-")
        os.chmod(tmp, 0o711)  # PostgreSQL runs as user postgres when we are root
        c = Cluster(Path(tmp) / "mlruns")
    c.start()
    yield c
    if tmp:
        c.stop()
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture
def client(cluster, monkeypatch):
    """An MLflow client of the cluster, with the credentials of cluster.env."""
    for k, v in cluster.env().items():
        monkeypatch.setenv(k, v)
    from ffnn.tracking import Tracker
    return Tracker.open(cluster.env()["MLFLOW_TRACKING_URI"]).client


def machine_env(cluster, name: str) -> dict[str, str]:
    return {**os.environ, **cluster.env(), "FFNN_HOST": name, "FFNN_HEARTBEAT_GRACE": GRACE}


def start_machine(cluster, tiny, tmp_path, name: str, *argv: str) -> subprocess.Popen:
    """``ffnn ARGV`` as machine ``name``: its own folder, data dir and host identity."""
    home = tmp_path / name
    home.mkdir(exist_ok=True)
    return subprocess.Popen(cli_command(tiny, *argv, "--data-dir", str(home / "data")), cwd=home,
                            env=machine_env(cluster, name), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)


def compare_argv(experiment: str, models: str, seeds: int) -> list[str]:
    return ["compare", "--dataset", "tiny", "--experiment", experiment, "--models", models, "--seeds", str(seeds),
            "--workers", "1", "--no-report", *BUDGET]


def runs_of(client, experiment: str, kind: str) -> list:
    exp = client.get_experiment_by_name(experiment)
    return [] if exp is None else client.search_runs([exp.experiment_id], f"tags.`ffnn.kind` = '{kind}'",
                                                     max_results=5000)


def assert_each_once(client, experiment: str, models: list[str], seeds: int) -> list:
    children = runs_of(client, experiment, "run")
    finished = sorted((r.data.params["model"], int(r.data.params["seed"]))
                      for r in children if r.info.status == "FINISHED")
    assert finished == sorted((m, s) for m in models for s in range(seeds))  # every one, exactly once
    everything = children + runs_of(client, experiment, "comparison")
    assert [r.info.run_name for r in everything if r.info.status == "RUNNING"] == []
    return children


def finish(procs: list[subprocess.Popen], timeout: float = 300) -> list[tuple[int, str]]:
    out = []
    for p in procs:
        _, err = p.communicate(timeout=timeout)
        out.append((p.returncode, err))
    return out


# ---------------------------------------------------------------- services
def test_cluster_refuses_requests_without_credentials(cluster):
    env = cluster.env()
    url = env["MLFLOW_TRACKING_URI"]
    path = "/api/2.0/mlflow/experiments/search?max_results=1"
    assert request(url, path) == 401
    assert request(url, path, env["MLFLOW_TRACKING_USERNAME"], "wrong") == 401
    assert request(url, path, env["MLFLOW_TRACKING_USERNAME"], env["MLFLOW_TRACKING_PASSWORD"]) == 200

    import psycopg
    st = cluster.state()
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(host="127.0.0.1", port=st.pg_port, user="ffnn", dbname="optuna", password="",
                        connect_timeout=5).close()
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(host="127.0.0.1", port=st.pg_port, user="postgres", dbname="optuna", password="x",
                        connect_timeout=5).close()
    with psycopg.connect(host="127.0.0.1", port=st.pg_port, user="ffnn", dbname="optuna",
                         password=env["PGPASSWORD"], connect_timeout=5) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)

    assert (cluster.env_file.stat().st_mode & 0o777) == 0o600
    secrets = (env["PGPASSWORD"], env["MLFLOW_TRACKING_PASSWORD"])
    for f in cluster.dir.rglob("*"):  # logs, state, ini: the passwords are in cluster.env only
        if f.is_file() and f.stat().st_size < 50_000_000 and "pg" not in f.relative_to(cluster.dir).parts[:1]:
            text = f.read_bytes()
            assert not any(s.encode() in text for s in secrets), f


# ---------------------------------------------------------------- compare on three machines
def test_three_machines_share_60_runs_each_trained_once(cluster, client, tiny, tmp_path):
    models, seeds = ["LR", "C", "D"], 20
    argv = compare_argv("share" + SUFFIX, ",".join(models), seeds)
    procs = [start_machine(cluster, tiny, tmp_path, f"machine-{i}", *argv) for i in range(3)]
    results = finish(procs)
    assert [rc for rc, _ in results] == [0, 0, 0], [err[-2000:] for _, err in results]
    children = assert_each_once(client, "share" + SUFFIX, models, seeds)
    owners = {r.data.tags["ffnn.owner"].split(":")[0] for r in children if r.info.status == "FINISHED"}
    assert len(owners) >= 2, owners  # the work was shared
    secrets = (cluster.env()["PGPASSWORD"], cluster.env()["MLFLOW_TRACKING_PASSWORD"])
    for r in children[:5]:
        assert not any(s in str(r.data.tags) + str(r.data.params) for s in secrets)


def test_a_machine_killed_mid_run_is_failed_after_the_grace_and_its_runs_retrained(cluster, client, tiny, tmp_path):
    models, seeds = ["LR", "C", "D"], 20
    argv = compare_argv("kill" + SUFFIX, ",".join(models), seeds)
    procs = [start_machine(cluster, tiny, tmp_path, f"machine-{i}", *argv) for i in range(3)]
    victim = procs[0]
    # freeze the victim (heartbeat included) until it holds a RUNNING run, then kill -9 it
    held = []
    deadline = time.time() + 180
    while not held and time.time() < deadline and victim.poll() is None:
        time.sleep(0.3)
        os.killpg(victim.pid, signal.SIGSTOP)
        held = [r.info.run_id for r in runs_of(client, "kill" + SUFFIX, "run")
                if r.info.status == "RUNNING" and r.data.tags["ffnn.owner"].startswith("machine-0:")]
        if not held:
            os.killpg(victim.pid, signal.SIGCONT)
    assert held, "the victim never held a run"
    os.killpg(victim.pid, signal.SIGKILL)
    victim.wait()
    killed_at = time.time()

    results = finish(procs[1:])
    assert [rc for rc, _ in results] == [0, 0], [err[-2000:] for _, err in results]
    children = assert_each_once(client, "kill" + SUFFIX, models, seeds)
    by_id = {r.info.run_id: r for r in children}
    for run_id in held:
        r = by_id[run_id]
        assert r.info.status == "FAILED"
        assert "no heartbeat" in r.data.tags["ffnn.failure"] and "machine-0" in r.data.tags["ffnn.failure"]
        assert r.info.end_time / 1000 >= killed_at + float(GRACE) - 1  # not before the grace period
        same = [o for o in children if o.data.tags["ffnn.run_key"] == r.data.tags["ffnn.run_key"]
                and o.info.status == "FINISHED"]
        assert len(same) == 1 and not same[0].data.tags["ffnn.owner"].startswith("machine-0:")
    parents = runs_of(client, "kill" + SUFFIX, "comparison")
    assert sorted(p.info.status for p in parents) == ["FAILED", "FINISHED", "FINISHED"]


# ---------------------------------------------------------------- tune on four machines
def test_four_tuning_machines_share_a_postgresql_study(cluster, client, tiny, tmp_path):
    n_trials = 6
    (tmp_path / "tune.toml").write_text(
        tune_toml("tune-cluster" + SUFFIX, n_trials, f'study_name = "cluster-C{SUFFIX}"'))
    argv = ["tune", "--config", str(tmp_path / "tune.toml"), "--workers", "2", "--iters", "300"]
    procs = [start_machine(cluster, tiny, tmp_path, f"machine-{i}", *argv) for i in range(4)]

    import optuna
    storage = optuna.storages.RDBStorage(_storage_url(cluster))
    victim = procs[0]
    held = []
    deadline = time.time() + 240
    while not held and time.time() < deadline and victim.poll() is None:
        time.sleep(0.3)
        try:
            study = optuna.load_study(study_name="cluster-C" + SUFFIX, storage=storage)
        except KeyError:
            continue
        os.killpg(victim.pid, signal.SIGSTOP)
        held = [t.number for t in study.get_trials(states=(optuna.trial.TrialState.RUNNING,))
                if t.user_attrs.get("owner", "").startswith("machine-0:") and "mlflow_run_id" in t.user_attrs]
        if not held:
            os.killpg(victim.pid, signal.SIGCONT)
    assert held, "the victim never held a trial"
    os.killpg(victim.pid, signal.SIGKILL)
    victim.wait()

    results = finish(procs[1:], timeout=400)
    errs = "\n".join(err for _, err in results)
    assert [rc for rc, _ in results] == [0, 0, 0], errs[-3000:]
    assert "OperationalError" not in errs and "database is locked" not in errs

    trials = optuna.load_study(study_name="cluster-C" + SUFFIX, storage=storage).get_trials()
    states = {t.number: t.state.name for t in trials}
    assert all(s in ("COMPLETE", "PRUNED", "FAIL") for s in states.values()), states
    for number in held:
        assert states[number] == "FAIL"
        retried = [t for t in trials if t.system_attrs.get("failed_trial") == number]
        assert len(retried) == 1 and retried[0].state.name in ("COMPLETE", "PRUNED")
    survivors = [t for t in trials if t.user_attrs.get("owner", "machine-0:").split(":")[0] != "machine-0"]
    # each survivor ran its n_trials, and the retries (within them, or after them: a survivor whose own
    # trials are done waits for the others' RUNNING trials and trains the retries of those that went stale)
    assert len(survivors) >= 3 * n_trials
    params_seen = [(t.params.get("n_units_l0"), t.params.get("lr")) for t in trials
                   if t.system_attrs.get("failed_trial") is None]
    assert len(params_seen) == len(set(params_seen))  # no trial sampled twice

    parents = runs_of(client, "tune-cluster" + SUFFIX, "study")
    assert [p.info.status for p in parents] == ["FINISHED"]
    runs = runs_of(client, "tune-cluster" + SUFFIX, "trial")
    mlflow_states = {trial_number(r): r.info.status for r in runs}  # the tag set when the run was made
    assert len(runs) == len(trials) == len(mlflow_states)  # one run per trial
    assert all(r.data.tags["mlflow.parentRunId"] == parents[0].info.run_id for r in runs)
    expected = {"COMPLETE": "FINISHED", "PRUNED": "KILLED", "FAIL": "FAILED"}
    assert mlflow_states == {n: expected[s] for n, s in states.items()}


def _storage_url(cluster) -> str:
    env = cluster.env()
    return env["FFNN_OPTUNA_STORAGE"].replace("ffnn@", f"ffnn:{env['PGPASSWORD']}@")


# ---------------------------------------------------------------- the server goes away
def test_lost_tracking_server_ends_compare_with_one_line_and_a_rerun_finishes(cluster, client, tiny, tmp_path):
    argv = compare_argv("outage" + SUFFIX, "LR,C", 30)
    proc = start_machine(cluster, tiny, tmp_path, "machine-0", *argv)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if any(r.info.status == "FINISHED" for r in runs_of(client, "outage" + SUFFIX, "run")):
            break
        time.sleep(0.3)
    kill_group(cluster.state().mlflow_pid)  # the tracking server goes away mid-compare
    start = time.time()
    _, err = proc.communicate(timeout=120)
    waited = time.time() - start
    assert proc.returncode == 2, err[-2000:]
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if "error" in line.lower()]
    assert len(errors) == 1 and errors[0].startswith("ffnn compare: error: tracking server") \
        and "went away" in errors[0], err[-2000:]
    assert waited < 90

    cluster.start()  # the server is back (the same data, port and credentials)
    again = start_machine(cluster, tiny, tmp_path, "machine-0", *argv)
    rc, err = finish([again])[0]
    assert rc == 0, err[-2000:]
    assert_each_once(client, "outage" + SUFFIX, ["LR", "C"], 30)


def test_stop_leaves_no_process_and_start_reuses_the_data(cluster, client):
    st = cluster.state()
    exp_id = client.create_experiment(f"kept-{time.time_ns()}")
    assert cluster.stop() == ["mlflow server", "PostgreSQL"]
    ps = subprocess.run(["ps", "-eo", "pid,args"], capture_output=True, text=True).stdout
    assert [line for line in ps.splitlines() if str(cluster.dir) in line] == []
    assert cluster.status() == {"PostgreSQL": False, "mlflow server": False}
    cluster.start()
    again = cluster.state()
    assert (again.port, again.pg_port) == (st.port, st.pg_port)
    from ffnn.tracking import Tracker
    assert Tracker.open(cluster.env()["MLFLOW_TRACKING_URI"]).client.get_experiment(exp_id).experiment_id == exp_id
