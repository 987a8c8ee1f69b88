"""The MLflow way: loadable and registered models, servable ones, system metrics, no telemetry, exit status."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import mlflow
import mlflow.pytorch
import numpy as np
import pytest
import torch
from conftest import cli_command, tune_toml
from mlflow import MlflowClient

from ffnn import cli, data
from ffnn.models import REGISTRY, build_model
from ffnn.tracking import BEST_ALIAS, Tracker, free_port, registry_name, telemetry_env
from ffnn.train import evaluate

BUDGET = ["--iters", "30", "--eval-every", "10", "--batch-size", "20", "--workers", "1"]
# variables under which MLflow never sends telemetry anyway (CI, pytest): removed to test ffnn's own switch
MLFLOW_QUIET_ANYWAY = ("PYTEST_CURRENT_TEST", "CI", "GITHUB_ACTIONS", "MLFLOW_DISABLE_TELEMETRY", "DO_NOT_TRACK",
                       "FFNN_TELEMETRY")


def compare_argv(tmp_path, *extra) -> list[str]:
    return ["compare", "--dataset", "tiny", "--data-dir", str(tmp_path / "data"), "--tracking-uri",
            f"sqlite:///{tmp_path}/mlruns/mlflow.db", "--experiment", "t", "--no-report", *BUDGET, *extra]


def finished_children(uri: str, experiment: str = "t") -> list:
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    return client.search_runs([exp.experiment_id], "tags.`ffnn.kind` = 'run' and attributes.status = 'FINISHED'")


def test_registered_best_seed_reproduces_its_logged_test_accuracy(tiny, tmp_path, capsys):
    uri = f"sqlite:///{tmp_path}/mlruns/mlflow.db"
    assert cli.main(compare_argv(tmp_path, "--models", "A,D", "--seeds", "3", "--register")) == 0
    out = capsys.readouterr().out
    assert f"models:/t-D@{BEST_ALIAS}" in out and f"models:/t-A@{BEST_ALIAS}" in out
    runs = [r for r in finished_children(uri) if r.data.params["model"] == "D"]
    best = max(runs, key=lambda r: r.data.metrics["final_test_accuracy"])

    mlflow.set_tracking_uri(uri)
    version = MlflowClient(uri).get_model_version_by_alias("t-D", BEST_ALIAS)
    assert version.run_id == best.info.run_id
    model = mlflow.pytorch.load_model(f"models:/t-D@{BEST_ALIAS}")
    ds = data.load(tiny, tmp_path / "data")
    assert isinstance(model, torch.nn.Module)
    assert evaluate(model, ds.x_test, ds.y_test) == pytest.approx(best.data.metrics["final_test_accuracy"],
                                                                  abs=0.01)
    # registering again keeps the one version
    assert cli.main(compare_argv(tmp_path, "--models", "D", "--seeds", "3", "--register")) == 0
    assert [v.version for v in MlflowClient(uri).search_model_versions("name = 't-D'")] == [1]


def test_each_models_best_seed_is_a_logged_model_and_every_run_keeps_its_weights(tiny, tmp_path):
    """The default, ``--log-models best``: one LoggedModel per model, on its best seed (the registry's choice
    too); the other seeds' networks rebuild from ``weights.pt``; a rerun logs nothing twice."""
    uri = f"sqlite:///{tmp_path}/mlruns/mlflow.db"
    assert cli.main(compare_argv(tmp_path, "--models", "LR,C", "--seeds", "3")) == 0
    runs = finished_children(uri)
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("t")
    found = client.search_logged_models(experiment_ids=[exp.experiment_id])
    best = {}
    for r in sorted(runs, key=lambda r: int(r.data.params["seed"])):
        m = r.data.params["model"]
        if m not in best or r.data.metrics["final_test_accuracy"] > best[m].data.metrics["final_test_accuracy"]:
            best[m] = r
    assert sorted(m.source_run_id for m in found) == sorted(r.info.run_id for r in best.values())
    ds = data.load(tiny, tmp_path / "data")
    for r in runs:
        state = torch.load(client.download_artifacts(r.info.run_id, "weights.pt", str(tmp_path / r.info.run_id)))
        net = build_model(REGISTRY[r.data.params["model"]].sized(ds.x_train.shape[1], int(ds.y_train.max()) + 1))
        net.load_state_dict(state)
        assert evaluate(net, ds.x_test, ds.y_test) == pytest.approx(r.data.metrics["final_test_accuracy"], abs=0.01)
    assert cli.main(compare_argv(tmp_path, "--models", "LR,C", "--seeds", "3", "--register")) == 0
    assert len(client.search_logged_models(experiment_ids=[exp.experiment_id])) == 2
    registered = client.get_model_version_by_alias("t-C", "best")
    assert registered.run_id == best["C"].info.run_id


def test_every_finished_run_logs_a_model_with_signature_and_example(tiny, tmp_path):
    """``--log-models all``: each run's own network, as a LoggedModel found by the experiment's search."""
    uri = f"sqlite:///{tmp_path}/mlruns/mlflow.db"
    assert cli.main(compare_argv(tmp_path, "--models", "LR,C", "--seeds", "2", "--log-models", "all")) == 0
    runs = finished_children(uri)
    assert len(runs) == 4
    mlflow.set_tracking_uri(uri)
    ds = data.load(tiny, tmp_path / "data")
    uuids = set()
    for run in runs:
        info = mlflow.models.get_model_info(f"runs:/{run.info.run_id}/model")
        uuids.add(info.model_uuid)
        assert evaluate(mlflow.pytorch.load_model(f"runs:/{run.info.run_id}/model"), ds.x_test, ds.y_test) == \
            pytest.approx(run.data.metrics["final_test_accuracy"], abs=0.01)
    assert len(uuids) == 4
    exp = MlflowClient(uri).get_experiment_by_name("t")
    found = MlflowClient(uri).search_logged_models(experiment_ids=[exp.experiment_id])
    assert sorted(m.source_run_id for m in found) == sorted(r.info.run_id for r in runs)
    for run in runs:
        info = mlflow.models.get_model_info(f"runs:/{run.info.run_id}/model")
        assert "pytorch" in info.flavors and info.signature is not None
        assert info.signature.inputs.to_dict()[0]["tensor-spec"]["shape"] == (-1, 784)
        example = mlflow.pyfunc.load_model(f"runs:/{run.info.run_id}/model").input_example
        assert example.shape == (5, 784) and example.dtype == np.float32
        reqs = MlflowClient(uri).download_artifacts(run.info.run_id, "model/requirements.txt", str(tmp_path))
        assert f"torch=={torch.__version__.split('+')[0]}" in Path(reqs).read_text()
        # an MLflow 3 LoggedModel, the run's output, with the run's final metrics linked to it
        [output] = run.outputs.model_outputs
        logged = MlflowClient(uri).get_logged_model(output.model_id)
        assert logged.source_run_id == run.info.run_id and logged.name == "model" and logged.status == "READY"
        assert {m.key: m.value for m in logged.metrics}["final_test_accuracy"] == \
            run.data.metrics["final_test_accuracy"]
        model = mlflow.pytorch.load_model(f"runs:/{run.info.run_id}/model")
        assert model(torch.from_numpy(example)).shape == (5, 10)


def test_registry_names_are_valid_and_name_tuned_models():
    assert registry_name("compare", "C") == "compare-C"
    assert registry_name("compare", "C*") == "compare-C-tuned"
    assert registry_name("a/b:c", "E") == "a_b_c-E"


def test_compare_exits_1_after_the_table_when_a_run_fails(tiny, tmp_path, capsys):
    # lr 1e4 makes model E's loss overflow to inf: Diverged -> the run FAILED
    assert cli.main(compare_argv(tmp_path, "--models", "E", "--seeds", "1", "--lr", "10000")) == 1
    captured = capsys.readouterr()
    assert "FAILED" in captured.out.split("final test acc")[1]  # in the table
    assert "runs FAILED" in captured.err


def test_exit_status_is_1_when_any_requested_run_failed(capsys):
    """`compare` and `tune --final` both end with this on their rows."""
    from ffnn.compare import RunRow
    ok = RunRow("C", 0, "FINISHED", 95.0, 1.0)
    assert cli.exit_status([ok, RunRow("C", 1, "FINISHED", 94.0, 1.0)]) == 0
    assert cli.exit_status([ok, RunRow("C", 1, "RUNNING", float("nan"), 0.0)]) == 0  # another process has it
    assert cli.exit_status([ok, RunRow("C", 1, "FAILED", float("nan"), 0.0, "diverged")]) == 1
    assert "1 of 2 runs FAILED" in capsys.readouterr().err


def test_tune_register_without_final_is_bad_input(tiny, tmp_path, capsys):
    (tmp_path / "tune.toml").write_text(tune_toml("tt", 1))
    assert cli.main(["tune", "--config", str(tmp_path / "tune.toml"), "--register"]) == 2
    assert "--final" in capsys.readouterr().err


def test_parent_run_records_system_metrics_and_the_sampler_stops(tiny, tmp_path, capfd):
    """The sampler logs a point a second: the comparison lasts longer than that."""
    uri = f"sqlite:///{tmp_path}/mlruns/mlflow.db"
    assert cli.main(compare_argv(tmp_path, "--models", "C", "--seeds", "2", "--iters", "4000",
                                 "--eval-every", "2000")) == 0
    assert not [t for t in threading.enumerate() if t.name == "SystemMetricsMonitor"]
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("t")
    parent = client.search_runs([exp.experiment_id], "tags.`ffnn.kind` = 'comparison'")[0]
    for key in ("system/cpu_utilization_percentage", "system/system_memory_usage_megabytes"):
        assert key in parent.data.metrics
    assert 0 <= parent.data.metrics["system/cpu_utilization_percentage"] <= 100 * (os.cpu_count() or 1)
    assert "database is locked" not in "".join(capfd.readouterr())


def test_system_metrics_sample_while_the_main_thread_writes(tmp_path):
    """The sampler thread and the main thread write to one SQLite store at once without locking errors."""
    tracker = Tracker.open(f"sqlite:///{tmp_path}/mlflow.db")
    exp = tracker.experiment_id("sm")
    run = tracker.start_run(exp, "r", {}, {})
    with tracker.system_metrics(run) as sampler:
        sampler.monitor.sampling_interval = 0.05
        sampler.monitor.samples_before_logging = 2
        deadline = time.time() + 3
        step = 0
        while time.time() < deadline:
            tracker.log_values(run, {"x": step}, step=step)
            step += 1
    tracker.end_run(run)
    history = tracker.client.get_metric_history(run, "system/cpu_utilization_percentage")
    assert len(history) >= 5 and len(tracker.client.get_metric_history(run, "x")) == step


def test_telemetry_env_is_off_unless_opted_in():
    assert telemetry_env({})["MLFLOW_DISABLE_TELEMETRY"] == "true"
    assert telemetry_env({})["DO_NOT_TRACK"] == "true"
    assert telemetry_env({"MLFLOW_DISABLE_TELEMETRY": "false"})["MLFLOW_DISABLE_TELEMETRY"] == "true"
    opted_in = telemetry_env({"FFNN_TELEMETRY": "1"})
    assert "MLFLOW_DISABLE_TELEMETRY" not in opted_in and "DO_NOT_TRACK" not in opted_in


def test_ffnn_process_runs_mlflow_without_telemetry(tmp_path):
    """In a process where MLflow would send telemetry (no CI or pytest variables), ffnn switches it off."""
    env = {k: v for k, v in os.environ.items() if k not in MLFLOW_QUIET_ANYWAY}
    code = ("import os, ffnn.tracking\n"
            "from mlflow.telemetry import get_telemetry_client\n"
            "from mlflow.telemetry.utils import is_telemetry_disabled\n"
            "print(is_telemetry_disabled(), get_telemetry_client(), os.environ['MLFLOW_DISABLE_TELEMETRY'])")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.stdout.split() == ["True", "None", "true"], out.stderr[-2000:]


@pytest.mark.slow
def test_served_model_answers_predictions(tiny, tmp_path):
    """`mlflow models serve --env-manager local` on 127.0.0.1 serves a registered model."""
    uri = f"sqlite:///{tmp_path}/mlruns/mlflow.db"
    assert cli.main(compare_argv(tmp_path, "--models", "C", "--seeds", "1", "--register")) == 0
    ds = data.load(tiny, tmp_path / "data")
    x = ds.x_test[:8].numpy()
    mlflow.set_tracking_uri(uri)
    expected = mlflow.pytorch.load_model(f"models:/t-C@{BEST_ALIAS}")(torch.from_numpy(x)).detach().numpy()

    port = free_port()
    # the server runs uvicorn from the environment's bin folder, as an activated venv has it on PATH
    env = {**telemetry_env(os.environ), "MLFLOW_TRACKING_URI": uri,
           "PATH": f"{os.path.dirname(sys.executable)}{os.pathsep}{os.environ.get('PATH', '')}"}
    with open(tmp_path / "serve.log", "w") as log:  # the server writes to its own copy of the file
        server = subprocess.Popen([sys.executable, "-m", "mlflow", "models", "serve", "-m", f"models:/t-C@{BEST_ALIAS}",
                                   "--env-manager", "local", "-h", "127.0.0.1", "-p", str(port)],
                                  env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.time() + 120
        while True:
            assert server.poll() is None, (tmp_path / "serve.log").read_text()[-2000:]
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2):
                    break
            except OSError:
                assert time.time() < deadline, "mlflow models serve did not answer within 120 s"
                time.sleep(0.5)
        request = urllib.request.Request(f"http://127.0.0.1:{port}/invocations",
                                         data=json.dumps({"inputs": x.tolist()}).encode(),
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=30) as r:
            predictions = np.array(json.loads(r.read())["predictions"])
    finally:
        os.killpg(server.pid, 15)
        server.wait(30)
    assert predictions.shape == (8, 10)
    np.testing.assert_allclose(predictions, expected, rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_compare_subprocess_exit_status_is_1_for_a_failed_run(tiny, tmp_path):
    """The status a shell sees: `ffnn compare --models E --seeds 1 --lr 10000` exits 1."""
    out = subprocess.run(cli_command(tiny, *compare_argv(tmp_path, "--models", "E", "--seeds", "1", "--lr", "10000")),
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 1, out.stderr[-2000:]
