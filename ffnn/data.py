"""Dataset files -> verified -> (x, y) tensors on the device.

The files live in torchvision's on-disk layout, ``<data_dir>/<folder>/raw/*-ubyte``.
They come, in order of preference, from the data dir itself, a local mirror
folder holding the four ``.gz`` IDX files, or torchvision's download. Every
uncompressed file is checked against its canonical SHA-256 before use, and a
file is only ever moved into the data dir once it has passed that check.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .errors import UserError

FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
DEFAULT_DATA_DIR = "data"


class DataError(UserError):
    """A dataset file is missing, corrupted or cannot be fetched."""


@dataclass(frozen=True)
class DatasetSpec:
    name: str  # the name users type: --dataset NAME
    folder: str  # torchvision's folder under the data dir, e.g. "MNIST"
    sha256: dict[str, str]  # uncompressed file name -> canonical SHA-256
    mirrors: tuple[str, ...] = ()  # local folders tried when no --data-source is given
    torchvision_class: str | None = None  # torchvision.datasets class used to download

    @property
    def digest(self) -> str:
        """One SHA-256 for the whole dataset: the hash of its four sorted file sums."""
        lines = "".join(f"{self.sha256[f]}  {f}\n" for f in sorted(self.sha256))
        return hashlib.sha256(lines.encode()).hexdigest()


DATASETS: dict[str, DatasetSpec] = {
    "mnist": DatasetSpec(
        name="mnist",
        folder="MNIST",
        sha256={
            "train-images-idx3-ubyte": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
            "train-labels-idx1-ubyte": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
            "t10k-images-idx3-ubyte": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
            "t10k-labels-idx1-ubyte": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
        },
        torchvision_class="MNIST",
    ),
    "fashion-mnist": DatasetSpec(
        name="fashion-mnist",
        folder="FashionMNIST",
        # as installed by Debian's dataset-fashion-mnist package
        sha256={
            "train-images-idx3-ubyte": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
            "train-labels-idx1-ubyte": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
            "t10k-images-idx3-ubyte": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
            "t10k-labels-idx1-ubyte": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
        },
        mirrors=("/usr/share/datasets/fashion-mnist",),
        torchvision_class="FashionMNIST",
    ),
}


@dataclass(frozen=True)
class Dataset:
    """A whole dataset in memory: pixels in [0, 1], flattened; integer labels."""

    name: str
    sha256: str  # DatasetSpec.digest
    x_train: torch.Tensor  # (60000, 784) float32
    y_train: torch.Tensor  # (60000,) int64
    x_test: torch.Tensor  # (10000, 784) float32
    y_test: torch.Tensor  # (10000,) int64
    source: str = field(default="")  # where the raw files live
    # x_train as stored, (60000, 784) uint8, x_train == pixels_train.float() / 255 exactly: the stacked
    # trainer gathers its batches from these, a quarter of the bytes
    pixels_train: torch.Tensor | None = None

    def to(self, device: torch.device | str) -> Dataset:
        return Dataset(
            self.name, self.sha256,
            self.x_train.to(device), self.y_train.to(device),
            self.x_test.to(device), self.y_test.to(device),
            self.source, None if self.pixels_train is None else self.pixels_train.to(device),
        )


def get_spec(name: str) -> DatasetSpec:
    try:
        return DATASETS[name]
    except KeyError:
        raise DataError(f"unknown dataset {name!r}; known: {', '.join(DATASETS)}") from None


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def raw_dir(spec: DatasetSpec, data_dir: str | Path) -> Path:
    return Path(data_dir) / spec.folder / "raw"


def _check(path: Path, expected: str, shown_as: str) -> None:
    actual = sha256_file(path)
    if actual != expected:
        raise DataError(
            f"{shown_as}: checksum mismatch (corrupted or truncated file): "
            f"expected SHA-256 {expected}, got {actual}"
        )


def _install_from(src: Path, dest: Path, expected: str) -> None:
    """Decompress (if needed) ``src`` to a temp file beside ``dest``, verify, then rename."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out:
            opener = gzip.open if src.suffix == ".gz" else open
            try:
                with opener(src, "rb") as f:
                    shutil.copyfileobj(f, out, 1 << 20)
            except (OSError, EOFError) as e:  # gzip truncated or not gzip at all
                raise DataError(f"{src}: cannot read ({e}); expected SHA-256 {expected} after decompression") from None
        _check(tmp, expected, str(src))
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)


def _mirror_file(folder: Path, name: str) -> Path | None:
    for candidate in (folder / f"{name}.gz", folder / name):
        if candidate.is_file():
            return candidate
    return None


def _download(spec: DatasetSpec, data_dir: Path) -> None:
    """torchvision's downloader, into a scratch folder; files are verified on the way in."""
    if spec.torchvision_class is None:
        raise DataError(f"dataset {spec.name!r} has no download source")
    import torchvision.datasets

    cls = getattr(torchvision.datasets, spec.torchvision_class)
    data_dir.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=".download-", dir=data_dir))
    try:
        try:
            cls(root=str(scratch), train=True, download=True)
        except Exception as e:  # network errors come in many types
            reason = " ".join(str(e).split())
            raise DataError(f"download of {spec.name} failed: {reason}") from None
        src = scratch / spec.folder / "raw"
        for name, expected in spec.sha256.items():
            got = _mirror_file(src, name)
            if got is None:
                raise DataError(f"download of {spec.name} did not produce {name}")
            _install_from(got, raw_dir(spec, data_dir) / name, expected)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def prepare(spec: DatasetSpec, data_dir: str | Path = DEFAULT_DATA_DIR,
            source: str | Path | None = None) -> Path:
    """Make sure the verified raw files are in ``data_dir``; return their folder.

    ``source`` (or env ``FFNN_DATA_SOURCE``) is a folder with the ``.gz`` IDX files.
    """
    data_dir = Path(data_dir)
    dest = raw_dir(spec, data_dir)
    source = source or os.environ.get("FFNN_DATA_SOURCE") or None
    mirrors = [Path(source)] if source else [Path(m) for m in spec.mirrors]
    if source and not Path(source).is_dir():
        raise DataError(f"--data-source {source}: no such directory")
    missing = []
    for name, expected in spec.sha256.items():
        path = dest / name
        if path.is_file():
            _check(path, expected, str(path))
            continue
        for mirror in mirrors:
            src = _mirror_file(mirror, name)
            if src is not None:
                _install_from(src, path, expected)
                break
        else:
            missing.append(name)
    if missing:
        try:
            _download(spec, data_dir)
        except DataError as e:
            raise DataError(
                f"{spec.name}: {', '.join(missing)} missing from {dest} and no source reachable ({e}); "
                f"pass --data-source DIR (or set FFNN_DATA_SOURCE) to a folder holding the four .gz IDX files"
            ) from None
    return dest


def read_idx(path: Path) -> np.ndarray:
    """Parse an IDX file (the MNIST format): big-endian header, then uint8 data."""
    raw = path.read_bytes()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise DataError(f"{path}: not an unsigned-byte IDX file")
    ndim = raw[3]
    dims = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    offset = 4 + 4 * ndim
    if len(raw) - offset != int(np.prod(dims)):
        raise DataError(f"{path}: header says {dims} but holds {len(raw) - offset} bytes")
    return np.frombuffer(raw, dtype=np.uint8, offset=offset).reshape(dims)


def count_examples(folder: Path, name: str = "train-labels-idx1-ubyte") -> int:
    """The first dimension from an IDX header, without reading the data."""
    with open(folder / name, "rb") as f:
        return int.from_bytes(f.read(8)[4:8], "big")


def load(spec: DatasetSpec | str, data_dir: str | Path = DEFAULT_DATA_DIR,
         source: str | Path | None = None, device: torch.device | str = "cpu", verify: bool = True) -> Dataset:
    """Prepare, verify and load a dataset into tensors on ``device``, once.

    ``verify=False`` trusts files that this process tree has just verified.
    """
    if isinstance(spec, str):
        spec = get_spec(spec)
    folder = prepare(spec, data_dir, source) if verify else raw_dir(spec, data_dir)

    def pixels(name: str) -> torch.Tensor:
        arr = read_idx(folder / name)
        return torch.from_numpy(arr.copy()).to(device).reshape(len(arr), -1)

    def images(raw: torch.Tensor) -> torch.Tensor:
        return raw.float().div_(255)  # ToTensor's scaling: uint8 / 255 -> float32 in [0, 1]

    def labels(name: str) -> torch.Tensor:
        return torch.from_numpy(read_idx(folder / name).astype(np.int64)).to(device)

    train_pixels = pixels("train-images-idx3-ubyte")
    return Dataset(
        name=spec.name,
        sha256=spec.digest,
        x_train=images(train_pixels),
        y_train=labels("train-labels-idx1-ubyte"),
        x_test=images(pixels("t10k-images-idx3-ubyte")),
        y_test=labels("t10k-labels-idx1-ubyte"),
        source=str(folder),
        pixels_train=train_pixels,
    )


def split_validation(x: torch.Tensor, y: torch.Tensor, n: int = 10_000,
                     seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Hold out ``n`` training examples for validation: the same ``n`` for a given seed, on any device.

    ``x_fit, y_fit, x_val, y_val = split_validation(ds.x_train, ds.y_train, 10_000)``
    gives 50,000 + 10,000 MNIST images; the test set plays no part.
    """
    if isinstance(n, bool) or not isinstance(n, int) or not 0 < n < len(x):
        raise DataError(f"validation split: need 0 < val_size < {len(x)} training examples, got {n!r}")
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed)).to(x.device)
    fit, val = perm[n:].sort().values, perm[:n].sort().values  # sorted: rows stay in file order
    return x[fit], y[fit], x[val], y[val]
