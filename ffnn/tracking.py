"""MLflow: the only module that imports mlflow.

Default store: ``sqlite:///mlruns/mlflow.db`` with artifacts under
``mlruns/artifacts``; ``--tracking-uri`` or ``MLFLOW_TRACKING_URI`` overrides.
One experiment per comparison, one parent run per invocation, one child run
per (model, seed). All writes go through one ``MlflowClient`` in one process.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import inspect
import hashlib
import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator
from urllib.parse import urlparse

import mlflow
import pandas as pd
from mlflow import MlflowClient
from mlflow.entities import Dataset, DatasetInput, InputTag, Metric, Param, RunTag
from mlflow.exceptions import MlflowException
from mlflow.utils.mlflow_tags import MLFLOW_GIT_COMMIT, MLFLOW_PARENT_RUN_ID, MLFLOW_RUN_NOTE

from .errors import UserError, deferring

DEFAULT_TRACKING_URI = "sqlite:///mlruns/mlflow.db"
TAG_KIND = "ffnn.kind"  # "comparison" (parent), "run" (child), "study", "trial"
TAG_KEY = "ffnn.run_key"  # hash of everything that determines a child run's result
TAG_OWNER = "ffnn.owner"  # host:pid of the process that created a RUNNING run
TAG_FAILURE = "ffnn.failure"  # why a run FAILED, e.g. "diverged: loss is nan at step 120"
TAG_FAILURE_STEP = "ffnn.failure_step"  # the optimizer step where it failed
TAG_SEQUENTIAL = "ffnn.sequential"  # experiment tag: JSON of the --until-decided design (looks, alpha, margin)
# `runs_frame` column of each field a report reads from a child run (mlflow.search_runs names).
RUN_COLUMNS = {"run_id": "run_id", "experiment_id": "experiment_id", "status": "status", "start_time": "start_time",
               "kind": f"tags.{TAG_KIND}", "model": "params.model", "model_tag": "tags.ffnn.model",
               "seed": "params.seed", "hidden": "params.hidden_sizes", "activation": "params.activation",
               "lr": "params.lr", "batch_size": "params.batch_size", "iters": "params.iters",
               "dataset": "params.dataset", "spec": "tags.ffnn.spec", "device_name": "tags.ffnn.device_name",
               "key": f"tags.{TAG_KEY}", "accuracy": "metrics.final_test_accuracy",
               "train_seconds": "metrics.train_seconds", "failure": f"tags.{TAG_FAILURE}",
               "failure_step": f"tags.{TAG_FAILURE_STEP}", "parent_run_id": "tags.mlflow.parentRunId"}
# MLflow 3's UI shows an experiment as a runs table (not as GenAI traces) when it has this tag.
EXPERIMENT_KIND, MODEL_TRAINING = "mlflow.experimentKind", "custom_model_development"
BATCH = 1000  # MLflow's limit of metrics per log_batch call

for _name in ("alembic", "mlflow"):
    logging.getLogger(_name).setLevel(logging.WARNING)


class TrackingError(UserError):
    """The tracking store cannot be used."""


def now_ms() -> int:
    return int(time.time() * 1000)


def resolve_uri(uri: str | None) -> str:
    uri = uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI
    scheme = urlparse(uri).scheme
    if scheme not in ("sqlite", "postgresql", "mysql", "mssql", "http", "https", "file", "databricks") \
            and not scheme.startswith(("postgresql+", "mysql+")):
        raise TrackingError(f"tracking URI {uri!r}: unsupported scheme {scheme!r} (use sqlite:///path.db or http://host:port)")
    return uri


def _sqlite_path(uri: str) -> Path | None:
    if not uri.startswith("sqlite:///"):
        return None
    return Path(uri[len("sqlite:///"):])


def artifact_root(uri: str) -> str | None:
    """``<db folder>/artifacts`` for SQLite stores; the server decides otherwise."""
    db = _sqlite_path(uri)
    if db is None:
        return None
    return (db.resolve().parent / "artifacts").as_uri()


@functools.cache
def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).resolve().parent)
        return out.stdout.strip() if out.returncode == 0 else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def run_key(values: dict[str, Any]) -> str:
    """A stable hash of what determines a run's result."""
    return hashlib.sha256(json.dumps(values, sort_keys=True).encode()).hexdigest()[:32]


def owner() -> str:
    """``host:pid`` of this process, as recorded on the runs and trials it opens."""
    return f"{socket.gethostname()}:{os.getpid()}"


def pid_alive(owner: str) -> bool:
    host, _, pid = owner.rpartition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return True  # someone else's machine: cannot tell, leave it
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _probe_server(uri: str, timeout: float = 10) -> None:
    try:
        with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=timeout):
            pass
    except urllib.error.HTTPError:
        pass  # it answers; the real request will say what is wrong
    except (OSError, ValueError) as e:
        reason = getattr(e, "reason", e)
        raise TrackingError(f"tracking URI {uri!r} is unreachable: {reason}") from None


@contextlib.contextmanager
def _init_lock(db: Path | None):
    if db is None:
        yield
        return
    with open(db.parent / f".{db.name}.lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _writes_finish_before_interrupts(cls):
    """Every public method runs with SIGINT/SIGTERM deferred: a write is never cut in half."""
    for name, member in list(vars(cls).items()):
        if not name.startswith("_") and inspect.isfunction(member):
            setattr(cls, name, deferring(member))
    return cls


@_writes_finish_before_interrupts
@dataclass
class Tracker:
    uri: str
    client: MlflowClient

    @classmethod
    def open(cls, uri: str | None = None) -> "Tracker":
        uri = resolve_uri(uri)
        db = _sqlite_path(uri)
        if db is not None:
            if not db.parent.exists():
                try:
                    db.parent.mkdir(parents=True, exist_ok=True)
                except OSError as e:
                    raise TrackingError(f"tracking URI {uri!r}: cannot create {db.parent} ({e.strerror})") from None
        if uri.startswith(("http://", "https://")):
            _probe_server(uri)  # MLflow's client retries an unreachable server for minutes
        try:
            # Opening a new SQLite store creates its tables; two processes doing that at
            # once corrupt it, so opening holds a lock file beside the database.
            with _init_lock(db):
                client = MlflowClient(tracking_uri=uri)
                client.search_experiments(max_results=1)
        except Exception as e:  # connection errors come as many types
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise TrackingError(f"tracking URI {uri!r} is unreachable or malformed: {first}") from None
        return cls(uri, client)

    # experiments -----------------------------------------------------------
    def experiment_id(self, name: str, create: bool = True) -> str | None:
        exp = self.client.get_experiment_by_name(name)
        if exp is not None:
            if create and exp.tags.get(EXPERIMENT_KIND) != MODEL_TRAINING:
                self.client.set_experiment_tag(exp.experiment_id, EXPERIMENT_KIND, MODEL_TRAINING)
            return exp.experiment_id
        if not create:
            return None
        try:
            root = artifact_root(self.uri)
            slug = re.sub(r"[^A-Za-z0-9._-]+", "_", name)
            return self.client.create_experiment(name, artifact_location=root and f"{root}/{slug}",
                                                 tags={EXPERIMENT_KIND: MODEL_TRAINING})
        except MlflowException:  # created meanwhile by a concurrent process
            return self.client.get_experiment_by_name(name).experiment_id

    def experiment_tags(self, experiment_id: str) -> dict[str, str]:
        return dict(self.client.get_experiment(experiment_id).tags)

    def set_experiment_tags(self, experiment_id: str, tags: dict[str, str]) -> None:
        for k, v in tags.items():
            self.client.set_experiment_tag(experiment_id, k, str(v))

    def experiment_names(self) -> list[str]:
        return [e.name for e in self.client.search_experiments()]

    # runs ------------------------------------------------------------------
    def start_run(self, experiment_id: str, name: str, params: dict[str, Any], tags: dict[str, str],
                  parent_id: str | None = None, description: str | None = None) -> str:
        tags = {**tags, TAG_OWNER: owner(),
                MLFLOW_GIT_COMMIT: git_commit(), "ffnn.git_commit": git_commit()}
        if parent_id:
            tags[MLFLOW_PARENT_RUN_ID] = parent_id
        if description:
            tags[MLFLOW_RUN_NOTE] = description
        run = self.client.create_run(experiment_id, start_time=now_ms(), tags=tags, run_name=name)
        run_id = run.info.run_id
        if params:
            self.client.log_batch(run_id, params=[Param(k, str(v)) for k, v in params.items()])
        return run_id

    def end_run(self, run_id: str, status: str = "FINISHED", tags: dict[str, str] | None = None) -> None:
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

    def log_values(self, run_id: str, values: dict[str, float], step: int = 0) -> None:
        ts = now_ms()
        self.client.log_batch(run_id, metrics=[Metric(k, float(v), ts, step) for k, v in values.items()])

    def log_dataset(self, run_id: str, name: str, digest: str, source: str, n_train: int, n_test: int,
                    context: str = "train") -> None:
        dataset = Dataset(name=name, digest=digest[:36], source_type="local",
                          source=json.dumps({"uri": source}),
                          profile=json.dumps({"num_train": n_train, "num_test": n_test, "sha256": digest}))
        self.client.log_inputs(run_id, [DatasetInput(dataset, [InputTag("mlflow.data.context", context)])])

    def log_files(self, run_id: str, files: dict[str, bytes], artifact_path: str | None = None) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            for name, content in files.items():
                (Path(tmp) / name).write_bytes(content)
            self.client.log_artifacts(run_id, tmp, artifact_path)

    def log_paths(self, run_id: str, paths: Iterable[Path], artifact_path: str | None = None) -> None:
        for p in paths:
            self.client.log_artifact(run_id, str(p), artifact_path)

    def finished_keys(self, experiment_id: str) -> set[str]:
        """``run_key`` tags of FINISHED child runs in the experiment."""
        runs = self.search(experiment_id, f"tags.`{TAG_KIND}` = 'run' and attributes.status = 'FINISHED'")
        return {r.data.tags.get(TAG_KEY) for r in runs}

    def claim(self, experiment_id: str, key: str, run_id: str) -> bool:
        """Keep ``run_id`` only if no other run with this key is FINISHED or live and older.

        Two processes that create the same run at once both call this; the older run
        (by start time, then id) wins and the other is deleted, so exactly one trains.
        """
        runs = self.search(experiment_id, f"tags.`{TAG_KEY}` = '{key}'")
        mine = next((r for r in runs if r.info.run_id == run_id), None)
        if mine is None:
            return True
        rank = (mine.info.start_time, run_id)
        for r in runs:
            if r.info.run_id == run_id:
                continue
            if r.info.status == "FINISHED" or (
                    r.info.status == "RUNNING" and pid_alive(r.data.tags.get(TAG_OWNER, ""))
                    and (r.info.start_time, r.info.run_id) < rank):
                self.client.delete_run(run_id)
                return False
        return True

    def fail_orphans(self, experiment_id: str) -> int:
        """Mark RUNNING runs whose creating process is gone as FAILED; return how many."""
        n = 0
        for r in self.search(experiment_id, "attributes.status = 'RUNNING'"):
            owner = r.data.tags.get(TAG_OWNER)
            if owner and not pid_alive(owner):
                self.end_run(r.info.run_id, "FAILED", {"ffnn.failure": "process ended without closing the run"})
                n += 1
        return n

    def search(self, experiment_id: str, filter_string: str) -> list:
        runs, token = [], None
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
        for d in self.client.get_run(run_id).inputs.dataset_inputs:
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


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def ui_server(uri: str | None = None, port: int = 5000, host: str = "127.0.0.1",
              log: Path | None = None, timeout: float = 90) -> Iterator[tuple[str, subprocess.Popen]]:
    """Run ``mlflow server`` on the store at ``host:port`` (0 = a free port) until the block ends.

    Yields the URL and the process once the server answers ``/health``.
    """
    uri = resolve_uri(uri)
    Tracker.open(uri)  # a clear error for a bad store, and its tables created before the server starts
    if port == 0:
        port = free_port(host)
    else:
        with socket.socket() as s:
            if s.connect_ex((host, port)) == 0:
                raise TrackingError(f"port {port} on {host} is in use (pass --port 0 for a free one)")
    cmd = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", uri,
           "--host", host, "--port", str(port), "--workers", "1"]
    root = artifact_root(uri)
    if root:
        cmd += ["--default-artifact-root", root]
    url = f"http://{host}:{port}"
    out = open(log, "w") if log else subprocess.DEVNULL
    proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.time() + timeout
        while True:
            if proc.poll() is not None:
                raise TrackingError(f"mlflow server exited with status {proc.returncode}"
                                    + (f"; see {log}" if log else ""))
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.time() > deadline:
                raise TrackingError(f"mlflow server did not answer on {url} within {timeout:.0f} s")
            time.sleep(0.3)
        yield url, proc
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        if log:
            out.close()
