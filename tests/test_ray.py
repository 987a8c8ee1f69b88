"""The Ray engine on a real local Ray cluster (`make test-cluster`): numbers, faults, pruning, the CLI's lines.

The cluster is the one ``ffnn.ray_cluster`` (what ``make ray`` runs) starts in a temporary folder, with one
CPU on the head and one on the worker node, or the one whose root ``FFNN_TEST_RAY`` names (CI: the one
``make ray`` started). Each command runs as a user types it, in its own folder with its own SQLite store;
its workers import this checkout's ffnn (``PYTHONPATH``), whatever the virtual environment points to.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest
from conftest import cli_command

REPO = Path(__file__).resolve().parents[1]
BUSY = "ray::ffnn_job"  # a worker process running one of ffnn's tasks (an idle one is ray::IDLE)


# ---------------------------------------------------------------- without a cluster
def test_ray_flag_without_ray_installed_says_how_to_install_it(tmp_path):
    hide = ("import sys; sys.modules['ray'] = None; sys.argv[1:] = sys.argv[2:]; "  # import ray fails as if absent
            "from ffnn.cli import main_exit; main_exit()")
    out = subprocess.run([sys.executable, "-c", hide, "-", "compare", "--ray", "127.0.0.1:1", "--no-report"],
                         cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 2, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "--ray needs Ray" in lines[0] and "pip install 'ffnn[ray]'" in lines[0], out.stderr
    assert not (tmp_path / "mlruns").exists()  # nothing was touched

    out = subprocess.run([sys.executable, "-m", "ffnn", "compare", "--ray", "--no-report"], cwd=tmp_path,
                         env={k: v for k, v in {**os.environ, "PYTHONPATH": str(REPO)}.items() if k != "RAY_ADDRESS"},
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "RAY_ADDRESS" in out.stderr and len(out.stderr.strip().splitlines()) == 1


def test_ray_address_and_cluster_files_read_as_written(tmp_path):
    from ffnn.engine.ray import RayError, _host_port, _probe
    from ffnn.ray_cluster import RayCluster, State
    assert _host_port("ray://head:10001") == ("head", 10001) and _host_port("[::1]:6379") == ("::1", 6379)
    assert _host_port("auto") is None
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(RayError, match=f"no Ray cluster answers at 127.0.0.1:{port}"):
        _probe(f"127.0.0.1:{port}")  # nothing listens there

    c = RayCluster(tmp_path / "mlruns")
    assert c.env() == {} and c.status() == {"Ray head": False, "Ray worker node": False} and c.processes() == {}
    assert c.summary(c.status(), joining=True) == ["Ray head: stopped", "Ray worker node: stopped"]
    c._write_env("10.0.0.1:6379", "t0k")
    c._save(State("0.0.0.0", 6379, 1, 1, 200, str(c.temp_dir), "10.0.0.1:6379"))
    assert (c.env_file.stat().st_mode & 0o777) == 0o600
    assert c.env() == {"RAY_ADDRESS": "10.0.0.1:6379", "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": "t0k",
                       "RAY_USAGE_STATS_ENABLED": "0"}
    text = "\n".join(c.summary(c.status(), joining=True))
    assert "RAY_ADDRESS=10.0.0.1:6379" in text and "ray start --address $RAY_ADDRESS" in text and "t0k" not in text
    assert c.stop() == []  # nothing was running


def test_a_context_on_ray_sizes_its_work_by_the_cluster():
    import torch

    from ffnn.context import Context, _cluster_device
    from ffnn.engine.ray import ClusterInfo
    from ffnn.train.loop import DeviceError
    cpus_only, with_gpus = ClusterInfo("h:1", 8, 0, 4), ClusterInfo("h:1", 8, 2, 4)
    assert _cluster_device("auto", cpus_only) == torch.device("cpu")
    assert _cluster_device("auto", with_gpus) == torch.device("cuda")  # whatever this machine has
    with pytest.raises(DeviceError, match="the Ray cluster at h:1 has no GPU"):
        _cluster_device("cuda", cpus_only)
    ctx = Context(None, "data", Path("."), 1, 1, 1, 1, torch.device("cpu"), None, ray=cpus_only)
    assert ctx.worker_count(None, 100) == 8  # the cluster's CPUs
    assert ctx.worker_count(None, 100, per_host=True) == 4  # the most that share one machine's memory
    assert ctx.worker_count(None, 3) == 3 and ctx.worker_count(2, 100) == 2
    gpu_ctx = Context(None, "data", Path("."), 1, 1, 1, 1, torch.device("cuda"), None, ray=with_gpus)
    assert gpu_ctx.worker_count(None, 100) == 2 and gpu_ctx.device_name == "Ray cluster at h:1 (8 CPUs, 2 GPUs)"


# ---------------------------------------------------------------- the cluster
@pytest.fixture(scope="module")
def cluster():
    import importlib.util
    if importlib.util.find_spec("ray") is None:  # not imported here: Ray reads its token settings at import
        pytest.skip("Ray is not installed (make install-ray)")
    from ffnn.ray_cluster import RayCluster
    given = os.environ.get("FFNN_TEST_RAY")
    tmp = None if given else tempfile.mkdtemp(prefix="ffnn-ray-")
    c = RayCluster(given or Path(tmp) / "mlruns")
    c.start(cpus=None if given else 2)
    yield c
    if tmp:
        assert c.stop() == ["Ray head", "Ray worker node"]
        assert c.processes() == {}  # nothing of the cluster is left
        import shutil
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture(scope="module")
def joined(cluster):
    """This process as the cluster's driver (the engine in-process, where coverage sees it); the token is in
    the environment before ``import ray``, which reads it."""
    from ffnn.engine import ray as ray_engine
    saved = {k: os.environ.get(k) for k in cluster.env()}
    os.environ.update(cluster.env())
    import ray
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the workers cannot import tests/
    try:
        yield ray_engine.connect(None)
    finally:
        ray_engine.disconnect()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _asks(context, job, ask):
    if job == "boom":
        raise ValueError("the job's own failure")
    return os.getpid(), context, [ask(i) for i in range(3)]


def _collect(engine, jobs, on_ask=None) -> tuple[dict, dict]:
    queue, done, failed = list(jobs), {}, {}
    engine.run(lambda: queue.pop(0) if queue else None, done.__setitem__, failed.__setitem__, on_ask)
    return done, failed


@pytest.mark.slow
def test_ray_engine_answers_each_tasks_questions_and_reports_a_jobs_own_failure(joined):
    from ffnn.engine.ray import RayEngine
    engine = RayEngine(lambda: "ready", _asks, joined.cpus)
    asked = []
    done, failed = _collect(engine, [1, 2, "boom", 3], lambda job, i: asked.append((job, i)) or f"{job}:{i}")
    engine.close()
    assert sorted(done) == [1, 2, 3] and list(failed) == ["boom"]
    for job, (pid, context, answers) in done.items():
        assert pid != os.getpid() and context == "ready" and answers == [f"{job}:{i}" for i in range(3)]
    assert sorted(asked) == sorted((j, i) for j in (1, 2, 3) for i in range(3))  # each question once, here
    assert failed["boom"].startswith("ValueError: the job's own failure")
    assert not engine.alive

    # a job that asks with no one to answer is the job's failure, said plainly
    bare = RayEngine(lambda: "ready", _asks, 1)
    _, failed = _collect(bare, [4])
    bare.close(graceful=False)
    assert "was given no on_ask" in failed[4]


def _sleeps(context, job, ask):
    time.sleep(job)
    return job


@pytest.mark.slow
def test_an_interrupt_while_the_engine_waits_on_ray_comes_out_as_the_interrupt(joined):
    """ffnn's SIGINT handler raises inside Ray's wait, which Python reports as a SystemError: the workflow
    must get the interrupt itself, to end its runs KILLED with exit status 130."""
    from ffnn.engine.ray import RayEngine
    from ffnn.errors import Interrupted, install_interrupt_handlers
    engine = RayEngine(lambda: None, _sleeps, 1)
    old = install_interrupt_handlers()
    timer = threading.Timer(3, os.kill, (os.getpid(), signal.SIGINT))
    timer.start()
    began = time.time()
    try:
        with pytest.raises(Interrupted):
            _collect(engine, [60])
    finally:
        timer.cancel()
        for signum, handler in old.items():
            signal.signal(signum, handler)
        engine.close(graceful=False)
    assert time.time() - began < 30  # at once, not when the task ends


@pytest.mark.slow
def test_ray_engine_trains_a_stack_to_the_process_engines_numbers(joined, tiny, tmp_path):
    import io
    from functools import partial

    import torch

    from ffnn import datasets
    from ffnn.engine import ProcessEngine
    from ffnn.engine.ray import RayEngine
    from ffnn.models import REGISTRY
    from ffnn.train import TrainConfig
    from ffnn.train.jobs import StackJob, run_stack
    source, _, shape = datasets.resolve("tiny", tmp_path / "data")
    setup = partial(datasets.load, source, str(tmp_path / "data"), device="cpu", verify=False)
    cfg = TrainConfig(batch_size=20, iters=40, eval_every=20)
    stacks = [StackJob(m, REGISTRY[m].sized(shape.n_features, shape.n_classes), cfg, (0, 1, 2)) for m in ("LR", "C")]
    out = {}
    for name, engine in (("process", ProcessEngine(2, setup, run_stack)), ("ray", RayEngine(setup, run_stack, 2))):
        done, failed = _collect(engine, stacks)
        engine.close()
        assert failed == {}
        out[name] = {(r.job.model, r.job.cfg.seed): r for results in done.values() for r in results}
    assert len(out["ray"]) == 6
    for key, here in out["process"].items():
        there = out["ray"][key]
        assert (here.accuracy, here.history, here.losses, here.test_correct) == \
            (there.accuracy, there.history, there.losses, there.test_correct)
        mine, theirs = (torch.load(io.BytesIO(r.weights)) for r in (here, there))
        assert all(torch.equal(mine[k], theirs[k]) for k in mine)


def ray_env(cluster) -> dict[str, str]:
    return {**os.environ, **cluster.env(), "PYTHONPATH": str(REPO)}


def start(cluster, tiny, home: Path, *argv: str) -> subprocess.Popen:
    home.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen(cli_command(tiny, *argv, "--data-dir", str(home / "data")), cwd=home,
                            env=ray_env(cluster), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)


def finish(proc: subprocess.Popen, timeout: float = 300) -> tuple[int, str]:
    _, err = proc.communicate(timeout=timeout)
    return proc.returncode, err


def compare_argv(experiment: str, models: str, seeds: int, iters: int, *extra: str) -> list[str]:
    return ["compare", "--dataset", "tiny", "--experiment", experiment, "--models", models, "--seeds", str(seeds),
            "--iters", str(iters), "--eval-every", str(iters // 2), "--batch-size", "20", "--no-report", *extra]


def client(home: Path):
    from ffnn.tracking import Tracker
    return Tracker.open(f"sqlite:///{home}/mlruns/mlflow.db").client


def runs_of(home: Path, experiment: str, kind: str = "run") -> list:
    c = client(home)
    exp = c.get_experiment_by_name(experiment)
    return [] if exp is None else c.search_runs([exp.experiment_id], f"tags.`ffnn.kind` = '{kind}'", max_results=5000)


def assert_each_once(home: Path, experiment: str, models: list[str], seeds: int) -> list:
    children = runs_of(home, experiment)
    finished = sorted((r.data.params["model"], int(r.data.params["seed"]))
                      for r in children if r.info.status == "FINISHED")
    assert finished == sorted((m, s) for m in models for s in range(seeds))  # every one, exactly once
    everything = children + runs_of(home, experiment, "comparison")
    assert [r.info.run_name for r in everything if r.info.status == "RUNNING"] == []
    return children


def busy_workers(cluster, node: str | None = None) -> list[int]:
    return [pid for pid, cmd in cluster.processes(node).items() if cmd.startswith(BUSY)]


def kill_busy(pid: int) -> None:
    """kill -9 a worker process that is running a task (its stacks take seconds: it is still at it)."""
    assert Path(f"/proc/{pid}/cmdline").read_bytes().startswith(BUSY.encode())
    os.kill(pid, signal.SIGKILL)


def wait_for(what, timeout: float, proc: subprocess.Popen | None = None):
    deadline = time.time() + timeout
    while time.time() < deadline and (proc is None or proc.poll() is None):
        if found := what():
            return found
        time.sleep(0.2)
    return None


@pytest.mark.cluster
def test_a_seed_trains_to_the_same_numbers_on_ray_as_on_the_local_engine(cluster, tiny, tmp_path):
    argv = compare_argv("same", "LR,C", 3, 60)
    local = start(cluster, tiny, tmp_path / "local", *argv, "--workers", "2")
    assert finish(local)[0] == 0
    on_ray = start(cluster, tiny, tmp_path / "ray", *argv, "--ray")
    rc, err = finish(on_ray)
    assert rc == 0, err[-3000:]

    def numbers(home: Path) -> dict:
        c = client(home)
        return {(r.data.params["model"], r.data.params["seed"]):
                (r.data.metrics["final_test_accuracy"], r.data.tags["ffnn.test_correct"],
                 [(m.step, m.value) for m in c.get_metric_history(r.info.run_id, "test_accuracy")],
                 [(m.step, m.value) for m in c.get_metric_history(r.info.run_id, "train_loss")])
                for r in runs_of(home, "same")}

    here, there = numbers(tmp_path / "local"), numbers(tmp_path / "ray")
    assert len(here) == 6 and here == there  # every number, and which test images each seed got right


@pytest.mark.cluster
def test_a_busy_worker_killed_mid_stack_is_retried_and_every_run_finishes_once(cluster, tiny, tmp_path):
    models, seeds = ["LR", "C", "D"], 20
    home = tmp_path / "driver"
    proc = start(cluster, tiny, home, *compare_argv("worker-kill", ",".join(models), seeds, 1500), "--ray")
    # a stack is under way once a run has finished (the warm-ups are done) and a worker is busy
    assert wait_for(lambda: any(r.info.status == "FINISHED" for r in runs_of(home, "worker-kill")), 240, proc)
    victims = wait_for(lambda: busy_workers(cluster), 120, proc)
    assert victims, "no busy Ray worker to kill"
    kill_busy(victims[0])
    rc, err = finish(proc)
    assert rc == 0, err[-3000:]
    children = assert_each_once(home, "worker-kill", models, seeds)
    # retried by Ray: a stack whose task failed would have come back as FAILED runs (and exit status 1)
    assert [r for r in children if r.info.status != "FINISHED"] == []


@pytest.mark.cluster
def test_a_killed_worker_node_moves_its_tasks_to_the_head(cluster, tiny, tmp_path):
    models, seeds = ["C", "D"], 20
    home = tmp_path / "driver"
    proc = start(cluster, tiny, home, *compare_argv("node-kill", ",".join(models), seeds, 1500), "--ray")
    assert wait_for(lambda: any(r.info.status == "FINISHED" for r in runs_of(home, "node-kill")), 240, proc)
    assert wait_for(lambda: busy_workers(cluster, "worker"), 120, proc), "no task on the worker node"
    raylet = cluster.raylet("worker")
    assert raylet is not None
    os.kill(raylet, signal.SIGKILL)
    try:
        rc, err = finish(proc)
        assert rc == 0, err[-3000:]
        children = assert_each_once(home, "node-kill", models, seeds)
        assert [r for r in children if r.info.status != "FINISHED"] == []
        assert cluster.status() == {"Ray head": True, "Ray worker node": False}  # the head trained the rest
    finally:
        cluster.start()  # the worker node joins again, for the tests after this one
    assert cluster.status() == {"Ray head": True, "Ray worker node": True}


@pytest.mark.cluster
def test_a_driver_killed_mid_comparison_resumes_with_nothing_duplicated(cluster, tiny, tmp_path):
    models, seeds = ["LR", "C", "D"], 20
    home = tmp_path / "driver"
    argv = compare_argv("driver-kill", ",".join(models), seeds, 1500, "--ray")
    proc = start(cluster, tiny, home, *argv)
    assert wait_for(lambda: any(r.info.status == "FINISHED" for r in runs_of(home, "driver-kill")), 240, proc)
    assert wait_for(lambda: busy_workers(cluster), 120, proc)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    # Ray ends a dead driver's tasks: nothing trains for it any more
    assert wait_for(lambda: not busy_workers(cluster), 60), busy_workers(cluster)
    assert any(r.info.status == "RUNNING" for r in runs_of(home, "driver-kill"))  # what the kill left

    again = start(cluster, tiny, home, *argv)
    rc, err = finish(again)
    assert rc == 0, err[-3000:]
    assert_each_once(home, "driver-kill", models, seeds)


def _serve_silence(sock: socket.socket) -> None:
    """Accept connections and say nothing: a port that is open but is no Ray cluster."""
    conns = []
    while True:
        try:
            conns.append(sock.accept()[0])
        except OSError:
            return


@pytest.mark.cluster
def test_an_unreachable_address_is_one_line_and_exit_2_within_30_s(cluster, tiny, tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    silent = socket.socket()
    silent.bind(("0.0.0.0", 0))
    silent.listen()
    threading.Thread(target=_serve_silence, args=(silent,), daemon=True).start()
    try:
        for address, says in ((f"127.0.0.1:{closed}", "no Ray cluster answers at"),
                              (f"127.0.0.1:{silent.getsockname()[1]}", "no Ray cluster accepted this driver at")):
            began = time.time()
            proc = start(cluster, tiny, tmp_path / address.replace(":", "-"),
                         *compare_argv("unreachable", "C", 1, 20), "--ray", address)
            rc, err = finish(proc, timeout=60)
            assert time.time() - began < 30
            assert rc == 2, err
            lines = [line for line in err.strip().splitlines() if line.strip()]
            assert lines[-1].startswith(f"ffnn compare: error: {says} {address}"), err
            assert "Traceback" not in err and len([line for line in lines if "error" in line.lower()]) == 1, err
            assert not (tmp_path / address.replace(":", "-") / "mlruns").exists()  # no store was made
    finally:
        silent.close()


TUNE = """
experiment = "t"
final_experiment = "t-compare"
dataset = "tiny"
models = ["C"]
n_trials = 4
val_size = 100
startup_trials = 2
reports_dir = "reports"
[train]
batch_size = 20
iters = 30
eval_every = 10
[families.C]
activation = "relu"
depth = 1
width = [4, 32]
lr = [1e-3, 1.0]
"""


@pytest.mark.cluster
def test_tune_on_ray_prunes_through_the_driver_like_the_local_engine(cluster, tiny, tmp_path):
    import optuna

    outcomes = {}
    for engine in ("local", "ray"):
        home = tmp_path / engine
        home.mkdir()
        (home / "tune.toml").write_text(TUNE)
        storage = f"sqlite:///{home}/optuna.db"
        study = optuna.create_study(study_name="tune-C", storage=storage, direction="maximize")
        for params in ({"n_units_l0": 32, "lr": 0.5}, {"n_units_l0": 16, "lr": 0.5},  # the median to beat
                       {"n_units_l0": 4, "lr": 1e-3}):  # learns nothing by step 10: pruned
            study.enqueue_trial(params)
        # one trial at a time, so that each sees the ones before it finished: the same decisions on each engine
        argv = ["tune", "--config", "tune.toml", "--storage", storage, "--workers", "1", "--trial-batch", "1",
                "--final", "--seeds", "2", *(["--ray"] if engine == "ray" else [])]
        rc, err = finish(start(cluster, tiny, home, *argv))
        assert rc == 0, err[-3000:]
        trials = optuna.load_study(study_name="tune-C", storage=storage).get_trials()
        outcomes[engine] = [(t.state.name, t.params, t.value, t.intermediate_values) for t in trials]
        finals = runs_of(home, "t-compare")
        assert sorted((r.data.params["model"], r.info.status) for r in finals) == \
            [("C", "FINISHED")] * 2 + [("C*", "FINISHED")] * 2  # --final on the same engine
    states = [s for s, *_ in outcomes["ray"]]
    assert states[:3] == ["COMPLETE", "COMPLETE", "PRUNED"] and len(states) == 4
    assert outcomes["ray"] == outcomes["local"]
