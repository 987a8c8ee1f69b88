"""What a command works on, built once by the CLI and passed down: verified data, the tracker, the device."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import torch

from . import data as data_mod
from .tracking import Tracker
from .train import device_name, resolve_device


@dataclass(frozen=True)
class Context:
    dataset: data_mod.DatasetSpec
    data_dir: str  # torchvision layout; training processes load from here without re-verifying
    folder: Path  # the verified raw files
    n_train: int  # training examples in the files
    n_test: int  # test examples in the files
    device: torch.device
    tracking_uri: str | None  # None: MLFLOW_TRACKING_URI or the project's SQLite store

    @classmethod
    def build(cls, dataset: str, data_dir: str, data_source: str | None, device: str,
              tracking_uri: str | None) -> "Context":
        """Resolve the device and verify (and fetch) the data, once; the store opens at first use."""
        dev = resolve_device(device)
        spec = data_mod.get_spec(dataset)
        folder = data_mod.prepare(spec, data_dir, data_source)
        return cls(spec, str(data_dir), folder, data_mod.count_examples(folder),
                   data_mod.count_examples(folder, "t10k-labels-idx1-ubyte"), dev, tracking_uri)

    @cached_property
    def tracker(self) -> Tracker:
        """Opened when a command first needs it: after its input is validated, so bad input creates no store."""
        return Tracker.open(self.tracking_uri)

    @property
    def device_name(self) -> str:
        return device_name(self.device)

    def load(self) -> data_mod.Dataset:
        """The whole dataset as tensors on the device (in whichever process calls it)."""
        return data_mod.load(self.dataset, self.data_dir, device=self.device, verify=False)

