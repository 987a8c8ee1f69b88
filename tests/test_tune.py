"""`ffnn tune` end to end on the tiny dataset: Optuna storage and MLflow store under tmp_path, read back
with Optuna's and MLflow's own APIs."""

import json
import shutil
import sqlite3
import statistics
import subprocess

import optuna
import pandas as pd
import pytest
import torch
from conftest import cli_command
from mlflow import MlflowClient

from ffnn import cli, data, tune
from ffnn.models import ModelSpec
from ffnn.tracking import Tracker
from ffnn.train import trials as trials_mod
from ffnn.train.stacked import train_stacked
from ffnn.tune import search

BUDGET = """
[train]
batch_size = 20
iters = 30
eval_every = 10
seed = 0
"""


def write_config(tmp_path, lr="[0.05, 1.0]", extra=""):
    path = tmp_path / "tune.toml"
    path.write_text(f"""
experiment = "t"
final_experiment = "t-compare"
dataset = "tiny"
models = ["C", "D"]
n_trials = 3
val_size = 100
startup_trials = 2
reports_dir = "{tmp_path / 'reports'}"
{extra}
{BUDGET}
[families.C]
activation = "relu"
depth = 1
width = [4, 32]
lr = {lr}

[families.D]
activation = "relu"
depth = 2
width = [4, 16]
shared_width = true
lr = [0.05, 1.0]
""")
    return path


@pytest.fixture(scope="module")
def empty_store(tmp_path_factory):
    """An MLflow SQLite store created once (its migrations take seconds); each test copies it."""
    path = tmp_path_factory.mktemp("store") / "mlflow.db"
    Tracker.open(f"sqlite:///{path}")
    with sqlite3.connect(path) as db:  # WAL mode: move the log into the file, which alone is copied
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    return path


@pytest.fixture
def stores(tmp_path, empty_store, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the report after --final writes to reports/ under the working directory
    shutil.copy(empty_store, tmp_path / "mlflow.db")
    return f"sqlite:///{tmp_path}/mlflow.db", f"sqlite:///{tmp_path}/optuna.db"


def run_tune(tmp_path, stores, *extra, config=None):
    uri, storage = stores
    argv = ["tune", "--config", str(config or write_config(tmp_path)), "--data-dir", str(tmp_path / "data"),
            "--tracking-uri", uri, "--storage", storage, *extra]
    return cli.main(argv)


def mlflow_runs(uri, kind, experiment="t"):
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    return client.search_runs([exp.experiment_id], f"tags.`ffnn.kind` = '{kind}'", max_results=1000)


def check_consistent(study, uri):
    """Every Optuna trial has one MLflow child run of its study's parent, with the matching status."""
    parents = [r for r in mlflow_runs(uri, "study") if r.data.tags["ffnn.study"] == study.study_name]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    children = {r.info.run_id: r for r in mlflow_runs(uri, "trial") if r.data.tags["ffnn.study"] == study.study_name}
    trials = study.get_trials()
    assert len(children) == len(trials)
    for t in trials:
        run = children[t.user_attrs["mlflow_run_id"]]
        assert run.data.tags["mlflow.parentRunId"] == parents[0].info.run_id
        assert run.data.params["trial_number"] == str(t.number)
        assert run.data.tags["ffnn.trial_state"] == t.state.name
        assert run.info.status == tune.MLFLOW_STATUS[t.state.name]
    return parents[0], children


def test_tune_logs_trials_to_optuna_and_nested_mlflow_runs(tiny, tmp_path, stores, monkeypatch):
    seen = []  # what each stack of trials trained and was scored on, and how many seeds it had

    def spy(spec, seeds, lrs, batch_size, iters, eval_every, x_train, y_train, x_eval, y_eval, *args):
        seen.append((x_train, x_eval, len(seeds)))
        return train_stacked(spec, seeds, lrs, batch_size, iters, eval_every, x_train, y_train, x_eval, y_eval, *args)

    train_stacked = trials_mod.train_stacked
    monkeypatch.setattr(trials_mod, "train_stacked", spy)
    assert run_tune(tmp_path, stores, "--workers", "1", "--pruner", "none") == 0
    uri, storage = stores

    study = optuna.load_study(study_name="tune-C", storage=storage)
    trials = study.get_trials()
    assert len(trials) == 3 and {t.state for t in trials} == {optuna.trial.TrialState.COMPLETE}
    for t in trials:
        assert set(t.params) == {"n_units_l0", "lr"} and 0.05 <= t.params["lr"] <= 1.0
        assert sorted(t.intermediate_values) == [10, 20, 30] and t.value == t.intermediate_values[30]
    shared = optuna.load_study(study_name="tune-D", storage=storage).trials[0]
    assert set(shared.params) == {"n_units", "lr"}

    parent, children = check_consistent(study, uri)
    assert parent.info.run_name == "study C" and parent.data.params["val_size"] == "100"
    t = study.best_trial
    run = children[t.user_attrs["mlflow_run_id"]]
    assert run.info.run_name == f"study C trial {t.number}"
    assert run.data.params["model"] == "C" and run.data.params["hidden_sizes"] == str(t.params["n_units_l0"])
    assert run.data.params["n_units_l0"] == str(t.params["n_units_l0"])
    assert float(run.data.params["lr"]) == t.params["lr"] and run.data.params["iters"] == "30"
    client = MlflowClient(uri)
    history = client.get_metric_history(run.info.run_id, "val_accuracy")
    assert [(m.step, m.value) for m in history] == sorted(t.intermediate_values.items())
    assert run.data.metrics["final_val_accuracy"] == t.value

    out = tmp_path / "reports" / "tune-C"
    best = json.loads((out / "best_params.json").read_text())
    assert best["params"] == study.best_params and best["val_accuracy"] == study.best_value
    assert (out / "plots.html").stat().st_size > 1_000_000  # plotly.js inside: opens offline
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"best_params.json", "trials.csv", "plots.html"} <= artifacts

    # the objective never saw the test set: trained and scored on disjoint parts of the training set
    ds = data.load(tiny, tmp_path / "data")
    rows = lambda x: {tuple(r.tolist()) for r in x}  # noqa: E731
    train_rows, test_rows = rows(ds.x_train), rows(ds.x_test)
    assert sum(n for *_, n in seen) == 6  # 3 trials of each study, one seed each
    for x_fit, x_val, _ in seen:
        x_fit = x_fit.float() / 255 if x_fit.dtype == torch.uint8 else x_fit  # gathered as pixels, as compare does
        assert len(x_val) == 100 and len(x_fit) == 500
        assert rows(x_val) <= train_rows and not rows(x_val) & test_rows and not rows(x_val) & rows(x_fit)
        assert torch.equal(x_val, seen[0][1])  # the same validation images for every trial


def test_tune_prunes_diverged_and_failed_trials_and_goes_on(tiny, tmp_path, stores, monkeypatch):
    uri, storage = stores
    study = optuna.create_study(study_name="tune-C", storage=storage, direction="maximize")
    for params in ({"n_units_l0": 32, "lr": 0.5}, {"n_units_l0": 16, "lr": 0.5},  # the median to beat
                   {"n_units_l0": 4, "lr": 1e-3},  # learns nothing by step 10: pruned
                   {"n_units_l0": 8, "lr": 1e20},  # loss NaN at step 2
                   {"n_units_l0": 8, "lr": 0.25}):  # raises, below
        study.enqueue_trial(params)

    def flaky(spec, seeds, lrs, *args, **kwargs):
        if 0.25 in lrs:
            raise RuntimeError("out of memory, say")
        return train_stacked(spec, seeds, lrs, *args, **kwargs)

    train_stacked = trials_mod.train_stacked
    monkeypatch.setattr(trials_mod, "train_stacked", flaky)
    config = write_config(tmp_path, lr="[1e-3, 1e20]")
    # one trial at a time, so that each sees the ones before it finished
    assert run_tune(tmp_path, stores, "--model", "C", "--n-trials", "6", "--workers", "1", "--trial-batch", "1",
                    config=config) == 0

    trials = optuna.load_study(study_name="tune-C", storage=storage).get_trials()
    states = [t.state.name for t in trials]
    assert len(trials) == 6 and states[:5] == ["COMPLETE", "COMPLETE", "PRUNED", "PRUNED", "FAIL"]
    assert "MedianPruner at iteration 10" in trials[2].user_attrs["pruned"]
    assert list(trials[2].intermediate_values) == [10]
    assert trials[3].user_attrs["failure"].startswith("diverged: training loss became")  # nan or inf
    assert trials[4].user_attrs["failure"] == "RuntimeError: out of memory, say"
    assert states[5] != "RUNNING"  # the study went on after them

    _, children = check_consistent(optuna.load_study(study_name="tune-C", storage=storage), uri)
    diverged = children[trials[3].user_attrs["mlflow_run_id"]]
    assert diverged.info.status == "KILLED" and diverged.data.tags["ffnn.failure"].startswith("diverged")
    assert diverged.data.tags["ffnn.stopped_step"] == "2"
    assert children[trials[4].user_attrs["mlflow_run_id"]].info.status == "FAILED"


def test_tune_resume_adds_trials_to_the_same_study_and_parent_run(tiny, tmp_path, stores):
    uri, _ = stores
    journal = str(tmp_path / "optuna.journal")  # a journal file instead of a database, as --storage takes
    for _ in range(2):
        assert run_tune(tmp_path, (uri, journal), "--model", "C", "--n-trials", "2", "--workers", "1") == 0
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(journal))
    study = optuna.load_study(study_name="tune-C", storage=storage)
    assert len(study.trials) == 4
    assert study.trials[2].params != study.trials[0].params  # the resumed sampler does not replay the first run
    check_consistent(study, uri)
    # another budget would mix incomparable trials in one study: refused, naming the field
    assert run_tune(tmp_path, (uri, journal), "--model", "C", "--n-trials", "1", "--iters", "20") == 2
    assert len(optuna.load_study(study_name="tune-C", storage=storage).trials) == 4


@pytest.mark.slow
def test_tune_worker_processes_and_invocations_share_a_study_without_losing_trials(tiny, tmp_path, stores):
    uri, storage = stores
    argv = ["tune", "--config", str(write_config(tmp_path)), "--data-dir", str(tmp_path / "data"),
            "--tracking-uri", uri, "--storage", storage, "--model", "C", "--pruner", "hyperband"]
    data.prepare(tiny, tmp_path / "data")  # as `make data` does, before either starts
    # at once: one invocation with two training processes, another with one, on the same SQLite stores
    procs = [subprocess.Popen(cli_command(tiny, *argv, *extra), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                              text=True)
             for extra in (["--workers", "2", "--n-trials", "4"], ["--workers", "1", "--n-trials", "2"])]
    errors = [p.communicate(timeout=300)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], errors
    assert not any("locked" in e for e in errors)
    study = optuna.load_study(study_name="tune-C", storage=storage)
    assert sorted(t.number for t in study.trials) == list(range(6))
    assert all(t.state.is_finished() for t in study.trials)
    owners = [t.user_attrs["owner"] for t in study.trials]
    assert sorted(owners.count(o) for o in set(owners)) == [2, 4]  # each invocation told its own trials
    check_consistent(study, uri)  # and one parent run, though both started at once


def test_tune_final_logs_tuned_and_tutorial_models_as_comparison_runs(tiny, tmp_path, stores):
    uri, storage = stores
    assert run_tune(tmp_path, stores, "--model", "C", "--n-trials", "2", "--workers", "1") == 0
    assert run_tune(tmp_path, stores, "--model", "C", "--n-trials", "0", "--final", "--seeds", "2",
                    "--workers", "1") == 0
    best = optuna.load_study(study_name="tune-C", storage=storage).best_trial
    runs = mlflow_runs(uri, "run", experiment="t-compare")
    by_model = {m: [r for r in runs if r.data.params["model"] == m] for m in ("C", "C*")}
    assert all(len(v) == 2 and {r.info.status for r in v} == {"FINISHED"} for v in by_model.values())
    tuned = by_model["C*"][0].data.params
    assert tuned["hidden_sizes"] == str(best.params["n_units_l0"]) and float(tuned["lr"]) == best.params["lr"]
    assert by_model["C"][0].data.params["hidden_sizes"] == "100" and by_model["C"][0].data.params["lr"] == "0.1"


def test_split_validation_is_fixed_disjoint_and_from_the_training_set():
    x = torch.arange(50).float().reshape(50, 1)
    y = torch.arange(50)
    x_fit, y_fit, x_val, y_val = data.split_validation(x, y, 10, seed=3)
    assert len(x_val) == 10 and len(x_fit) == 40
    assert sorted(y_fit.tolist() + y_val.tolist()) == list(range(50))
    assert torch.equal(x_val[:, 0].long(), y_val)  # rows stay paired with their labels
    assert torch.equal(data.split_validation(x, y, 10, seed=3)[3], y_val)
    assert not torch.equal(data.split_validation(x, y, 10, seed=4)[3], y_val)
    with pytest.raises(data.DataError, match="val_size"):
        data.split_validation(x, y, 50)


@pytest.mark.parametrize("extra, message", [
    (["--model", "Z"], "unknown family 'Z'"),
    (["--study-name", "mine"], "put {model} in it"),
    (["--n-trials", "-1"], "n_trials must be >= 0"),
])
def test_tune_bad_arguments_exit_2_with_one_line(tiny, tmp_path, stores, capsys, extra, message):
    assert run_tune(tmp_path, stores, *extra) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]


def test_tune_toml_families_match_the_tutorial_models():
    from pathlib import Path

    from ffnn.config import build_tune_config, read_toml
    from ffnn.models import REGISTRY
    cfg = build_tune_config(read_toml(Path(__file__).parents[1] / "experiments" / "tune.toml"), {})
    assert cfg.models == ("A", "B", "C", "D", "E") and cfg.n_trials == 30 and cfg.train.iters == 3000
    assert cfg.val_size == 10_000 and cfg.pruner == "median" and cfg.storage == "sqlite:///mlruns/optuna.db"
    assert cfg.trial_seeds == 1 and cfg.trial_batch == 0 and cfg.sampler_seed == 0 and cfg.studies == 1
    for name in cfg.models:
        family, spec = cfg.families[name], REGISTRY[name]
        assert (family.activation, family.depth) == (spec.activation, len(spec.hidden))
        assert family.width[0] <= 100 <= family.width[1] and family.lr[0] <= 0.1 <= family.lr[1]


def test_a_trial_is_the_stacked_trainer_on_its_seeds_and_stores_each_seed(tiny, tmp_path, stores):
    """--trial-seeds 2: each trial trains seeds 0 and 1 exactly as the stacked trainer does; the objective and
    the values the pruner sees are their means; the seeds' values and spread are on the trial and its run."""
    uri, storage = stores
    assert run_tune(tmp_path, stores, "--model", "C", "--n-trials", "2", "--workers", "1", "--pruner", "none",
                    "--trial-seeds", "2") == 0
    ds = data.load(tiny, tmp_path / "data")
    x_fit, y_fit, x_val, y_val = data.split_validation(ds.pixels_train, ds.y_train, 100, 0)
    study = optuna.load_study(study_name="tune-C", storage=storage)
    _, children = check_consistent(study, uri)
    for t in study.trials:
        spec, lr = ModelSpec((t.params["n_units_l0"],), "relu"), t.params["lr"]
        want = train_stacked(spec, [0, 1], [lr, lr], 20, 30, 10, x_fit, y_fit, x_val.float() / 255, y_val).seeds
        per_seed = [r.accuracy for r in want]
        assert t.state.name == "COMPLETE" and t.user_attrs["val_accuracy_per_seed"] == per_seed
        assert t.value == statistics.fmean(per_seed) and t.user_attrs["val_accuracy_sd"] == statistics.stdev(per_seed)
        assert t.intermediate_values == {s: statistics.fmean([a, b]) for (s, a), (_, b) in
                                         zip(want[0].history, want[1].history)}
        run = children[t.user_attrs["mlflow_run_id"]]
        assert json.loads(run.data.tags["ffnn.val_accuracy_per_seed"]) == per_seed
        assert [run.data.metrics[f"final_val_accuracy_seed{s}"] for s in (0, 1)] == per_seed
        assert run.data.metrics["val_accuracy_sd"] == t.user_attrs["val_accuracy_sd"]
        assert run.data.params["trial_seeds"] == "2"


def test_a_sampler_seed_samples_the_same_configurations_on_a_fresh_study(tiny, tmp_path, stores, monkeypatch):
    monkeypatch.setattr(search, "TPE_STARTUP", 2)  # so that TPE, not its random start, samples trials 2-5
    storage = stores[1]

    def sampled(name, seed):
        assert run_tune(tmp_path, stores, "--model", "C", "--n-trials", "6", "--workers", "1", "--trial-batch", "2",
                        "--sampler-seed", str(seed), "--study-name", name) == 0
        return [(t.params, t.state) for t in optuna.load_study(study_name=name, storage=storage).trials]

    first = sampled("first", 3)
    assert sampled("again", 3) == first
    assert [p for p, _ in sampled("other", 4)] != [p for p, _ in first]
    # processes sharing a study draw each trial with the seed of its own number
    assert len({tune.trial_seed(3, n) for n in range(1000)} | {tune.trial_seed(4, n) for n in range(1000)}) == 2000


def test_replicate_studies_have_their_own_names_sampler_seeds_and_one_parent_run(tiny, tmp_path, stores):
    """--studies 2: study 1 keeps its name and sampler seed (a store from before goes on), study 2 is
    tune-C-s2 with a seed of its own; both parent runs are children of the family's run; --final retrains
    each study's best as C* and C*s2, each run tagged with its study's budget."""
    uri, storage = stores
    assert run_tune(tmp_path, stores, "--model", "C,D", "--n-trials", "3", "--workers", "1", "--studies", "2",
                    "--pruner", "none", "--sampler", "random", "--sampler-seed", "5", "--final", "--seeds", "2") == 0
    studies = [optuna.load_study(study_name=n, storage=storage) for n in ("tune-C", "tune-C-s2")]
    assert [s.user_attrs["ffnn_study"] for s in studies] == [{"index": 1, "sampler_seed": 5},
                                                             {"index": 2, "sampler_seed": search.study_seed(5, 2)}]
    assert [t.params for t in studies[0].trials] != [t.params for t in studies[1].trials]
    assert all(len(s.trials) == 3 and s.user_attrs["ffnn_wall_seconds"] > 0 for s in studies)
    [family] = [r for r in mlflow_runs(uri, "studies") if r.data.tags["ffnn.model"] == "C"]
    assert family.info.status == "FINISHED" and family.data.tags["ffnn.studies"] == "2"
    for s, k in zip(studies, (1, 2)):
        parent, _ = check_consistent(s, uri)
        assert parent.data.tags["mlflow.parentRunId"] == family.info.run_id
        assert parent.data.tags["ffnn.study_index"] == str(k)
        assert parent.data.tags["ffnn.sampler_seed"] == str(search.study_seed(5, k))
    runs = mlflow_runs(uri, "run", experiment="t-compare")
    by_model = {m: [r for r in runs if r.data.params["model"] == m] for m in ("C", "C*", "C*s2")}
    assert all(len(v) == 2 for v in by_model.values())
    for name, s in (("C*", studies[0]), ("C*s2", studies[1])):
        budget = json.loads(by_model[name][0].data.tags["ffnn.tuned_by"])
        best = s.best_trial
        assert budget["study"] == s.study_name and budget["trials"] == 3 and budget["best_trial"] == best.number
        assert budget["top"] == sorted((round(t.value, 4) for t in s.trials), reverse=True)
        assert by_model[name][0].data.params["hidden_sizes"] == str(best.params["n_units_l0"])
    # the report at the end decides C* -> D* over the two searches of each, with their budgets
    step = pd.read_csv(tmp_path / "reports" / "t-compare" / "comparisons.csv").set_index(["a", "b"]).loc[("C*", "D*")]
    assert (step["reading"], step["n_studies"], step["n_a"], step["n_b"]) == ("architecture", 2, 2, 2)
    assert step["budget"] == "equal budgets: 3 trials of 30 steps per study"
    summary = pd.read_csv(tmp_path / "reports" / "t-compare" / "summary.csv").set_index("model")
    assert summary.loc[["C*", "C*s2", "D*", "D*s2"], "trials"].tolist() == [3, 3, 3, 3]
    # run again with one study: study 1 and its parent run go on where they were
    assert run_tune(tmp_path, stores, "--model", "C", "--n-trials", "1", "--workers", "1", "--sampler", "random",
                    "--sampler-seed", "5") == 0
    assert len(optuna.load_study(study_name="tune-C", storage=storage).trials) == 4
    assert len(mlflow_runs(uri, "study")) == 4


def test_study_seeds_differ_between_studies_and_study_one_keeps_the_seed():
    assert search.study_seed(7, 1) == 7
    seeds = {search.study_seed(b, k) for b in range(50) for k in range(2, 12)}
    assert len(seeds) == 500 and not seeds & set(range(50))
    cfg = search.replicate(tune_config(), 3)
    assert cfg.name_of("C") == "tune-C-s3" and cfg.sampler_seed == search.study_seed(0, 3)
    assert search.replicate(tune_config(), 1) == tune_config()


def tune_config(**overrides):
    from pathlib import Path

    from ffnn.config import build_tune_config, read_toml
    return build_tune_config(read_toml(Path(__file__).parents[1] / "experiments" / "tune.toml"), overrides)
