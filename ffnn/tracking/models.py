"""Trained networks in MLflow's PyTorch flavor: the shared template of a save, the model files of a
run written all or nothing, the registry."""

from __future__ import annotations

import contextlib
import datetime
import errno
import functools
import hashlib
import json
import sys
import tempfile
import threading
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import mlflow
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository
from mlflow.utils.mlflow_tags import MLFLOW_LOGGED_MODELS

from ..errors import no_space
from .schema import BEST_ALIAS, MODEL_PATH
from .sqlite import local_path
from .translate import writes_finish_before_interrupts

if TYPE_CHECKING:
    import numpy as np
    import torch


@dataclass(frozen=True)
class ModelTemplate:
    """A saved model's files other than its weights and ``MLmodel`` (path -> bytes), and its ``MLmodel``."""
    files: dict[str, bytes]
    meta: dict[str, Any]


def _mlflow_pytorch():
    """``mlflow.pytorch``, imported without PyTorch Lightning. Where Lightning is installed, MLflow imports it
    for its autologging callback, and Lightning imports torchmetrics, which imports transformers: in a
    profile of ``ffnn compare --device cuda`` on the GPU machine these imports took over 10 s, for a
    callback ffnn never uses. A saved model loads without it too."""
    if "mlflow.pytorch" not in sys.modules:
        blocked = "pytorch_lightning" not in sys.modules
        if blocked:  # None: importing it raises ImportError, which MLflow passes over
            sys.modules["pytorch_lightning"] = None  # type: ignore[assignment]  # typeshed: modules hold no None
        try:
            import mlflow.pytorch  # noqa: F401
        finally:
            if blocked and sys.modules.get("pytorch_lightning", 0) is None:
                del sys.modules["pytorch_lightning"]  # a later import of Lightning works as usual
    return sys.modules["mlflow.pytorch"]


@contextlib.contextmanager
def _requirements_taken_as_pinned() -> Iterator[None]:
    """Skip ``save_model``'s check of the given pip requirements against the installed packages.

    MLflow maps every installed distribution to its modules for it: 1.5 s of CPU here, 2.4 s on the GPU
    machine, once per process. ``model_requirements`` pins the installed versions, so the check can
    only agree. Where MLflow no longer has the function, nothing is replaced and the check runs.
    """
    from mlflow.utils import environment

    check = getattr(environment, "warn_dependency_requirement_mismatches", None)
    if check is None:
        yield
        return
    environment.warn_dependency_requirement_mismatches = lambda *args, **kwargs: None
    try:
        yield
    finally:
        environment.warn_dependency_requirement_mismatches = check


def _save_template(model: torch.nn.Module, input_example: np.ndarray) -> ModelTemplate:
    import torch
    from mlflow.models import Model, infer_signature

    model = model.cpu().eval()
    with torch.no_grad():
        output = model(torch.from_numpy(input_example)).numpy()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / MODEL_PATH
        # "pickle": loads back as the nn.Sequential itself (a "pt2" export is a graph that refuses .eval())
        with _requirements_taken_as_pinned():
            _mlflow_pytorch().save_model(model, path, signature=infer_signature(input_example, output),
                                         input_example=input_example, pip_requirements=model_requirements(),
                                         serialization_format="pickle")
        own = {"MLmodel", "data/model.pth"}
        files = {name: f.read_bytes() for f in sorted(path.rglob("*"))
                 if f.is_file() and (name := f.relative_to(path).as_posix()) not in own}
        return ModelTemplate(files, Model.load(path).to_dict())


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
    _model_templates: dict[tuple, ModelTemplate]
    _template_lock: threading.Lock

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
    def log_torch_model(self, run_id: str, model: torch.nn.Module, input_example: np.ndarray) -> dict[str, str]:
        """Save ``model`` as the run's ``model/`` in MLflow's PyTorch flavor, loadable with
        ``mlflow.pytorch.load_model("runs:/<run_id>/model")`` and servable with ``mlflow models serve``;
        returns the tag that ``mlflow.pytorch.log_model`` would set (the UI's Models column), for the
        caller to log with the run's other tags.

        ``input_example``: (k, 784) float32 images as the model takes them; the signature is inferred from
        it and the model's output. No LoggedModel entity, no requirement inference (``MODEL_REQUIREMENTS``
        are pinned), no store read or write here. The first model of each output shape is saved by
        ``mlflow.pytorch.save_model``; the ones after it reuse that save's environment files, example and
        signature, and differ only in ``data/model.pth`` (written as ``save_model`` writes it) and their
        ``MLmodel`` (own uuid, time and size): a third of the time per model.
        """
        import torch
        from mlflow.models import Model

        model = model.cpu().eval()
        template = self._model_template(model, input_example)
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / MODEL_PATH
            for name, content in template.files.items():
                (path / name).parent.mkdir(parents=True, exist_ok=True)
                (path / name).write_bytes(content)
            torch.save(model, path / "data" / "model.pth", pickle_module=_mlflow_pytorch().pickle_module)
            meta = Model.from_dict(template.meta)
            meta.model_uuid = uuid.uuid4().hex
            meta.utc_time_created = str(datetime.datetime.now(datetime.UTC).replace(tzinfo=None))
            meta.model_size_bytes = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
            meta.save(path / "MLmodel")
            self._write_artifacts(run_id, path, MODEL_PATH)
        meta.run_id, meta.artifact_path = run_id, MODEL_PATH
        return {MLFLOW_LOGGED_MODELS: json.dumps([meta.get_tags_dict()])}

    def prepare_model_template(self, model: torch.nn.Module, input_example: np.ndarray) -> None:
        """Start making ``log_torch_model``'s template for models like ``model`` in a thread, so that the
        first ``save_model`` of a process (importing ``mlflow.pytorch`` first) passes while the first
        stack trains."""
        threading.Thread(target=self._model_template, args=(model, input_example), daemon=True,
                         name="ffnn-model-template").start()

    def _model_template(self, model: torch.nn.Module, input_example: np.ndarray) -> ModelTemplate:
        """What every saved model with this output shape shares, from one ``mlflow.pytorch.save_model``."""
        out_shape = tuple(list(model.parameters())[-1].shape)  # ffnn's nets end in a Linear: its bias
        key = (out_shape, input_example.shape, hashlib.sha256(input_example.tobytes()).hexdigest())
        with self._template_lock:  # one being made in prepare_model_template's thread is waited for
            if key not in self._model_templates:
                self._model_templates[key] = _save_template(model, input_example)
            return self._model_templates[key]

    def register_model(self, name: str, run_id: str, alias: str = BEST_ALIAS, description: str = "") -> int:
        """Register the run's ``model/`` as a new version of ``name`` and point ``alias`` at it; returns the version.

        Loadable as ``models:/<name>@<alias>``. A run already registered under ``name`` keeps its version.
        """
        try:
            self.client.get_registered_model(name)
        except MlflowException:
            with contextlib.suppress(MlflowException):  # created meanwhile by a concurrent process
                self.client.create_registered_model(name, description=description or None)
        source = f"{self.client.get_run(run_id).info.artifact_uri}/{MODEL_PATH}"
        mine = [v for v in self.client.search_model_versions(f"name = '{name}' and run_id = '{run_id}'")]
        version = (max(int(v.version) for v in mine) if mine else
                   int(self.client.create_model_version(name, source, run_id=run_id, description=description or None,
                                                        tags={"ffnn.run_id": run_id}).version))
        self.client.set_registered_model_alias(name, alias, str(version))
        return version

