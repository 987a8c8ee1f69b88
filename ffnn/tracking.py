"""MLflow: the only module that imports mlflow.

Default store: ``sqlite:///mlruns/mlflow.db`` with artifacts under
``mlruns/artifacts``; ``--tracking-uri`` or ``MLFLOW_TRACKING_URI`` overrides.
One experiment per comparison, one parent run per invocation, one child run
per (model, seed). All writes go through one ``MlflowClient`` in one process.
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import fcntl
import functools
import hashlib
import inspect
import json
import logging
import os
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Container, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, overload
from urllib.parse import urlparse

import pandas as pd
import sqlalchemy

from .errors import UserError, deferring, fault_line, no_space

if TYPE_CHECKING:
    import numpy as np
    import torch

# MLflow sends usage telemetry unless told not to, and decides when it is imported: switch it off
# first, for this process and every process it starts (mlflow server, training workers).
TELEMETRY_OPT_IN = "FFNN_TELEMETRY"  # =1: leave MLflow's telemetry to MLflow's defaults and the user's settings
NO_TELEMETRY = {"MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true"}


def telemetry_env(env: Mapping[str, str]) -> dict[str, str]:
    """``env`` with MLflow's telemetry off, unless it opts in with ``FFNN_TELEMETRY=1``.

    ``telemetry_env({})["MLFLOW_DISABLE_TELEMETRY"] == "true"``
    """
    env = dict(env)
    if env.get(TELEMETRY_OPT_IN) != "1":
        env.update(NO_TELEMETRY)
    return env


if os.environ.get(TELEMETRY_OPT_IN) != "1":
    os.environ.update(NO_TELEMETRY)

import mlflow  # noqa: E402  (after the telemetry switch above)
from mlflow import MlflowClient  # noqa: E402  (after the telemetry switch above)
from mlflow.entities import Dataset, DatasetInput, InputTag, Metric, Param, Run, RunTag  # noqa: E402  (after the switch)
from mlflow.exceptions import MlflowException  # noqa: E402  (after the telemetry switch above)
from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository  # noqa: E402  (after the switch)
from mlflow.utils.mlflow_tags import MLFLOW_GIT_COMMIT, MLFLOW_LOGGED_MODELS, MLFLOW_PARENT_RUN_ID, MLFLOW_RUN_NOTE  # noqa: E402  (after the switch)

DEFAULT_TRACKING_URI = "sqlite:///mlruns/mlflow.db"
TAG_KIND = "ffnn.kind"  # "comparison" (parent), "run" (child), "study", "trial"
TAG_KEY = "ffnn.run_key"  # hash of everything that determines a child run's result
TAG_OWNER = "ffnn.owner"  # host:pid of the process that created a RUNNING run
# ms since the epoch, refreshed every few seconds by the process owning the run's comparison, on
# that comparison's parent run: one small write per process and interval, whatever the run count
TAG_HEARTBEAT = "ffnn.heartbeat"
GRACE_ENV, HOST_ENV = "FFNN_HEARTBEAT_GRACE", "FFNN_HOST"
DEFAULT_GRACE = 120.0  # seconds without a heartbeat after which an owner counts as dead
# An unreachable tracking server fails a command within about 20 s instead of MLflow's minutes of retries.
HTTP_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "3", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
                 "MLFLOW_HTTP_REQUEST_TIMEOUT": "20"}
TAG_FAILURE = "ffnn.failure"  # why a run FAILED, e.g. "diverged: loss is nan at step 120"
TAG_FAILURE_STEP = "ffnn.failure_step"  # the optimizer step where it failed
TAG_SEQUENTIAL = "ffnn.sequential"  # experiment tag: JSON of the --until-decided design (looks, alpha, margin)
TAG_LOOKS = "ffnn.report_looks"  # experiment tag: JSON list of the looks `ffnn report` took (seeds per model)
# which test images a FINISHED child run's final network classified right, "N:base64(packbits)" (ffnn/bits.py);
# absent when the test set is too large for a tag (bits.MAX_TAG_CHARS)
TAG_TEST_CORRECT = "ffnn.test_correct"
# `runs_frame` column of each field a report reads from a child run (mlflow.search_runs names).
RUN_COLUMNS = {"run_id": "run_id", "experiment_id": "experiment_id", "status": "status", "start_time": "start_time",
               "kind": f"tags.{TAG_KIND}", "model": "params.model", "model_tag": "tags.ffnn.model",
               "seed": "params.seed", "hidden": "params.hidden_sizes", "activation": "params.activation",
               "lr": "params.lr", "batch_size": "params.batch_size", "iters": "params.iters",
               "dataset": "params.dataset", "spec": "tags.ffnn.spec", "device_name": "tags.ffnn.device_name",
               "key": f"tags.{TAG_KEY}", "accuracy": "metrics.final_test_accuracy",
               "train_seconds": "metrics.train_seconds", "failure": f"tags.{TAG_FAILURE}",
               "failure_step": f"tags.{TAG_FAILURE_STEP}", "parent_run_id": "tags.mlflow.parentRunId",
               "test_correct": f"tags.{TAG_TEST_CORRECT}"}
# MLflow 3's UI shows an experiment as a runs table (not as GenAI traces) when it has this tag.
EXPERIMENT_KIND, MODEL_TRAINING = "mlflow.experimentKind", "custom_model_development"
BATCH = 1000  # MLflow's limit of metrics per log_batch call
MODEL_PATH = "model"  # the artifact folder of a run's trained network (MLflow PyTorch flavor)
BEST_ALIAS = "best"  # registry alias of each model's best seed

for _name in ("alembic", "mlflow"):
    logging.getLogger(_name).setLevel(logging.WARNING)
# it warns at every model that pickled models run code when loaded (README: load models from stores you trust)
logging.getLogger("mlflow.pytorch").setLevel(logging.ERROR)
# the system-metrics sampler is a background thread: a lost server is reported once, by the command
logging.getLogger("mlflow.system_metrics").setLevel(logging.ERROR)


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


def host() -> str:
    """This machine's name in owner tags: ``FFNN_HOST`` when set (meant for tests that let processes
    stand in for machines), else the host name."""
    return os.environ.get(HOST_ENV) or socket.gethostname()


def owner() -> str:
    """``host:pid`` of this process, as recorded on the runs and trials it opens."""
    return f"{host()}:{os.getpid()}"


def heartbeat_grace() -> float:
    """Seconds without a heartbeat after which a run's owner counts as dead (``FFNN_HEARTBEAT_GRACE``)."""
    raw = os.environ.get(GRACE_ENV)
    if raw is None:
        return DEFAULT_GRACE
    try:
        grace = float(raw)
    except ValueError:
        grace = -1.0
    if not grace > 0:
        raise UserError(f"{GRACE_ENV}={raw!r}: must be a number of seconds > 0")
    return grace


def heartbeat_interval() -> float:
    """Seconds between heartbeats: a quarter of the grace period, at most 10."""
    return min(10.0, heartbeat_grace() / 4)


def pid_alive(owner: str) -> bool:
    """False only when ``owner`` ran on this host and its pid is gone; True when it cannot tell."""
    host_, _, pid = owner.rpartition(":")
    if host_ != host() or not pid.isdigit():
        return True  # someone else's machine: the heartbeat decides
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _local_path(uri: str) -> str | None:
    """The folder of a ``file:`` (or plain path) artifact URI; None for remote stores."""
    parsed = urlparse(uri)
    return parsed.path if parsed.scheme in ("", "file") else None


def _is_unreachable(e: Exception) -> bool:
    text = str(e)
    return ("API request to" in text and ("failed with exception" in text or "failed with timeout" in text)) \
        or "Max retries exceeded" in text


def _credentials_refused(uri: str) -> TrackingError:
    return TrackingError(f"tracking server {uri} refused the credentials: set MLFLOW_TRACKING_USERNAME and "
                         f"MLFLOW_TRACKING_PASSWORD (e.g. from mlruns/cluster.env)")


def _probe_server(uri: str, timeout: float = 10) -> None:
    try:
        with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=timeout):
            pass
    except urllib.error.HTTPError:
        pass  # it answers; the real request will say what is wrong
    except (OSError, ValueError) as e:
        reason = getattr(e, "reason", e)
        raise TrackingError(f"tracking URI {uri!r} is unreachable: {reason}") from None


def _sqlite_wal(dbapi_connection, _record) -> None:
    """SQLite stores run in WAL mode with synchronous=NORMAL: a commit no longer waits for an fsync
    (half the cost of a run's writes), readers (the UI) never block the writer, and a crashed process
    loses nothing it committed; only a power cut can undo the last commits, never corrupt the store."""
    if isinstance(dbapi_connection, sqlite3.Connection):
        cur = dbapi_connection.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.close()


SQLITE_MAGIC = b"SQLite format 3\x00"


def check_sqlite_file(db: Path) -> None:
    """A damaged SQLite store is one line before MLflow sees it (MLflow retries opening it for about 100 s,
    then fails). Reads the 100-byte header only, never writes: a file that is not SQLite, or shorter than
    the pages its header counts (a truncated copy), is a ``TrackingError`` and the file stays as it is."""
    try:
        size = db.stat().st_size
        with open(db, "rb") as f:
            header = f.read(100)
    except FileNotFoundError:
        return  # a new store
    except OSError as e:
        raise TrackingError(f"the store {db} cannot be read ({e.strerror})") from None
    if size == 0:
        return  # created by a process that had not written its tables yet: MLflow creates them
    advice = "ffnn leaves it as it is: restore it from a backup, or pass another --tracking-uri"
    if len(header) < 100 or not header.startswith(SQLITE_MAGIC):
        raise TrackingError(f"the store {db} is not an SQLite database; {advice}")
    page_size = int.from_bytes(header[16:18], "big")
    page_size = 65536 if page_size == 1 else page_size
    pages = int.from_bytes(header[28:32], "big")
    header_valid = header[24:28] == header[92:96]  # the page count holds only for the writer that set it
    if header_valid and pages and size < pages * page_size:
        raise TrackingError(f"the store {db} is damaged: {size:,} bytes where its header counts "
                            f"{pages * page_size:,} (a truncated copy?); {advice}")
    try:  # the schema pages, read-only
        with contextlib.closing(sqlite3.connect(f"{db.absolute().as_uri()}?mode=ro", uri=True, timeout=10)) as con:
            con.execute("SELECT count(*) FROM sqlite_master").fetchone()
    except sqlite3.DatabaseError as e:
        if "malformed" in str(e) or "not a database" in str(e):
            raise TrackingError(f"the store {db} is damaged ({e}); {advice}") from None


RESERVE_BYTES = 1 << 19  # kept free beside a SQLite store while a command writes to it


class SpaceReserve:
    """A file of RESERVE_BYTES beside a SQLite store, deleted when the disk fills up, so that the
    clean-up after it (ending the runs FAILED with the cause) still has room to be written. One per
    process, named by its host and pid; those of dead processes are deleted when a store is opened."""

    def __init__(self, db: Path | None):
        self.path = db.with_name(f".{db.name}.reserve-{host()}-{os.getpid()}") if db is not None else None
        if self.path is None:
            return
        try:
            with open(self.path, "wb") as f:
                os.posix_fallocate(f.fileno(), 0, RESERVE_BYTES)
        except OSError:  # no room even for this, or a file system without fallocate: no reserve
            self.release()

    def release(self) -> None:
        if self.path is not None:
            with contextlib.suppress(OSError):
                self.path.unlink()
            self.path = None

    @staticmethod
    def clear_dead(db: Path) -> None:
        for path in db.parent.glob(f".{db.name}.reserve-*"):
            who, _, pid = path.name.split(".reserve-", 1)[1].rpartition("-")
            if not pid_alive(f"{who}:{pid}"):
                with contextlib.suppress(OSError):
                    path.unlink()


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


def _timed(fn):
    """Adds the call's wall time to ``self.store_seconds`` (outermost calls only)."""
    @functools.wraps(fn)
    def wrapper(self, *args, **kwargs):
        if self._depth:
            return fn(self, *args, **kwargs)
        self._depth += 1
        start = time.perf_counter()
        try:
            return fn(self, *args, **kwargs)
        finally:
            self.store_seconds += time.perf_counter() - start
            self._depth -= 1
    return wrapper


def _cause(e: Exception) -> str:
    """The last reason in MLflow's chained message: ``Connection refused``, ``Read timed out``..."""
    text = str(e).splitlines()[0]
    found = re.findall(r"(?:\] |: )([A-Z][^:\]\)\('\"]{3,80})(?=['\")\]]|$)", text)
    return found[-1].strip() if found else text[-120:]


def _translating(fn):
    """A lost or refusing tracking server becomes one TrackingError line, not MLflow's traceback."""
    @functools.wraps(fn)
    def wrapper(self, *args, **kwargs):
        if self._gone:  # clean-up after a lost server fails at once instead of retrying each write
            raise TrackingError(self._gone)
        try:
            return fn(self, *args, **kwargs)
        except MlflowException as e:
            if _is_unreachable(e):
                self._gone = f"tracking server {self.uri} went away ({_cause(e)})"
                raise TrackingError(self._gone) from None
            if e.error_code in ("UNAUTHENTICATED", "PERMISSION_DENIED") or "401" in str(e)[:200]:
                raise _credentials_refused(self.uri) from None
            if "database or disk is full" in str(e):  # SQLite's words for ENOSPC
                raise no_space(_sqlite_path(self.uri) or self.uri) from e
            raise
    return wrapper


def _writes_finish_before_interrupts(cls):
    """Every public method runs with SIGINT/SIGTERM deferred, so a write is never cut in half; is timed;
    and turns a lost server into a TrackingError."""
    for name, member in list(vars(cls).items()):
        if not name.startswith("_") and inspect.isfunction(member):
            setattr(cls, name, deferring(_timed(_translating(member))))
    return cls


class _Heartbeat:
    """A thread that stamps ``TAG_HEARTBEAT`` on one run every ``interval`` seconds, with its own client
    (MLflow's clients are not shared between threads). A failed stamp is retried at the next beat."""

    def __init__(self, uri: str, run_id: str, interval: float):
        self.run_id = run_id
        self.stop_event = threading.Event()
        self.thread = threading.Thread(target=self._beat, args=(uri, interval), daemon=True,
                                       name=f"ffnn-heartbeat-{run_id[:8]}")
        self.thread.start()

    def _beat(self, uri: str, interval: float) -> None:
        client = MlflowClient(tracking_uri=uri)
        while not self.stop_event.wait(interval):
            with contextlib.suppress(Exception):  # the main thread reports a lost server; the next beat tries again
                client.set_tag(self.run_id, TAG_HEARTBEAT, str(now_ms()))

    def stop(self) -> None:
        self.stop_event.set()
        self.thread.join(timeout=30)


@dataclass(frozen=True)
class _ModelTemplate:
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


def _save_template(model: torch.nn.Module, input_example: np.ndarray) -> _ModelTemplate:
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
        return _ModelTemplate(files, Model.load(path).to_dict())


@_writes_finish_before_interrupts
@dataclass
class Tracker:
    uri: str
    client: MlflowClient
    _artifact_uris: dict[str, str] = field(default_factory=dict)  # run id -> artifact URI, runs created here
    store_seconds: float = 0.0  # wall time spent in this tracker's calls (reads and writes), for the record
    _depth: int = 0
    monitors: dict[str, SystemMetrics] = field(default_factory=dict, repr=False)  # run id -> its sampler
    _heartbeat: _Heartbeat | None = None
    _gone: str | None = None  # why the server is lost, once it is
    _model_templates: dict[tuple, _ModelTemplate] = field(default_factory=dict, repr=False)
    _template_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @classmethod
    def open(cls, uri: str | None = None) -> Tracker:
        uri = resolve_uri(uri)
        db = _sqlite_path(uri)
        if db is not None and not db.parent.exists():
            try:
                db.parent.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise TrackingError(f"tracking URI {uri!r}: cannot create {db.parent} ({e.strerror})") from None
        if db is not None:
            check_sqlite_file(db)
            SpaceReserve.clear_dead(db)
        if db is not None and not sqlalchemy.event.contains(sqlalchemy.engine.Engine, "connect", _sqlite_wal):
            sqlalchemy.event.listen(sqlalchemy.engine.Engine, "connect", _sqlite_wal)
        if uri.startswith(("http://", "https://")):
            for k, v in HTTP_DEFAULTS.items():
                os.environ.setdefault(k, v)
            _probe_server(uri)  # MLflow's client retries an unreachable server for minutes
        try:
            # Opening a new SQLite store creates its tables; two processes doing that at
            # once corrupt it, so opening holds a lock file beside the database.
            with _init_lock(db):
                new = db is not None and (not db.exists() or db.stat().st_size == 0)
                try:
                    client = MlflowClient(tracking_uri=uri)
                    client.search_experiments(max_results=1)
                except BaseException:
                    if new and db is not None:  # a store half-created (a full disk) is not left behind
                        for path in (db, db.with_name(db.name + "-wal"), db.with_name(db.name + "-shm")):
                            path.unlink(missing_ok=True)
                    raise
        except Exception as e:  # connection errors come as many types
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            if "401" in first or "nauthori" in first:
                raise _credentials_refused(uri) from None
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
        return SpaceReserve(_sqlite_path(self.uri))

    def start_heartbeat(self, run_id: str) -> None:
        """Stamp this process's heartbeat on ``run_id`` (its comparison's parent run) until that run ends;
        the runs nested under it count as alive while it is fresh."""
        self.set_tags(run_id, {TAG_HEARTBEAT: str(now_ms())})
        self._heartbeat = _Heartbeat(self.uri, run_id, heartbeat_interval())

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
                dest = _local_path(self._artifact_uris.get(run_id) or repo.artifact_uri)
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

    def _model_template(self, model: torch.nn.Module, input_example: np.ndarray) -> _ModelTemplate:
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

    def finished_keys(self, experiment_id: str) -> set[str]:
        """``run_key`` tags of FINISHED child runs in the experiment."""
        runs = self.search(experiment_id, f"tags.`{TAG_KIND}` = 'run' and attributes.status = 'FINISHED'")
        return {key for r in runs if (key := r.data.tags.get(TAG_KEY)) is not None}

    def claim_many(self, experiment_id: str, mine: dict[str, str]) -> set[str]:
        """For each ``key -> run_id`` just created, keep the run only if no other run with that key is
        FINISHED or RUNNING with a live owner; delete the others; return the keys kept.

        Each process creates its runs, then looks: whoever sees another live run with a key deletes its
        own. Two processes that create the same key at the same moment may both step back (never both
        go on); the job stays unclaimed, and ``open_keys`` hands it out again. One search serves every key.
        """
        if not mine:
            return set()
        held = self.held_keys(experiment_id, exclude=set(mine.values()))
        kept = set()
        for key, run_id in mine.items():
            if key in held:
                self.client.delete_run(run_id)
            else:
                kept.add(key)
        return kept

    def held_keys(self, experiment_id: str, exclude: Container[str] = frozenset()) -> set[str]:
        """``run_key`` tags of child runs FINISHED, or RUNNING with a live owner; runs in ``exclude`` aside."""
        runs = self._unfailed_runs(experiment_id)
        beats: dict[str, int | None] = {}
        return {key for r in runs if r.info.run_id not in exclude and (
            r.info.status == "FINISHED" or (r.info.status == "RUNNING" and self._alive(r, beats)))
            and (key := r.data.tags.get(TAG_KEY)) is not None}

    def statuses(self, experiment_id: str, run_ids: Iterable[str]) -> dict[str, str]:
        """``run_id -> status`` of the given runs of the experiment, in one search per 100."""
        ids, out = list(run_ids), {}
        for i in range(0, len(ids), 100):
            quoted = ", ".join(f"'{r}'" for r in ids[i:i + 100])
            for r in self.search(experiment_id, f"attributes.run_id IN ({quoted})"):
                out[r.info.run_id] = r.info.status
        return out

    def open_keys(self, experiment_id: str, keys: Iterable[str]) -> tuple[set[str], set[str]]:
        """Of ``keys``: those FINISHED, and those nobody is running (dead owners' runs marked FAILED first)."""
        self.fail_orphans(experiment_id)
        runs = self._unfailed_runs(experiment_id)
        finished = {r.data.tags.get(TAG_KEY) for r in runs if r.info.status == "FINISHED"}
        running = {r.data.tags.get(TAG_KEY) for r in runs if r.info.status == "RUNNING"}
        keys = set(keys)
        return keys & finished, keys - finished - running

    def _unfailed_runs(self, experiment_id: str) -> list[Run]:
        """The experiment's child runs that are FINISHED or still RUNNING."""
        return self.search(experiment_id, f"tags.`{TAG_KIND}` = 'run' and attributes.status != 'FAILED' "
                                          f"and attributes.status != 'KILLED'")

    def fail_orphans(self, experiment_id: str) -> int:
        """Mark RUNNING runs whose owner is dead as FAILED, with the reason; return how many.

        Dead: its process is gone from this host, or its heartbeat is older than ``FFNN_HEARTBEAT_GRACE``
        seconds, whatever host it ran on. Runs with no heartbeat (tune's, whose trials Optuna's
        heartbeat watches) are judged by the pid check alone.
        """
        n = 0
        beats: dict[str, int | None] = {}
        for r in self.search(experiment_id, "attributes.status = 'RUNNING'"):
            reason = self._death(r, beats)
            if reason:
                self.end_run(r.info.run_id, "FAILED", {TAG_FAILURE: reason})
                n += 1
        return n

    def _alive(self, run: Run, beats: dict[str, int | None]) -> bool:
        return self._death(run, beats) is None

    def _death(self, run: Run, beats: dict[str, int | None]) -> str | None:
        """Why ``run``'s owner counts as dead, or None while it may be alive. ``beats`` caches heartbeats."""
        owner_ = run.data.tags.get(TAG_OWNER)
        if not owner_ or owner_ == owner():
            return None
        if not pid_alive(owner_):
            return f"process {owner_} ended without closing the run"
        holder = run.info.run_id if TAG_HEARTBEAT in run.data.tags else run.data.tags.get(MLFLOW_PARENT_RUN_ID)
        if holder is None:
            return None
        if holder not in beats:
            if holder == run.info.run_id:
                tag = run.data.tags.get(TAG_HEARTBEAT)
            else:
                try:
                    tag = self.client.get_run(holder).data.tags.get(TAG_HEARTBEAT)
                except MlflowException as e:
                    if _is_unreachable(e):
                        raise
                    tag = None  # parent deleted
            beats[holder] = int(tag) if tag and tag.isdigit() else None
        beat = beats[holder]
        if beat is None:
            return None  # no heartbeat kept (an older ffnn, or a tune run): the pid check alone decides
        age = (now_ms() - beat) / 1000
        grace = heartbeat_grace()
        if age > grace:
            return f"owner {owner_} stopped: no heartbeat for {age:.0f} s (grace {grace:g} s)"
        return None

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


def registry_name(experiment: str, model: str) -> str:
    """The Model Registry name of an experiment's model: ``registry_name("compare", "C*") == "compare-C-tuned"``.

    ``*`` (a tuned model) reads badly in ``models:/`` URIs; ``/`` and ``:`` are not allowed in names.
    """
    return re.sub(r"[/:]", "_", f"{experiment}-{model.replace('*', '-tuned')}")


class SystemMetrics:
    """MLflow's own ``SystemMetricsMonitor`` on one run: a thread samples CPU, memory, disk, network and
    (with nvidia-ml-py and an NVIDIA GPU) GPU use every ``interval`` seconds and logs their mean over
    ``samples`` samples as ``system/*`` metrics, through its own client, as the run's only other writer.

    ``stop`` (or leaving the ``with`` block) ends the thread and logs the samples taken since the last
    point, so a short run gets at least one.
    """

    def __init__(self, uri: str, run_id: str, interval: float = 2.0, samples: int = 5):
        self.monitor = None
        try:
            from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor
            self.monitor = SystemMetricsMonitor(run_id, sampling_interval=interval, samples_before_logging=samples,
                                                tracking_uri=uri)
        except ImportError as e:  # psutil is missing
            logging.getLogger(__name__).warning(f"no system metrics: {e}")
            return
        self.monitor.start()

    def stop(self) -> None:
        monitor, self.monitor = self.monitor, None
        if monitor is None:
            return
        monitor.finish()  # sets the thread's stop event and joins it
        leftover = {k: v for k, v in monitor.aggregate_metrics().items() if v == v}
        if leftover:
            monitor.publish_metrics(leftover)
            monitor.mlflow_logger.flush()

    def __enter__(self) -> SystemMetrics:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def runs_link(url: str, experiment_id: str) -> str:
    """The MLflow UI's runs table of an experiment.

    MLflow 3.17's UI opens an experiment on its GenAI overview (traces) unless the workflow type is
    "machine learning": the sidebar's GenAI / Model training switch, remembered per browser, or
    ``workflowType`` in the URL. The experiment's ``mlflow.experimentKind`` tag is not read. The link sets it.
    """
    return f"{url}/#/experiments/{experiment_id}/runs?workflowType=machine_learning"


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
    with open(log or os.devnull, "w") as out:  # the server writes to its own copy of the file
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                                env=telemetry_env(os.environ))
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
