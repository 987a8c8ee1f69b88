"""What a command works on, built once by the CLI and passed down: verified data, the tracker, the device
and its training processes (local ones, or Ray tasks on the cluster ``--ray`` names).

Building a context imports no MLflow: the CLI can start the training processes (``engine``) first, so
that they import torch and load the data while this process imports MLflow and opens the store.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from functools import cached_property, partial
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from . import datasets
from .engine import Engine, ProcessEngine, Setup, Work, worker_count
from .engine import ray as ray_engine
from .models import ModelSpec
from .train import device_name, resolve_device
from .train.loop import DeviceError

if TYPE_CHECKING:
    from .config import CompareConfig
    from .tracking import Tracker


@dataclass(frozen=True)
class Context:
    dataset: datasets.Source  # IDX files (mnist, fashion-mnist) or arrays (digits, an .npz file)
    data_dir: str  # torchvision layout; training processes load from here without re-verifying
    folder: Path  # the verified raw files: the IDX folder, or the array file
    n_train: int  # training examples in the files
    n_test: int  # test examples in the files
    n_features: int  # inputs per example: every model's input size
    n_classes: int  # classes: every model's output size
    device: torch.device
    tracking_uri: str | None  # None: MLFLOW_TRACKING_URI or the project's SQLite store
    engines: dict[Work, Engine] = field(default_factory=dict, compare=False, repr=False)  # by the work they run
    ray: ray_engine.ClusterInfo | None = None  # joined with --ray: the jobs run as tasks on this cluster

    @classmethod
    def build(cls, dataset: str, data_dir: str, data_source: str | None, device: str,
              tracking_uri: str | None, ray_address: str | None = None) -> Context:
        """Resolve the device and verify (and fetch) the data, once; the store opens at first use.
        ``ray_address`` ("" for ``$RAY_ADDRESS``): join that Ray cluster first, before any file is touched."""
        cluster = ray_engine.connect(ray_address) if ray_address is not None else None
        dev = resolve_device(device) if cluster is None else _cluster_device(device, cluster)
        source, folder, shape = datasets.resolve(dataset, data_dir, data_source)
        # a Ray worker does not start where this process does: it loads from the same absolute path
        where = str(Path(data_dir).absolute()) if cluster is not None else str(data_dir)
        return cls(source, where, folder, shape.n_train, shape.n_test, shape.n_features, shape.n_classes,
                   dev, tracking_uri, ray=cluster)

    def sized(self, spec: ModelSpec) -> ModelSpec:
        """``spec`` with this dataset's input size and class count."""
        return spec.sized(self.n_features, self.n_classes)

    def bind(self, cfg: CompareConfig) -> CompareConfig:
        """``cfg`` for this dataset: its recorded name (an .npz file's carries its hash) and every spec sized
        to the data."""
        return replace(cfg, dataset=self.dataset.name, specs={k: self.sized(v) for k, v in cfg.specs.items()})

    def input_example(self) -> np.ndarray:
        """The first test examples as the models take them: the MLflow models' input example and signature."""
        return datasets.input_example(self.dataset, self.folder)

    @cached_property
    def tracker(self) -> Tracker:
        """Opened when a command first needs it: after its input is validated, so bad input creates no store."""
        from .tracking import Tracker
        return Tracker.open(self.tracking_uri)

    @property
    def device_name(self) -> str:
        if self.ray is not None:  # the driver may have no GPU; the results name what trained them
            return f"Ray cluster at {self.ray.address} ({self.ray.cpus} CPUs, {self.ray.gpus} GPUs)"
        return device_name(self.device)

    def worker_count(self, requested: int | None, n_jobs: int, per_host: bool = False) -> int:
        """Training processes for ``n_jobs`` jobs: ``requested``, else one per core (one on CUDA), or on Ray
        the cluster's CPUs (GPUs on CUDA). ``per_host``: how many of them share one machine's memory."""
        if self.ray is None:
            return worker_count(requested, self.device, n_jobs)
        slots = requested or ray_engine.cluster_slots(self.ray, self.device.type == "cuda")
        if per_host and self.device.type == "cpu":
            slots = min(slots, max(1, self.ray.node_cpus))
        return max(1, min(slots, n_jobs or 1))

    def engine(self, work: Work, workers: int, setup: Setup | None = None) -> Engine:
        """The training processes that run ``work``, started on first use and kept until ``close``
        (``setup`` defaults to loading the whole dataset on the device)."""
        if work not in self.engines or not self.engines[work].alive:
            setup = setup or partial(datasets.load, self.dataset, self.data_dir, device=str(self.device),
                                     verify=False)
            if self.ray is not None:
                self.engines[work] = ray_engine.RayEngine(setup, work, workers, gpu=self.device.type == "cuda")
            else:
                # on a GPU the one training process is a child too: it trains the next stack while this
                # process writes the last one to MLflow
                self.engines[work] = ProcessEngine(workers, setup, work, spawn=self.device.type == "cuda")
        return self.engines[work]

    def close(self, graceful: bool = True) -> None:
        """Stop the training processes (and leave the Ray cluster)."""
        while self.engines:
            self.engines.popitem()[1].close(graceful)
        if self.ray is not None:
            ray_engine.disconnect()

    def __enter__(self) -> Context:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close(graceful=exc_type is None)


def _cluster_device(name: str, cluster: ray_engine.ClusterInfo) -> torch.device:
    """``--device`` on a Ray cluster: ``auto`` is CUDA when the cluster has a GPU, this machine's aside."""
    if name == "auto":
        return torch.device("cuda" if cluster.gpus else "cpu")
    if name == "cuda" and not cluster.gpus:
        raise DeviceError(f"--device cuda: the Ray cluster at {cluster.address} has no GPU (use --device cpu or "
                          f"auto, or start its nodes with GPUs)")
    if name not in ("cpu", "cuda"):
        return resolve_device(name)  # its error
    return torch.device(name)
