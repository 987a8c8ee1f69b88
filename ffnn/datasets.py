"""``--dataset NAME`` -> the data it names, its shape, and the data loaded: any dataset, not only MNIST.

- ``mnist``, ``fashion-mnist`` (and any other ``data.DATASETS`` entry): IDX files verified by checksum
  (``data.py``), loaded exactly as before.
- ``digits``: scikit-learn's bundled 8x8 digits (1797 images, 64 inputs, pixel values 0-16 scaled to
  [0, 1]), no download. The split is fixed: every fifth image (rows 0, 5, 10, ..., 1795: 360) is the
  test set, the other 1437 train; the rule is part of the digest.
- a path ending in ``.npz``: arrays ``x_train, y_train, x_test, y_test``, any number of features and
  classes, as given (no scaling). Shapes, dtypes and labels are checked here, each problem in one line
  (a ``DataError``: exit 2, before any store is touched); the file's SHA-256 is the digest.

Input size and class count come from the data: ``Shape`` is what a command binds its model specs to.
"""

from __future__ import annotations

import hashlib
import zipfile
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np
import torch

from . import data as data_mod
from .data import DataError, Dataset, DatasetSpec

NPZ_KEYS = ("x_train", "y_train", "x_test", "y_test")
DIGITS = "digits"
DIGITS_TEST_EVERY = 5  # rows 0, 5, 10, ... of scikit-learn's digits are the test set
DIGITS_SCALE = 16.0  # the digits' largest pixel value: x / 16 is in [0, 1], as MNIST's x / 255


@dataclass(frozen=True)
class ArraySpec:
    """A dataset held as arrays in one file: scikit-learn's digits or an .npz file."""

    name: str  # as runs record it: "digits", or "<file stem>-<first 12 hex digits of its SHA-256>"
    kind: str  # "digits" or "npz"
    path: str  # the file the arrays come from (digits: scikit-learn's bundled digits.csv.gz)
    digest: str  # SHA-256 (npz: of the file; digits: of the bundled file and the split rule)

    def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """x_train (N, F) float32 as the models take it, y_train (N,) int64, x_test, y_test; checked."""
        if self.kind == DIGITS:
            return _digits_arrays()
        return _npz_arrays(Path(self.path))

    def load(self, device: torch.device | str = "cpu") -> Dataset:
        x_train, y_train, x_test, y_test = self.arrays()

        def t(a: np.ndarray) -> torch.Tensor:
            return torch.from_numpy(a).to(device)
        return Dataset(self.name, self.digest, t(x_train), t(y_train), t(x_test), t(y_test), self.path)


Source = DatasetSpec | ArraySpec


@dataclass(frozen=True)
class Shape:
    """What a dataset looks like to a model and to the checks before training."""

    n_train: int  # training examples
    n_test: int  # test examples
    n_features: int  # inputs per example
    n_classes: int  # labels are 0 .. n_classes - 1


def is_npz(name: str) -> bool:
    return name.lower().endswith(".npz")


def check_name(name: object) -> str:
    """A ``--dataset`` value that can name a dataset (an .npz file is opened later, by ``resolve``).

    ``check_name("digits") == "digits"``
    """
    if isinstance(name, str) and (name in data_mod.DATASETS or name == DIGITS or is_npz(name)):
        return name
    known = ", ".join([*data_mod.DATASETS, DIGITS])
    raise DataError(f"unknown dataset {name!r}; known: {known}, or a path to an .npz file "
                    f"(x_train, y_train, x_test, y_test)")


def resolve(name: str, data_dir: str | Path = data_mod.DEFAULT_DATA_DIR,
            source: str | Path | None = None) -> tuple[Source, Path, Shape]:
    """The dataset ``name`` names, verified: its source, the file or folder it lives in, and its shape.

    IDX datasets are fetched into ``data_dir`` if needed (``data.prepare``); array files are read and
    checked whole (they are small enough to hold twice).
    """
    check_name(name)
    if name in data_mod.DATASETS:
        spec = data_mod.get_spec(name)
        folder = data_mod.prepare(spec, data_dir, source)
        return spec, folder, idx_shape(folder)
    spec_a = digits_spec() if name == DIGITS else npz_spec(Path(name))
    x_train, y_train, x_test, _ = spec_a.arrays()
    return spec_a, Path(spec_a.path), Shape(len(x_train), len(x_test), x_train.shape[1], int(y_train.max()) + 1)


def load(source: Source, data_dir: str | Path = data_mod.DEFAULT_DATA_DIR, device: torch.device | str = "cpu",
         verify: bool = True) -> Dataset:
    """The whole dataset on ``device`` (``verify=False``: IDX files this process tree has just verified)."""
    if isinstance(source, ArraySpec):
        return source.load(device)
    return data_mod.load(source, data_dir, device=device, verify=verify)


def input_example(source: Source, folder: Path, rows: int = 5) -> np.ndarray:
    """The first test examples as the models take them: (rows, features) float32, MLflow's input example."""
    if isinstance(source, ArraySpec):
        return np.ascontiguousarray(source.arrays()[2][:rows])
    images = data_mod.read_idx(folder / "t10k-images-idx3-ubyte")[:rows]
    return images.reshape(len(images), -1).astype(np.float32) / np.float32(255)


def idx_shape(folder: Path) -> Shape:
    """An IDX dataset's shape from its headers and its training labels, without reading the images."""
    with open(folder / "train-images-idx3-ubyte", "rb") as f:
        head = f.read(16)
    ndim = head[3]
    dims = [int.from_bytes(head[4 + 4 * i: 8 + 4 * i], "big") for i in range(min(ndim, 3))]
    labels = data_mod.read_idx(folder / "train-labels-idx1-ubyte")
    return Shape(data_mod.count_examples(folder), data_mod.count_examples(folder, "t10k-labels-idx1-ubyte"),
                 int(np.prod(dims[1:])), int(labels.max()) + 1)


# ---------------------------------------------------------------- digits
def _digits_file() -> Path:
    return Path(str(resources.files("sklearn.datasets") / "data" / "digits.csv.gz"))


def digits_spec() -> ArraySpec:
    path = _digits_file()
    if not path.is_file():
        raise DataError(f"digits: scikit-learn's bundled file {path} is missing (pip install scikit-learn)")
    rule = f"test = rows 0, {DIGITS_TEST_EVERY}, {2 * DIGITS_TEST_EVERY}, ...; x / {DIGITS_SCALE:g}"
    digest = hashlib.sha256(f"{data_mod.sha256_file(path)}  {rule}\n".encode()).hexdigest()
    return ArraySpec(DIGITS, DIGITS, str(path), digest)


def _digits_arrays() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = (bunch.data / DIGITS_SCALE).astype(np.float32)  # (1797, 64)
    y = bunch.target.astype(np.int64)
    test = np.arange(len(x)) % DIGITS_TEST_EVERY == 0
    return x[~test], y[~test], x[test], y[test]


# ---------------------------------------------------------------- .npz files
def npz_spec(path: Path) -> ArraySpec:
    """An .npz dataset, checked whole (``DataError`` on the first problem); named after the file and its hash."""
    if not path.is_file():
        raise DataError(f"--dataset {path}: no such file")
    _npz_arrays(path)
    digest = data_mod.sha256_file(path)
    return ArraySpec(f"{path.stem}-{digest[:12]}", "npz", str(path.resolve()), digest)


def _npz_arrays(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    if not zipfile.is_zipfile(path):  # an .npz is a zip of .npy files
        raise DataError(f"{path}: not an .npz file (not a zip archive); save one with "
                        f"numpy.savez(path, {'=..., '.join(NPZ_KEYS)}=...)")
    try:
        z = np.load(path, allow_pickle=False)
        with z:
            missing = [k for k in NPZ_KEYS if k not in z.files]
            if missing:
                raise DataError(f"{path}: missing array{'s' * (len(missing) > 1)} {', '.join(missing)}; an .npz "
                                f"dataset holds {', '.join(NPZ_KEYS)}")
            arrays = {k: z[k] for k in NPZ_KEYS}
    except DataError:
        raise
    except ValueError as e:  # pickled data and object arrays are refused
        raise DataError(f"{path}: cannot read ({str(e).splitlines()[0]}); store plain numeric arrays") from None
    except (OSError, EOFError, KeyError, zipfile.BadZipFile) as e:  # truncated, damaged
        raise DataError(f"{path}: not a readable .npz file ({str(e).splitlines()[0] or type(e).__name__})") from None
    return check_arrays(str(path), arrays["x_train"], arrays["y_train"], arrays["x_test"], arrays["y_test"])


def check_arrays(where: str, x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, y_test: np.ndarray
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The four arrays checked and converted: x float32 (N, F), y int64 (N,) in 0 .. K-1, K = y_train.max() + 1
    with every class present in y_train. Each problem is one ``DataError`` line naming the array."""
    for name, x, y in (("train", x_train, y_train), ("test", x_test, y_test)):
        if x.dtype.kind not in "iuf":
            raise DataError(f"{where}: x_{name} must hold numbers (integer or float), got dtype {x.dtype}")
        if x.ndim != 2:
            raise DataError(f"{where}: x_{name} must be 2-D (examples, features), got shape {x.shape}")
        if x.shape[0] == 0 or x.shape[1] == 0:
            raise DataError(f"{where}: x_{name} is empty (shape {x.shape})")
        if not np.isfinite(x).all():
            raise DataError(f"{where}: x_{name} holds NaN or infinite values")
        if y.dtype.kind not in "iu":
            raise DataError(f"{where}: y_{name} must hold integer class labels, got dtype {y.dtype} "
                            f"(store y.astype(int))")
        if y.ndim != 1:
            raise DataError(f"{where}: y_{name} must be 1-D (one label per example), got shape {y.shape}")
        if len(y) != len(x):
            raise DataError(f"{where}: y_{name} has {len(y)} labels for the {len(x)} examples of x_{name}")
    if x_test.shape[1] != x_train.shape[1]:
        raise DataError(f"{where}: x_test has {x_test.shape[1]} features, x_train {x_train.shape[1]}")
    low = int(y_train.min())
    if low < 0:
        raise DataError(f"{where}: y_train: labels must be 0, 1, ..., K-1, found {low}")
    k = int(y_train.max()) + 1
    if k < 2:
        raise DataError(f"{where}: y_train: need at least 2 classes, found only label 0")
    absent = np.setdiff1d(np.arange(k), y_train)
    if len(absent):
        raise DataError(f"{where}: y_train: labels must be 0, 1, ..., {k - 1} with each present; "
                        f"{int(absent[0])} never occurs")
    bad = y_test[(y_test < 0) | (y_test >= k)]
    if len(bad):
        raise DataError(f"{where}: y_test: label {int(bad[0])} is out of range 0..{k - 1} (the classes of y_train)")
    return (np.ascontiguousarray(x_train, np.float32), np.ascontiguousarray(y_train, np.int64),
            np.ascontiguousarray(x_test, np.float32), np.ascontiguousarray(y_test, np.int64))
