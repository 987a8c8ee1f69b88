"""The ``Tracker``: one ``MlflowClient`` on one store, for experiments, runs, metrics and searches."""

from __future__ import annotations

import errno
import json
import os
import re
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Literal, overload

import mlflow
import pandas as pd
from mlflow import MlflowClient
from mlflow.entities import Dataset, DatasetInput, InputTag, Metric, Param, Run, RunTag
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature
from mlflow.utils.mlflow_tags import MLFLOW_GIT_COMMIT, MLFLOW_PARENT_RUN_ID, MLFLOW_RUN_NOTE

from ..errors import TrackingError, fault_line, no_space
from .claims import Claims
from .models import ModelStore
from .owners import Heartbeat, git_commit, heartbeat_interval, owner
from .schema import BATCH, EXPERIMENT_KIND, MODEL_TRAINING, TAG_HEARTBEAT, TAG_OWNER, now_ms
from .sqlite import SpaceReserve, artifact_root, check_sqlite_file, init_lock, resolve_uri, sqlite_path, use_wal
from .system_metrics import SystemMetrics
from .translate import HTTP_DEFAULTS, credentials_refused, probe_server, writes_finish_before_interrupts


@writes_finish_before_interrupts
@dataclass
class Tracker(ModelStore, Claims):
    uri: str
    client: MlflowClient
    _artifact_uris: dict[str, str] = field(default_factory=dict)  # run id -> artifact URI, runs created here
    store_seconds: float = 0.0  # wall time spent in this tracker's calls (reads and writes), for the record
    _depth: int = 0
    monitors: dict[str, SystemMetrics] = field(default_factory=dict, repr=False)  # run id -> its sampler
    _heartbeat: Heartbeat | None = None
    _gone: str | None = None  # why the server is lost, once it is
    _signatures: dict[tuple, ModelSignature] = field(default_factory=dict, repr=False)  # by output, input shape
    _warming: threading.Thread | None = field(default=None, repr=False)  # prepare_model_logging's thread

    @classmethod
    def open(cls, uri: str | None = None) -> Tracker:
        uri = resolve_uri(uri)
        db = sqlite_path(uri)
        if db is not None and not db.parent.exists():
            try:
                db.parent.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise TrackingError(f"tracking URI {uri!r}: cannot create {db.parent} ({e.strerror})") from None
        if db is not None:
            check_sqlite_file(db)
            SpaceReserve.clear_dead(db)
        if uri.startswith(("http://", "https://")):
            for k, v in HTTP_DEFAULTS.items():
                os.environ.setdefault(k, v)
            probe_server(uri)  # MLflow's client retries an unreachable server for minutes
        try:
            # Opening a new SQLite store creates its tables; two processes doing that at
            # once corrupt it, so opening holds a lock file beside the database.
            with init_lock(db):
                new = db is not None and (not db.exists() or db.stat().st_size == 0)
                try:
                    client = MlflowClient(tracking_uri=uri)
                    client.search_experiments(max_results=1)
                    if db is not None:
                        use_wal(db)
                except BaseException:
                    if new and db is not None:  # a store half-created (a full disk) is not left behind
                        for path in (db, db.with_name(db.name + "-wal"), db.with_name(db.name + "-shm")):
                            path.unlink(missing_ok=True)
                    raise
        except Exception as e:  # connection errors come as many types
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            if "401" in first or "nauthori" in first:
                raise credentials_refused(uri) from None
            if db is not None and ("database or disk is full" in first or getattr(e, "errno", None) == errno.ENOSPC):
                raise TrackingError(f"tracking URI {uri!r}: {fault_line(no_space(db))}") from None
            raise TrackingError(f"tracking URI {uri!r} is unreachable or malformed: {first}") from None
        return cls(uri, client)

    # experiments -----------------------------------------------------------
    @overload
    def experiment_id(self, name: str, create: Literal[True] = ..., description: str | None = None) -> str: ...
    @overload
    def experiment_id(self, name: str, create: bool, description: str | None = None) -> str | None: ...

    def experiment_id(self, name: str, create: bool = True, description: str | None = None) -> str | None:
        """The experiment's id, created if missing; ``description`` (Markdown) is set unless it has one."""
        exp = self.client.get_experiment_by_name(name)
        if exp is not None:
            if create and exp.tags.get(EXPERIMENT_KIND) != MODEL_TRAINING:
                self.client.set_experiment_tag(exp.experiment_id, EXPERIMENT_KIND, MODEL_TRAINING)
            if create and description and not exp.tags.get(MLFLOW_RUN_NOTE):
                self.client.set_experiment_tag(exp.experiment_id, MLFLOW_RUN_NOTE, description)
            return exp.experiment_id
        if not create:
            return None
        tags = {EXPERIMENT_KIND: MODEL_TRAINING, **({MLFLOW_RUN_NOTE: description} if description else {})}
        try:
            root = artifact_root(self.uri)
            slug = re.sub(r"[^A-Za-z0-9._-]+", "_", name)
            return self.client.create_experiment(name, artifact_location=root and f"{root}/{slug}", tags=tags)
        except MlflowException:  # created meanwhile by a concurrent process
            if (exp := self.client.get_experiment_by_name(name)) is None:
                raise  # it was not: the store's own error stands
            return exp.experiment_id

    def experiment_tags(self, experiment_id: str) -> dict[str, str]:
        return dict(self.client.get_experiment(experiment_id).tags)

    def set_experiment_tags(self, experiment_id: str, tags: dict[str, str]) -> None:
        for k, v in tags.items():
            self.client.set_experiment_tag(experiment_id, k, str(v))

    def experiment_names(self) -> list[str]:
        return [e.name for e in self.client.search_experiments()]

    def experiments(self) -> list[tuple[str, str]]:
        """(id, name) of every experiment but MLflow's empty ``Default``, oldest first."""
        found = sorted(self.client.search_experiments(), key=lambda e: int(e.experiment_id) if
                       e.experiment_id.isdigit() else 0)
        return [(e.experiment_id, e.name) for e in found
                if not (e.name == "Default" and not self.client.search_runs([e.experiment_id], max_results=1))]

    # runs ------------------------------------------------------------------
    def start_run(self, experiment_id: str, name: str, params: dict[str, Any], tags: dict[str, str],
                  parent_id: str | None = None, description: str | None = None,
                  system_metrics: bool = False) -> str:
        """Create a RUNNING run; ``system_metrics`` samples CPU, memory and GPU into it until ``end_run``."""
        tags = {**tags, TAG_OWNER: owner(),
                MLFLOW_GIT_COMMIT: git_commit(), "ffnn.git_commit": git_commit()}
        if parent_id:
            tags[MLFLOW_PARENT_RUN_ID] = parent_id
        if description:
            tags[MLFLOW_RUN_NOTE] = description
        run = self.client.create_run(experiment_id, start_time=now_ms(), tags=tags, run_name=name)
        run_id = run.info.run_id
        self._artifact_uris[run_id] = run.info.artifact_uri
        if params:
            self.client.log_batch(run_id, params=[Param(k, str(v)) for k, v in params.items()])
        if system_metrics:
            self.monitors[run_id] = SystemMetrics(self.uri, run_id)
        return run_id

    def system_metrics(self, run_id: str) -> SystemMetrics:
        """``with tracker.system_metrics(run_id):`` samples CPU, memory and GPU into the run meanwhile."""
        return SystemMetrics(self.uri, run_id)

    def reserve_space(self) -> SpaceReserve:
        """Room kept for the clean-up if the disk fills up (``SpaceReserve``); ``release()`` it then."""
        return SpaceReserve(sqlite_path(self.uri))

    def start_heartbeat(self, run_id: str) -> None:
        """Stamp this process's heartbeat on ``run_id`` (its comparison's parent run) until that run ends;
        the runs nested under it count as alive while it is fresh."""
        self.set_tags(run_id, {TAG_HEARTBEAT: str(now_ms())})
        self._heartbeat = Heartbeat(self.uri, run_id, heartbeat_interval())

    def end_run(self, run_id: str, status: str = "FINISHED", tags: dict[str, str] | None = None) -> None:
        if run_id in self.monitors:
            self.monitors.pop(run_id).stop()
        if self._heartbeat is not None and self._heartbeat.run_id == run_id:
            self._heartbeat.stop()
            self._heartbeat = None
        if tags:
            self.client.log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])
        self.client.set_terminated(run_id, status=status, end_time=now_ms())

    def set_tags(self, run_id: str, tags: dict[str, str]) -> None:
        self.client.log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def log_metrics(self, run_id: str, key: str, points: Iterable[tuple[int, float]]) -> None:
        """(step, value) pairs, sent in batches of 1000."""
        ts = now_ms()
        metrics = [Metric(key, float(v), ts, int(s)) for s, v in points]
        for i in range(0, len(metrics), BATCH):
            self.client.log_batch(run_id, metrics=metrics[i:i + BATCH])

    def log_run(self, run_id: str, series: dict[str, list[tuple[int, float]]], values: dict[str, float],
                step: int, tags: dict[str, str], params: dict[str, Any] | None = None) -> None:
        """Curves ``key -> [(step, value)]``, final ``values`` at ``step``, ``tags`` and ``params`` in as
        few ``log_batch`` calls as MLflow's limit of 1000 metrics a call allows."""
        ts = now_ms()
        metrics = [Metric(k, float(v), ts, int(s)) for k, points in series.items() for s, v in points]
        metrics += [Metric(k, float(v), ts, step) for k, v in values.items()]
        run_tags = [RunTag(k, str(v)) for k, v in tags.items()]
        run_params = [Param(k, str(v)) for k, v in (params or {}).items()]
        for i in range(0, max(len(metrics), 1), BATCH):
            first = i == 0
            self.client.log_batch(run_id, metrics=metrics[i:i + BATCH], tags=run_tags if first else [],
                                  params=run_params if first else [])

    def log_values(self, run_id: str, values: dict[str, float], step: int = 0) -> None:
        ts = now_ms()
        self.client.log_batch(run_id, metrics=[Metric(k, float(v), ts, step) for k, v in values.items()])

    def log_dataset(self, run_id: str, name: str, digest: str, source: str, n_train: int, n_test: int,
                    context: str = "train") -> None:
        dataset = Dataset(name=name, digest=digest[:36], source_type="local",
                          source=json.dumps({"uri": source}),
                          profile=json.dumps({"num_train": n_train, "num_test": n_test, "sha256": digest}))
        self.client.log_inputs(run_id, [DatasetInput(dataset, [InputTag("mlflow.data.context", context)])])

    def search(self, experiment_id: str, filter_string: str) -> list[Run]:
        runs: list[Run] = []
        token = None
        while True:
            page = self.client.search_runs([experiment_id], filter_string, max_results=1000, page_token=token)
            runs.extend(page)
            token = page.token
            if not token:
                return runs

    # reading back ----------------------------------------------------------
    def runs_frame(self, experiment_ids: list[str]) -> pd.DataFrame:
        """All runs of the experiments, as ``mlflow.search_runs`` gives them (RUN_COLUMNS names what is read)."""
        mlflow.set_tracking_uri(self.uri)
        return mlflow.search_runs(experiment_ids=experiment_ids, output_format="pandas",
                                  max_results=100_000) if experiment_ids else pd.DataFrame()

    def dataset_profile(self, run_id: str) -> dict[str, Any]:
        """The profile ``log_dataset`` recorded on the run (num_train, num_test, sha256); {} if none."""
        inputs = self.client.get_run(run_id).inputs
        for d in inputs.dataset_inputs if inputs is not None else []:
            try:
                return dict(json.loads(d.dataset.profile or "{}"))
            except ValueError:
                return {}
        return {}

    def metric_history(self, run_id: str, key: str) -> pd.DataFrame:
        hist = self.client.get_metric_history(run_id, key)
        return pd.DataFrame({"step": [m.step for m in hist], "value": [m.value for m in hist]})

    def download(self, run_id: str, path: str, dest: str) -> str:
        return self.client.download_artifacts(run_id, path, dest)


    # --- used by tune
    def find_runs(self, experiment_id: str, tags: dict[str, str]) -> list[str]:
        """Ids of the runs that carry every one of ``tags``, oldest first."""
        where = " and ".join(f"tags.`{k}` = '{v}'" for k, v in tags.items())
        runs = self.search(experiment_id, where)
        return [r.info.run_id for r in sorted(runs, key=lambda r: (r.info.start_time, r.info.run_id))]

    def delete_run(self, run_id: str) -> None:
        self.client.delete_run(run_id)

    def reopen_run(self, run_id: str) -> None:
        """Set an ended run RUNNING again, owned by this process: a resumed study keeps its one parent run."""
        self.set_tags(run_id, {TAG_OWNER: owner()})
        self.client.update_run(run_id, status="RUNNING")


