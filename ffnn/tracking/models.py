"""Trained networks as MLflow 3 LoggedModels in the PyTorch flavor, a run's artifacts written all or nothing,
the registry."""

from __future__ import annotations

import contextlib
import errno
import functools
import tempfile
import threading
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import mlflow
from mlflow import MlflowClient
from mlflow.entities import LoggedModel, LoggedModelStatus
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature
from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

from ..errors import TrackingError, no_space
from .schema import BEST_ALIAS, MODEL_PATH, WEIGHTS_FILE
from .sqlite import local_path
from .translate import writes_finish_before_interrupts

if TYPE_CHECKING:
    import numpy as np
    import torch


def _signature(model: torch.nn.Module, input_example: np.ndarray) -> ModelSignature:
    import torch
    from mlflow.models import infer_signature

    with torch.no_grad():
        return infer_signature(input_example, model(torch.from_numpy(input_example)).numpy())


def _warm_up(model: torch.nn.Module, input_example: np.ndarray) -> None:
    """One ``mlflow.pytorch.save_model`` into a folder thrown away: it imports ``mlflow.pytorch`` and fills
    MLflow's cache of the installed packages (for its check of the pip requirements), the first model's
    cost, while the first stack trains."""
    import mlflow.pytorch

    with tempfile.TemporaryDirectory() as tmp:
        mlflow.pytorch.save_model(model, Path(tmp) / MODEL_PATH, signature=_signature(model, input_example),
                                  pip_requirements=model_requirements(), serialization_format="pickle")


@functools.cache
def model_requirements() -> list[str]:
    """The pip requirements stored with every model: what loading it needs, pinned to this environment.

    Given explicitly so that MLflow does not infer them per model (slow, and it would guess).
    """
    import cloudpickle
    import numpy
    import torch
    return [f"mlflow=={mlflow.__version__}", f"torch=={torch.__version__.split('+')[0]}",
            f"numpy=={numpy.__version__}", f"cloudpickle=={cloudpickle.__version__}"]


@writes_finish_before_interrupts
class ModelStore:
    """The ``Tracker``'s model methods (a mixin: the fields are the ``Tracker``'s)."""
    uri: str
    client: MlflowClient
    _artifact_uris: dict[str, str]
    _signatures: dict[tuple, ModelSignature]
    _warming: threading.Thread | None

    def _artifact_repo(self, run_id: str):
        """Where the run's artifacts go; for a run this process created, found without a store read."""
        uri = self._artifact_uris.get(run_id) or self.client.get_run(run_id).info.artifact_uri
        return get_artifact_repository(uri, tracking_uri=self.uri)

    @contextlib.contextmanager
    def _all_or_nothing(self, run_id: str, targets: list[str]):
        """The run's artifacts ``targets`` (paths in its artifact folder) written whole or not at all:
        whatever a failed copy left (a truncated ``model.pth``) is deleted before the error goes on, and a
        full disk names the place in the store that could not be written."""
        repo = self._artifact_repo(run_id)
        try:
            yield repo
        except BaseException as e:
            for target in targets:
                with contextlib.suppress(Exception):
                    repo.delete_artifacts(target)
            if isinstance(e, OSError) and e.errno == errno.ENOSPC:
                dest = local_path(self._artifact_uris.get(run_id) or repo.artifact_uri)
                raise no_space(f"{dest}/{targets[0]}" if dest else targets[0]) from e
            raise

    def _write_artifacts(self, run_id: str, folder: Path, artifact_path: str) -> None:
        with self._all_or_nothing(run_id, [artifact_path]) as repo:
            repo.log_artifacts(str(folder), artifact_path)

    def log_paths(self, run_id: str, paths: Iterable[Path], artifact_path: str | None = None) -> None:
        """Files into the run's ``artifact_path`` folder (its root by default), all or none of them."""
        paths = list(paths)
        targets = [f"{artifact_path}/{p.name}" if artifact_path else p.name for p in paths]
        with self._all_or_nothing(run_id, targets) as repo:
            for p in paths:
                repo.log_artifact(str(p), artifact_path)

    # models ----------------------------------------------------------------
    def log_weights(self, run_id: str, weights: bytes) -> None:
        """The network's ``state_dict`` (``torch.save``'s bytes) as the run's artifact ``weights.pt``: what a
        run without a LoggedModel keeps, so that its network can be rebuilt and logged later."""
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / WEIGHTS_FILE
            path.write_bytes(weights)
            self.log_paths(run_id, [path])

    def weights(self, run_id: str) -> bytes | None:
        """The run's ``weights.pt``, or None if it has none."""
        with tempfile.TemporaryDirectory() as tmp:
            try:
                return Path(self.client.download_artifacts(run_id, WEIGHTS_FILE, tmp)).read_bytes()
            except (MlflowException, OSError):
                return None

    def log_torch_model(self, run_id: str, experiment_id: str, model: torch.nn.Module, input_example: np.ndarray,
                        step: int, params: Mapping[str, object] | None = None) -> LoggedModel:
        """``model`` as the run's MLflow 3 LoggedModel ``model``, through ``mlflow.pytorch.log_model``; returns
        it (as created, before it was READY). Loadable as ``runs:/<run_id>/model`` or ``models:/<model_id>``,
        listed in the experiment's Models tab and by ``search_logged_models``, with the run's ``params``; the
        run's metrics at ``step`` (the final ones) are linked to it. ``input_example``: (k, n_features) float32
        inputs as the model takes them; the signature is inferred from it and the model's output. The pip
        requirements are given (``model_requirements``), not inferred. A model whose files could not all be
        written is deleted, files and entity: it is created first (``initialize_logged_model``), so that its id
        and folder are known.
        """
        import mlflow.pytorch

        self._wait_warm_up()
        model = model.cpu().eval()
        mlflow.set_tracking_uri(self.uri)  # log_model resolves the store through the fluent API
        shape = (tuple(list(model.parameters())[-1].shape), input_example.shape)  # ffnn's nets end in a Linear
        if shape not in self._signatures:
            self._signatures[shape] = _signature(model, input_example)
        logged = mlflow.initialize_logged_model(name=MODEL_PATH, source_run_id=run_id, experiment_id=experiment_id,
                                                params={k: str(v) for k, v in (params or {}).items()})
        try:
            mlflow.pytorch.log_model(model, name=MODEL_PATH, signature=self._signatures[shape],
                                     input_example=input_example, pip_requirements=model_requirements(),
                                     serialization_format="pickle", step=step, model_id=logged.model_id,
                                     run_id=run_id)  # Model.log's run_id: the run need not be active
        except BaseException as e:
            self.delete_model(logged)
            if isinstance(e, OSError) and e.errno == errno.ENOSPC:
                raise no_space(f"the model of run {run_id} in {self.uri}") from e
            raise
        return logged

    def delete_model(self, logged: LoggedModel) -> None:
        """A LoggedModel's files, then the entity; each may fail on the store that failed the model."""
        with contextlib.suppress(Exception):
            get_artifact_repository(logged.artifact_location, tracking_uri=self.uri).delete_artifacts()
        with contextlib.suppress(Exception):
            self.client.delete_logged_model(logged.model_id)

    def model_id(self, run_id: str) -> str | None:
        """The run's last LoggedModel that is READY, or None. One not READY is passed over, never deleted: it may
        be another process's, being logged now, or one a killed process left unfinished."""
        outputs = self.client.get_run(run_id).outputs
        for output in reversed(outputs.model_outputs if outputs is not None else []):
            logged = self.client.get_logged_model(output.model_id)
            if logged.status == LoggedModelStatus.READY:
                return logged.model_id
        return None

    def prepare_model_logging(self, model: torch.nn.Module, input_example: np.ndarray) -> None:
        """Start ``_warm_up`` in a thread; the first ``log_torch_model`` waits for it."""
        self._warming = threading.Thread(target=_warm_up, args=(model.cpu().eval(), input_example), daemon=True,
                                         name="ffnn-model-warm-up")
        self._warming.start()

    def _wait_warm_up(self) -> None:
        warming, self._warming = self._warming, None
        if warming is not None:
            warming.join()

    def register_model(self, name: str, run_id: str, alias: str = BEST_ALIAS, description: str = "") -> int:
        """Register the run's ``model/`` as a new version of ``name`` and point ``alias`` at it; returns the version.

        Loadable as ``models:/<name>@<alias>``. A run already registered under ``name`` keeps its version.
        """
        try:
            self.client.get_registered_model(name)
        except MlflowException:
            with contextlib.suppress(MlflowException):  # created meanwhile by a concurrent process
                self.client.create_registered_model(name, description=description or None)
        model_id = self.model_id(run_id)
        if model_id is None:
            raise TrackingError(f"run {run_id} has no logged model to register")
        mine = [v for v in self.client.search_model_versions(f"name = '{name}' and run_id = '{run_id}'")]
        version = (max(int(v.version) for v in mine) if mine else
                   int(self.client.create_model_version(name, f"models:/{model_id}", run_id=run_id,
                                                        description=description or None, model_id=model_id,
                                                        tags={"ffnn.run_id": run_id}).version))
        self.client.set_registered_model_alias(name, alias, str(version))
        return version

