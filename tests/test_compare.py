"""End to end: `ffnn compare` on a tiny dataset into a temporary MLflow store, read back with MLflow."""


from dataclasses import replace

import mlflow
import mlflow.pytorch
import pytest
import torch
from mlflow import MlflowClient

from ffnn import cli, data
from ffnn.train import evaluate

BUDGET = ["--iters", "30", "--eval-every", "10", "--batch-size", "20"]


def run_compare(tmp_path, *extra):
    uri = f"sqlite:///{tmp_path}/mlruns/mlflow.db"
    argv = ["compare", "--dataset", "tiny", "--data-dir", str(tmp_path / "data"), "--tracking-uri", uri,
            "--experiment", "t", "--no-report", *BUDGET, *extra]
    return cli.main(argv), MlflowClient(uri)


def children(client, status=None):
    exp = client.get_experiment_by_name("t")
    runs = client.search_runs([exp.experiment_id], "tags.`ffnn.kind` = 'run'", max_results=1000)
    return [r for r in runs if status is None or r.info.status == status]


def test_compare_logs_every_field(tiny, tmp_path):
    rc, client = run_compare(tmp_path, "--models", "LR,D", "--seeds", "2", "--workers", "1")
    assert rc == 0
    runs = children(client)
    assert len(runs) == 4 and {r.info.status for r in runs} == {"FINISHED"}
    exp = client.get_experiment_by_name("t")
    parents = client.search_runs([exp.experiment_id], "tags.`ffnn.kind` = 'comparison'")
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"

    run = next(r for r in runs if r.data.params["model"] == "D" and r.data.params["seed"] == "1")
    assert run.info.run_name == "D seed=1"
    assert run.data.tags["mlflow.parentRunId"] == parents[0].info.run_id
    assert run.data.params == {
        "model": "D", "activation": "relu", "hidden_sizes": "100,100", "lr": "0.1", "batch_size": "20",
        "iters": "30", "eval_every": "10", "seed": "1", "dataset": "tiny", "device": "cpu",
        "n_params": str(784 * 100 + 100 + 100 * 100 + 100 + 100 * 10 + 10)}
    lr_run = next(r for r in runs if r.data.params["model"] == "LR")
    assert lr_run.data.params["hidden_sizes"] == "" and lr_run.data.params["activation"] == "none"

    acc = client.get_metric_history(run.info.run_id, "test_accuracy")
    assert [m.step for m in acc] == [10, 20, 30]
    loss = client.get_metric_history(run.info.run_id, "train_loss")
    assert [m.step for m in loss] == [30] and all(m.value > 0 for m in loss)
    assert run.data.metrics["final_test_accuracy"] == acc[-1].value
    assert run.data.metrics["train_seconds"] > 0

    tags = run.data.tags
    assert tags["ffnn.device_name"] and tags["ffnn.torch_version"] == torch.__version__
    assert tags["ffnn.dataset_sha256"] == tiny.digest
    assert len(tags["ffnn.git_commit"]) in (40, len("unknown"))
    inputs = run.inputs.dataset_inputs
    assert [i.dataset.name for i in inputs] == ["tiny"]

    # the logged model (MLflow's PyTorch flavor) reproduces the logged final accuracy
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path}/mlruns/mlflow.db")
    model = mlflow.pytorch.load_model(f"runs:/{run.info.run_id}/model")
    ds = data.load(tiny, tmp_path / "data")
    assert evaluate(model, ds.x_test, ds.y_test) == pytest.approx(run.data.metrics["final_test_accuracy"])


def test_compare_rerun_trains_nothing_and_retrains_failed(tiny, tmp_path):
    run_compare(tmp_path, "--models", "C", "--seeds", "2", "--workers", "1")
    run_compare(tmp_path, "--models", "C", "--seeds", "2", "--workers", "1")
    _, client = run_compare(tmp_path, "--models", "C", "--seeds", "2", "--workers", "1")
    assert len(children(client)) == 2

    victim = children(client)[0]
    client.set_terminated(victim.info.run_id, "FAILED")
    run_compare(tmp_path, "--models", "C", "--seeds", "2", "--workers", "1")
    runs = children(client)
    assert len(runs) == 3 and len(children(client, "FINISHED")) == 2
    # a changed config is a different run
    run_compare(tmp_path, "--models", "C", "--seeds", "2", "--workers", "1", "--lr", "0.05")
    assert len(children(client, "FINISHED")) == 4


def test_compare_worker_processes_give_the_same_metrics(tiny, tmp_path):
    run_compare(tmp_path / "one", "--models", "A,C", "--seeds", "2", "--workers", "1")
    _, c1 = run_compare(tmp_path / "one", "--models", "A,C", "--seeds", "2", "--workers", "1")
    _, c2 = run_compare(tmp_path / "two", "--models", "A,C", "--seeds", "2", "--workers", "2")

    def finals(client):
        return {(r.data.params["model"], r.data.params["seed"]):
                (r.data.metrics["final_test_accuracy"],
                 [m.value for m in client.get_metric_history(r.info.run_id, "train_loss")])
                for r in children(client)}
    assert finals(c1) == finals(c2) and len(finals(c2)) == 4


def test_compare_diverging_run_fails_and_the_rest_go_on(tiny, tmp_path, capsys):
    (tmp_path / "exp.toml").write_text('[specs.Big]\nhidden = [300, 300, 300]\nactivation = "relu"\n')
    rc, client = run_compare(tmp_path, "--config", str(tmp_path / "exp.toml"), "--models", "Big",
                             "--seeds", "2", "--workers", "1", "--lr", "1e6")
    assert rc == 1  # a requested run FAILED
    failed = children(client, "FAILED")
    assert len(failed) == 2
    assert "diverged" in failed[0].data.tags["ffnn.failure"]
    assert int(failed[0].data.tags["ffnn.failure_step"]) >= 1
    assert "FAILED" in capsys.readouterr().out


@pytest.mark.parametrize("argv, message", [
    (["--models", "C,Z"], "unknown model 'Z'"),
    (["--seeds", "0"], "seeds must be >= 1"),
    (["--lr", "-1"], "lr must be a number > 0"),
    (["--eval-every", "50"], "eval_every (50) must not exceed iters (30)"),
    (["--batch-size", "601"], "larger than the training set"),
    (["--dataset", "cifar"], "unknown dataset 'cifar'"),
    (["--tracking-uri", "bogus://x"], "tracking URI"),
])
def test_compare_bad_input_is_one_line_and_exit_2(tiny, tmp_path, capsys, argv, message):
    uri = f"sqlite:///{tmp_path}/mlruns/mlflow.db"
    base = ["compare", "--dataset", "tiny", "--data-dir", str(tmp_path / "data"), "--tracking-uri", uri,
            "--no-report", *BUDGET]
    assert cli.main(base + argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_every_finished_run_records_which_test_images_it_got_right(tiny, tmp_path):
    """The ``ffnn.test_correct`` tag: n_test bits whose mean is the run's final test accuracy; none on a failure."""
    import numpy as np

    from ffnn.bits import unpack_correct
    from ffnn.tracking import TAG_TEST_CORRECT
    rc, client = run_compare(tmp_path, "--models", "LR,C", "--seeds", "2", "--workers", "1", "--iters", "5",
                             "--eval-every", "5")  # half-trained: some images right, some wrong
    assert rc == 0
    runs = children(client, "FINISHED")
    assert len(runs) == 4
    bits = {}
    for r in runs:
        correct = unpack_correct(r.data.tags[TAG_TEST_CORRECT])
        assert correct.shape == (200,) and 0 < correct.mean() < 1
        assert abs(correct.mean() * 100 - r.data.metrics["final_test_accuracy"]) <= 1e-9
        bits[r.data.params["model"], r.data.params["seed"]] = correct
    assert not np.array_equal(bits["C", "0"], bits["C", "1"])
    # the logged network's own per-image answers
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path}/mlruns/mlflow.db")
    ds = data.load(tiny, tmp_path / "data")
    run = next(r for r in runs if r.data.params["model"] == "C" and r.data.params["seed"] == "1")
    model = mlflow.pytorch.load_model(f"runs:/{run.info.run_id}/model")
    with torch.no_grad():
        assert np.array_equal(bits["C", "1"], (model(ds.x_test).argmax(1) == ds.y_test).numpy())


def test_a_failed_run_has_no_test_correct_tag(tiny, tmp_path):
    (tmp_path / "exp.toml").write_text('[specs.Big]\nhidden = [300, 300, 300]\nactivation = "relu"\n')
    _, client = run_compare(tmp_path, "--config", str(tmp_path / "exp.toml"), "--models", "Big", "--seeds", "1",
                            "--workers", "1", "--lr", "1e6")
    failed = children(client, "FAILED")
    assert len(failed) == 1 and "ffnn.test_correct" not in failed[0].data.tags


def test_a_test_set_too_large_for_a_tag_is_left_out(tiny, tmp_path, monkeypatch):
    from ffnn import compare
    monkeypatch.setattr(compare, "MAX_TAG_CHARS", 10)  # the tiny test set's 200 bits take 40 characters
    rc, client = run_compare(tmp_path, "--models", "LR", "--seeds", "1", "--workers", "1")
    runs = children(client, "FINISHED")
    assert rc == 0 and len(runs) == 1 and "ffnn.test_correct" not in runs[0].data.tags


def test_memory_caps_cut_stacks_to_what_fits_and_refuse_what_cannot(tiny, tmp_path):
    """A share of memory for 3 seeds of C cuts its 10 seeds into stacks of at most 3; a spec of which
    not even one seed fits is a UserError before anything is created."""
    from ffnn.compare import memory_caps, plan_stacks
    from ffnn.config import CompareConfig
    from ffnn.errors import UserError
    from ffnn.memory import eval_bytes, seed_bytes
    from ffnn.models import REGISTRY, count_params
    from ffnn.train import DivergenceRule, TrainConfig
    from ffnn.train.jobs import Job

    class Ctx:
        device = torch.device("cpu")
        n_test = 200

        def worker_count(self, requested, n_jobs, per_host=False):
            return requested

    cfg = CompareConfig(models=("C",), train=TrainConfig(batch_size=20))
    spec = REGISTRY["C"]
    jobs = [Job("C", spec, TrainConfig(batch_size=20, seed=s)) for s in range(10)]
    room = 4 * count_params(spec) + eval_bytes(spec, 200) + 3 * seed_bytes(spec, 20)
    caps = memory_caps(replace(cfg, workers=1), Ctx(), jobs, available=room)
    assert caps == {"C": 3}
    stacks = plan_stacks(jobs, Ctx.device, 1, DivergenceRule(), caps=caps)
    assert sorted(len(s.seeds) for s in stacks) == [1, 3, 3, 3]
    assert sorted(s for st in stacks for s in st.seeds) == list(range(10))
    with pytest.raises(UserError, match=r"model C \(784-100-10 relu\) needs .* for one seed"):
        memory_caps(replace(cfg, workers=1), Ctx(), jobs, available=room // 10)


def test_an_unexpected_error_is_one_line_exit_1_and_leaves_nothing_running(tiny, tmp_path, capsys, monkeypatch):
    """A fault in the parent after its run exists (here: preparing to log models) ends the parent FAILED
    with the cause, not RUNNING; FFNN_DEBUG=1 adds the traceback."""
    from ffnn.tracking import Tracker

    def broken(self, model, example):
        raise RuntimeError("disk controller on fire\nsecond line")

    monkeypatch.setattr(Tracker, "prepare_model_logging", broken)
    rc, client = run_compare(tmp_path, "--models", "LR", "--seeds", "1", "--workers", "1")
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 1 and err[-1].startswith("ffnn compare: error: RuntimeError: disk controller on fire; 0 run(s) of "
                                          "this comparison are finished and kept; run the same command again")
    assert "Traceback" not in "\n".join(err) and "second line" not in "\n".join(err)
    exp = client.get_experiment_by_name("t")
    parents = client.search_runs([exp.experiment_id], "tags.`ffnn.kind` = 'comparison'")
    assert [p.info.status for p in parents] == ["FAILED"]
    assert not [r for r in client.search_runs([exp.experiment_id], "") if r.info.status == "RUNNING"]
    monkeypatch.setenv("FFNN_DEBUG", "1")
    assert run_compare(tmp_path, "--models", "LR", "--seeds", "1", "--workers", "1")[0] == 1
    assert "Traceback" in capsys.readouterr().err


def test_fault_line_names_a_full_disk_and_its_free_space(tmp_path):
    import errno

    from ffnn.errors import fault_line, mount_point
    full = OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "m" / "model.pth"))
    line = fault_line(full)
    mount = mount_point(tmp_path)
    assert line.startswith(f"no space left on {mount} (") and line.endswith(f" free) while writing {full.filename}")
    assert fault_line(full, writing="run C seed=1").endswith(" free) while writing run C seed=1")
    sqlite_full = RuntimeError("(sqlite3.OperationalError) database or disk is full")
    assert fault_line(sqlite_full, places=[str(tmp_path / "m.db")]).startswith(f"no space left on {mount} (")
    assert fault_line(MemoryError()) == "out of memory: MemoryError"
    assert fault_line(ValueError("bad\nworse")) == "ValueError: bad"
