"""Any dataset: scikit-learn's digits, .npz files (checked, each problem one line and exit 2 with nothing
written), and models, trainers and MLflow records whose sizes come from the data."""

from __future__ import annotations

import hashlib
import pickle
import re
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch
from mlflow import MlflowClient
from mlflow.models import get_model_info

from ffnn import cli, datasets
from ffnn.config import ConfigError, build_compare_config
from ffnn.context import Context
from ffnn.data import DataError
from ffnn.models import REGISTRY, ModelSpec, build_model, parse_describe
from ffnn.train import TrainConfig, train
from ffnn.train.stacked import train_stacked


def blobs(n: int, rng: np.random.Generator, features: int = 5, classes: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """Gaussian blobs, one per class: learnable in a few steps."""
    centres = np.random.default_rng(0).normal(0, 3, (classes, features))
    y = np.arange(n) % classes
    return (centres[y] + rng.normal(0, 1, (n, features))).astype(np.float32), y


def write_npz(path, **replace) -> str:
    rng = np.random.default_rng(1)
    x_train, y_train = blobs(150, rng)
    x_test, y_test = blobs(60, rng)
    arrays = {"x_train": x_train, "y_train": y_train, "x_test": x_test, "y_test": y_test, **replace}
    np.savez(path, **{k: v for k, v in arrays.items() if v is not None})
    return str(path)


# ---------------------------------------------------------------- digits
def test_digits_are_sklearns_8x8_images_with_every_fifth_one_the_test_set():
    source, path, shape = datasets.resolve("digits")
    assert shape == datasets.Shape(1437, 360, 64, 10) and path.name == "digits.csv.gz"
    x_train, y_train, x_test, y_test = source.arrays()
    from sklearn.datasets import load_digits
    d = load_digits()
    assert np.array_equal(x_test, (d.data[::5] / 16).astype(np.float32)) and np.array_equal(y_test, d.target[::5])
    assert np.array_equal(y_train, np.delete(d.target, np.arange(0, len(d.target), 5)))
    assert x_train.min() == 0 and x_train.max() == 1 and x_train.dtype == np.float32
    assert datasets.digits_spec().digest == source.digest and len(source.digest) == 64
    assert pickle.loads(pickle.dumps(source)) == source  # what a spawned training process receives


def test_context_sizes_every_spec_to_the_data(tmp_path):
    ctx = Context.build("digits", str(tmp_path), None, "cpu", None)
    assert (ctx.n_features, ctx.n_classes, ctx.n_train, ctx.n_test) == (64, 10, 1437, 360)
    cfg = ctx.bind(build_compare_config({}, {"dataset": "digits", "models": "LR,D"}))
    assert cfg.spec("D").describe() == "64-100-100-10 relu" and cfg.spec("LR").sizes == [64, 10]
    assert ctx.input_example().shape == (5, 64) and not (tmp_path / "MNIST").exists()


def test_compare_on_digits_logs_models_that_take_64_inputs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path}/mlruns/mlflow.db"
    assert cli.main(["compare", "--dataset", "digits", "--models", "LR,C", "--seeds", "1", "--workers", "1",
                     "--iters", "30", "--eval-every", "10", "--tracking-uri", uri, "--experiment", "d",
                     "--no-report"]) == 0
    client = MlflowClient(uri)
    run = next(r for r in client.search_runs([client.get_experiment_by_name("d").experiment_id],
                                             "tags.`ffnn.kind` = 'run'") if r.data.params["model"] == "C")
    assert run.data.params["dataset"] == "digits" and run.data.params["n_params"] == str(64 * 100 + 100 + 1010)
    mlflow.set_tracking_uri(uri)
    sig = get_model_info(f"runs:/{run.info.run_id}/model").signature
    assert sig.inputs.to_dict()[0]["tensor-spec"]["shape"] == (-1, 64)
    net = mlflow.pytorch.load_model(f"runs:/{run.info.run_id}/model")
    assert net(torch.rand(3, 64)).shape == (3, 10)


def test_tune_on_digits_holds_out_a_sixth_and_sizes_its_trials_to_64_inputs(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "tune.toml").write_text('dataset = "digits"\nmodels = ["C"]\nval_size = 0.1666667\n'
                                        '[train]\niters = 20\neval_every = 10\nbatch_size = 50\n'
                                        '[families.C]\ndepth = 1\nwidth = [8, 32]\nlr = [0.05, 0.5]\n')
    uri = f"sqlite:///{tmp_path}/mlruns/mlflow.db"
    assert cli.main(["tune", "--config", str(tmp_path / "tune.toml"), "--n-trials", "2", "--workers", "1",
                     "--storage", str(tmp_path / "journal.log"), "--tracking-uri", uri]) == 0
    assert "validation: 240 of 1437 training examples" in capsys.readouterr().err
    client = MlflowClient(uri)
    trials = client.search_runs([client.get_experiment_by_name("tune").experiment_id], "tags.`ffnn.kind` = 'trial'")
    assert len(trials) == 2 and all(r.data.tags["ffnn.spec"].startswith("64-") for r in trials)
    assert all(r.data.params["dataset"] == "digits" for r in trials)


# ---------------------------------------------------------------- .npz files
def test_npz_with_5_features_and_3_classes_runs_compare_and_report_end_to_end(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = write_npz(tmp_path / "blobs.npz")
    digest = hashlib.sha256(Path(path).read_bytes()).hexdigest()
    uri = f"sqlite:///{tmp_path}/mlruns/mlflow.db"
    assert cli.main(["compare", "--dataset", path, "--models", "LR,C,D", "--seeds", "3", "--workers", "1",
                     "--iters", "40", "--eval-every", "20", "--batch-size", "30", "--tracking-uri", uri,
                     "--experiment", "b"]) == 0
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("b").experiment_id], "tags.`ffnn.kind` = 'run'")
    assert len(runs) == 9 and {r.info.status for r in runs} == {"FINISHED"}
    run = next(r for r in runs if r.data.params["model"] == "D")
    assert run.data.params["dataset"] == f"blobs-{digest[:12]}" and run.data.tags["ffnn.dataset_sha256"] == digest
    (inp,) = run.inputs.dataset_inputs
    assert inp.dataset.digest == digest[:36] and f'"sha256": "{digest}"' in inp.dataset.profile
    assert str(tmp_path / "blobs.npz") in inp.dataset.source
    mlflow.set_tracking_uri(uri)
    info = get_model_info(f"runs:/{run.info.run_id}/model")
    assert info.signature.inputs.to_dict()[0]["tensor-spec"]["shape"] == (-1, 5)
    assert info.signature.outputs.to_dict()[0]["tensor-spec"]["shape"] == (-1, 3)
    summary = pd.read_csv(tmp_path / "reports" / "b" / "summary.csv").set_index("model")
    assert summary.loc["D", "spec"] == "5-100-100-3 relu"
    assert summary.loc["D", "n_params"] == 5 * 100 + 100 + 10100 + 303
    assert summary.loc["C", "mean"] > 100 / 3 + 20  # it learned: far above a 3-class guess


@pytest.mark.parametrize("arrays, message", [
    ({"y_test": None}, "missing array y_test; an .npz dataset holds x_train, y_train, x_test, y_test"),
    ({"x_train": np.zeros((150, 5, 2), np.float32)}, r"x_train must be 2-D \(examples, features\), got shape"),
    ({"y_train": np.zeros(149, int)}, "y_train has 149 labels for the 150 examples of x_train"),
    ({"x_test": np.zeros((60, 4), np.float32)}, "x_test has 4 features, x_train 5"),
    ({"y_test": np.full(60, 3)}, r"y_test: label 3 is out of range 0..2"),
    ({"y_train": np.r_[-1, np.arange(149) % 3]}, "y_train: labels must be 0, 1, ..., K-1, found -1"),
    ({"y_train": np.arange(150) % 3 * 2}, "labels must be 0, 1, ..., 4 with each present; 1 never occurs"),
    ({"y_train": (np.arange(150) % 3).astype(float)}, "y_train must hold integer class labels, got dtype float64"),
    ({"x_train": np.full((150, 5), np.nan, np.float32)}, "x_train holds NaN or infinite values"),
])
def test_malformed_npz_is_one_line_exit_2_and_nothing_written(tmp_path, monkeypatch, capsys, arrays, message):
    monkeypatch.chdir(tmp_path)
    path = write_npz(tmp_path / "bad.npz", **arrays)
    store = tmp_path / "store"
    assert cli.main(["compare", "--dataset", path, "--tracking-uri", f"sqlite:///{store}/mlflow.db",
                     "--experiment", "x", "--workers", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"ffnn compare: error: {path}: ")
    assert re.search(message, err[0]), err[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.npz"]  # no store, no report, no data folder


def test_a_file_that_is_not_an_npz_or_is_missing_is_one_line(tmp_path):
    (tmp_path / "text.npz").write_text("x_train,y_train\n")
    with pytest.raises(DataError, match="not an .npz file"):
        datasets.resolve(str(tmp_path / "text.npz"))
    with pytest.raises(DataError, match="no such file"):
        datasets.resolve(str(tmp_path / "absent.npz"))
    with pytest.raises(ConfigError, match="unknown dataset 'cifar'; known: mnist, fashion-mnist, digits"):
        build_compare_config({}, {"dataset": "cifar"})


def test_tune_refuses_a_malformed_npz_before_any_store(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    path = write_npz(tmp_path / "bad.npz", y_test=np.full(60, 7))
    tune_toml = Path(__file__).resolve().parents[1] / "experiments" / "tune.toml"
    assert cli.main(["tune", "--config", str(tune_toml), "--dataset", path,
                     "--model", "C", "--n-trials", "1", "--storage", str(tmp_path / "journal.log"),
                     "--tracking-uri", f"sqlite:///{tmp_path}/store/mlflow.db"]) == 2
    assert "y_test: label 7 is out of range" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.npz"]


# ---------------------------------------------------------------- sizes from the data
def test_a_spec_takes_its_sizes_from_the_data_and_says_them():
    spec = REGISTRY["D"].sized(5, 3)
    assert spec.sizes == [5, 100, 100, 3] and spec.describe() == "5-100-100-3 relu"
    assert parse_describe(spec.describe()) == (5, 3) and parse_describe("784-10") == (784, 10)
    assert parse_describe("nan") is None
    assert build_model(spec)(torch.zeros(2, 5)).shape == (2, 3)
    assert REGISTRY["D"].sizes == [784, 100, 100, 10]  # the tutorial's models, as the tutorial wrote them


def test_stacked_trainer_matches_the_single_run_loop_on_5_features_and_3_classes():
    torch.set_num_threads(1)
    rng = np.random.default_rng(2)
    x, y = (torch.from_numpy(a) for a in blobs(200, rng))
    xe, ye = (torch.from_numpy(a) for a in blobs(60, rng))
    spec = ModelSpec((16, 16), "tanh").sized(5, 3)
    res = train_stacked(spec, [0, 1, 2], [0.1] * 3, 20, 30, 10, x, y, xe, ye)
    for seed in (0, 2):
        losses: list[tuple[int, float]] = []
        ref = train(spec, TrainConfig(lr=0.1, batch_size=20, iters=30, eval_every=10, seed=seed), x, y, xe, ye,
                    lambda p, out=losses: out.extend(p.losses))
        got = res.seeds[seed]
        assert max(abs(a[1] - b[1]) for a, b in zip(got.losses, losses)) < 1e-5 and len(got.losses) == 30
        assert got.accuracy == pytest.approx(ref.accuracy, abs=100 / 60 + 1e-9)  # at most one example apart
        assert got.state_dict["4.weight"].shape == (3, 16)
