"""The redesign changed no number: the default comparison's per-seed accuracies equal a table stored before it."""

import csv
import os
from pathlib import Path

import pytest
from mlflow import MlflowClient

from ffnn import cli

TABLE = Path(__file__).parent / "data" / "default_compare.csv"
SHARED_MNIST = Path(__file__).resolve().parents[1].parent / "shared" / "datasets" / "mnist"


def _mnist_source() -> str | None:
    return os.environ.get("FFNN_DATA_SOURCE") or (str(SHARED_MNIST) if SHARED_MNIST.is_dir() else None)


@pytest.mark.slow
def test_the_default_compare_gives_the_stored_accuracies_seed_for_seed(tmp_path):
    source = _mnist_source()
    if source is None:
        pytest.skip(f"no MNIST files: set FFNN_DATA_SOURCE or put them in {SHARED_MNIST}")
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    assert cli.main(["compare", "--no-report", "--device", "cpu", "--data-dir", str(tmp_path / "data"),
                     "--data-source", source, "--tracking-uri", uri]) == 0
    with open(TABLE, newline="") as f:
        stored = {(r["model"], int(r["seed"])): float(r["test_accuracy"])
                  for r in csv.DictReader(line for line in f if not line.startswith("#"))}
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("compare")
    got = {(r.data.params["model"], int(r.data.params["seed"])): r.data.metrics["test_accuracy"]
           for r in client.search_runs([exp.experiment_id], max_results=1000)
           if r.info.status == "FINISHED" and "mlflow.parentRunId" in r.data.tags}
    assert len(stored) == 30 and got == stored
