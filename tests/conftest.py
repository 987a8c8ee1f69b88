"""Shared fixtures: a tiny, learnable IDX dataset written by the test, loaded by the real code."""

from __future__ import annotations

import gzip
import hashlib
import os
from pathlib import Path

import numpy as np
import pytest

from ffnn import data


def write_idx(path: Path, array: np.ndarray) -> None:
    """Write a uint8 array as an IDX file (the MNIST format)."""
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def make_images(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Class k lights up row band k of a 28x28 image, plus noise: easy to learn, not trivial."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, n)
    images = rng.integers(0, 90, (n, 28, 28))
    for i, k in enumerate(labels):
        images[i, 2 + 2 * k: 4 + 2 * k, 4:24] = rng.integers(160, 256, (2, 20))
    return images.astype(np.uint8), labels.astype(np.uint8)


def write_tiny_mirror(folder: Path, n_train: int = 600, n_test: int = 200) -> dict[str, str]:
    """Write the four .gz IDX files into ``folder``; return their uncompressed SHA-256 sums."""
    folder.mkdir(parents=True, exist_ok=True)
    x_train, y_train = make_images(n_train, 1)
    x_test, y_test = make_images(n_test, 2)
    sums = {}
    for name, arr in [("train-images-idx3-ubyte", x_train), ("train-labels-idx1-ubyte", y_train),
                      ("t10k-images-idx3-ubyte", x_test), ("t10k-labels-idx1-ubyte", y_test)]:
        raw = folder / name
        write_idx(raw, arr)
        sums[name] = hashlib.sha256(raw.read_bytes()).hexdigest()
        with open(raw, "rb") as f, gzip.open(folder / f"{name}.gz", "wb") as g:
            g.write(f.read())
        raw.unlink()
    return sums


@pytest.fixture(scope="session", autouse=True)
def _no_user_environment():
    """Tests never read the user's data source or tracking store from the environment."""
    saved = {k: os.environ.pop(k) for k in ("FFNN_DATA_SOURCE", "MLFLOW_TRACKING_URI") if k in os.environ}
    yield
    os.environ.update(saved)


@pytest.fixture
def tiny(tmp_path, monkeypatch) -> data.DatasetSpec:
    """A registered dataset ``tiny`` (600 train, 200 test images) with a mirror at tmp_path/mirror."""
    sums = write_tiny_mirror(tmp_path / "mirror")
    spec = data.DatasetSpec(name="tiny", folder="TINY", sha256=sums, mirrors=(str(tmp_path / "mirror"),))
    monkeypatch.setitem(data.DATASETS, "tiny", spec)
    monkeypatch.delenv("FFNN_DATA_SOURCE", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return spec


# Runs the real CLI in a child process with the test's dataset registered (spawned
# training workers receive the DatasetSpec itself, so they need no registry).
_CLI_WITH_DATASET = """
import json, sys
from ffnn import data
spec = json.loads(sys.argv[1])
spec["mirrors"] = tuple(spec["mirrors"])
data.DATASETS[spec["name"]] = data.DatasetSpec(**spec)
sys.argv[1:] = sys.argv[2:]
from ffnn.cli import main_exit
main_exit()  # as the console script ends
"""


def cli_command(spec: data.DatasetSpec, *argv: str) -> list[str]:
    """argv for ``ffnn ARGV`` in a subprocess that knows ``spec``."""
    import dataclasses
    import json
    import sys
    return [sys.executable, "-c", _CLI_WITH_DATASET, json.dumps(dataclasses.asdict(spec)), *argv]


def tune_toml(experiment: str, n_trials: int, extra: str = "") -> str:
    """A tune file for model C on the tiny dataset with a 30-step budget."""
    return f"""
experiment = "{experiment}"
dataset = "tiny"
models = ["C"]
n_trials = {n_trials}
val_size = 100
{extra}
[train]
batch_size = 20
iters = 30
eval_every = 10
[families.C]
activation = "relu"
depth = 1
width = [4, 32]
lr = [0.05, 1.0]
"""
