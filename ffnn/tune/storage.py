"""The Optuna storage of the studies: opening it, the trials' heartbeat, and trials whose process died.

A trial whose process stopped is FAILED and retried with the same params (``StaleTrials``), and its MLflow
run is ended with the reason; an MLflow run left RUNNING after its trial finished is ended (``reconcile``).
"""

from __future__ import annotations

import contextlib
import math
import re
import threading
import time
import warnings
from collections.abc import Callable
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import Protocol, runtime_checkable

import optuna
from optuna.trial import TrialState

from ..config import TuneConfig
from ..errors import UserError
from ..tracking import (
    TAG_FAILURE,
    TAG_KIND,
    TAG_MODEL,
    TAG_STATE,
    TAG_STUDY,
    TAG_TRIAL,
    Run,
    SpaceReserve,
    Tracker,
    heartbeat_grace,
    heartbeat_interval,
    pid_alive,
    trial_runs,
    use_wal,
)

MLFLOW_STATUS = {"COMPLETE": "FINISHED", "PRUNED": "KILLED", "FAIL": "FAILED"}

OnStale = Callable[[optuna.Study, optuna.trial.FrozenTrial], None]


class StorageError(UserError):
    """The Optuna storage cannot be used."""


def storage_label(url: str) -> str:
    """The URL without its password, for tags and messages."""
    return re.sub(r"(://[^:/@]+):[^@]*@", r"\1:***@", url)


def run_label(cfg: TuneConfig, model: str) -> str:
    """``C`` for the default study name, else the study name: runs are named ``study C trial 12``."""
    name = cfg.name_of(model)
    return model if name == TuneConfig.study_name.format(model=model) else name


def open_storage(url: str, on_stale: OnStale | None = None) -> optuna.storages.BaseStorage:
    """An RDB URL (``sqlite:///...``, ``postgresql://...``), ``redis://...``, or a journal file path.

    RDB storages keep Optuna's heartbeat: a RUNNING trial whose heartbeat is older than
    ``FFNN_HEARTBEAT_GRACE`` seconds is FAILED by the next process that asks, and ``on_stale`` is called
    with it (see ``StaleTrials``)."""
    grace = heartbeat_grace()
    rdb = partial(optuna.storages.RDBStorage, url, heartbeat_interval=max(1, int(heartbeat_interval())),
                  grace_period=max(2, math.ceil(grace)), heartbeat_stale_trial_callback=on_stale)
    try:
        if url.startswith("redis://"):
            from optuna.storages.journal import JournalRedisBackend
            return optuna.storages.JournalStorage(JournalRedisBackend(url))
        if "://" not in url:  # a journal file: safe for several processes appending at once
            Path(url).parent.mkdir(parents=True, exist_ok=True)
            from optuna.storages.journal import JournalFileBackend
            return optuna.storages.JournalStorage(JournalFileBackend(url))
        warnings.filterwarnings("ignore", "Argument ``heartbeat_interval``", optuna.exceptions.ExperimentalWarning)
        if not url.startswith("sqlite:///"):
            return rdb()
        Path(url[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
        # another tune or optuna-dashboard may hold the lock for a moment: wait, do not fail
        rdb = partial(rdb, engine_kwargs={"connect_args": {"timeout": 60}})
        for attempt in range(2):
            try:
                return _sqlite_rdb(rdb, url)
            except Exception:
                time.sleep(1 + attempt)  # another process was creating the schema at this instant
        return _sqlite_rdb(rdb, url)  # the third try: its error is the caller's
    except Exception as e:  # driver and connection errors come as many types
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise StorageError(f"Optuna storage {storage_label(url)!r} is unusable: {first}") from None


def _sqlite_rdb(rdb: Callable[[], optuna.storages.RDBStorage], url: str) -> optuna.storages.RDBStorage:
    storage = rdb()
    db = Path(url[len("sqlite:///"):])
    use_wal(db)  # the dashboard reads while trials are written
    SpaceReserve.clear_dead(db)  # the room dead processes kept beside it (driver._run_study)
    return storage


class StaleTrials:
    """Called for each trial whose process stopped beating (or is gone from this host): Optuna has FAILED
    it; this retries it (``RetryHeartbeatStaleTrialCallback``: the same params, a new trial) and ends its MLflow run
    FAILED with the reason, creating that run if its process died before it could."""

    def __init__(self, cfg: TuneConfig):
        self.cfg = cfg
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            self.retry = optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=3)
        self.tracker: Tracker | None = None  # set once the tracking store is open
        self.exp_id = ""

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            self.retry(study, trial)
        if self.tracker is None:
            return
        reason = (f"owner {trial.user_attrs.get('owner', '?')} stopped: no heartbeat within "
                  f"{heartbeat_grace():g} s; retried as a new trial")
        tags = {TAG_STATE: "FAIL", TAG_FAILURE: reason}
        params = {"trial_number": trial.number, **trial.params}
        run = trial_run(self.tracker, self.exp_id, study, trial.number)
        if run is None:
            model, k = next(((m, k) for m in self.cfg.families for k in range(1, self.cfg.studies + 1)
                             if self.cfg.name_of(m, k) == study.study_name), ("", 0))
            parents = self.tracker.find_runs(self.exp_id, {TAG_KIND: "study", TAG_STUDY: study.study_name})
            run_id = self.tracker.start_run(
                self.exp_id, f"study {run_label(self.cfg, model) if k == 1 else study.study_name} trial {trial.number}",
                params, tags={TAG_KIND: "trial", TAG_STUDY: study.study_name, TAG_TRIAL: str(trial.number),
                              TAG_MODEL: model},
                parent_id=parents[0] if parents else None)
        else:
            run_id = run.info.run_id
            if not run.data.params:  # its process died between creating the run and logging its params
                self.tracker.log_run(run_id, {}, {}, 0, {}, params)
        self.tracker.end_run(run_id, "FAILED", tags)


def trial_run(tracker: Tracker, exp_id: str, study: optuna.Study, number: int) -> Run | None:
    """The MLflow run of trial ``number``, found by its tags (by its params for runs from before the tag)."""
    base = trial_runs(study.study_name)
    runs = tracker.search(exp_id, f"{base} and tags.`{TAG_TRIAL}` = '{number}'") or \
        tracker.search(exp_id, f"{base} and params.trial_number = '{number}'")
    return runs[0] if runs else None


def trial_number(run: Run) -> int:
    """The trial a trial run belongs to (-1 for none)."""
    return int(run.data.tags.get(TAG_TRIAL, run.data.params.get("trial_number", -1)))


def fail_unowned(study: optuna.Study, on_stale: OnStale | None) -> None:
    """FAIL (and retry) RUNNING trials older than the grace period that no process took up: their process
    died between asking and recording its first heartbeat, so Optuna's heartbeat cannot see them."""
    grace = heartbeat_grace()

    def unowned(t: optuna.trial.FrozenTrial) -> bool:
        age = (datetime.now() - t.datetime_start).total_seconds() if t.datetime_start else 0
        return t.user_attrs.get("owner_trial") != t.number and age > grace

    fail_running(study, unowned, on_stale)


def fail_dead_owners(study: optuna.Study, on_stale: OnStale | None) -> None:
    """FAIL (and retry) RUNNING trials whose process is gone from this host: no need to wait for the grace."""
    fail_running(study, lambda t: bool(t.user_attrs.get("owner")) and not pid_alive(t.user_attrs["owner"]),
                 on_stale)


def fail_running(study: optuna.Study, dead: Callable[[optuna.trial.FrozenTrial], bool],
                 on_stale: OnStale | None) -> None:
    """FAIL the RUNNING trials that ``dead`` picks, and hand each to ``on_stale`` (``StaleTrials``: retried,
    its MLflow run ended), the callback the storage was opened with, as Optuna's own heartbeat check would."""
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if dead(t):
            study.tell(t.number, state=TrialState.FAIL, skip_if_finished=True)
            if on_stale is not None:
                on_stale(study, t)


@runtime_checkable
class _Heartbeats(Protocol):
    """What a storage that keeps Optuna's trial heartbeat offers (Optuna exports no such base class)."""

    def get_heartbeat_interval(self) -> int | None: ...

    def record_heartbeat(self, trial_id: int) -> None: ...


class TrialHeartbeat:
    """Records Optuna's heartbeat for this process's running trials from a thread (``study.optimize``
    would do it; we ask and tell ourselves). One write per trial and interval."""

    def __init__(self, storage: optuna.storages.BaseStorage, study_name: str):
        # the storages that keep Optuna's heartbeat (RDB) have these two public methods; on when given an interval
        self.storage = storage if isinstance(storage, _Heartbeats) else None
        self.base = storage
        self.study_id = storage.get_study_id_from_name(study_name)
        self.trial_ids: dict[int, int] = {}  # trial number -> the storage's trial id
        self.enabled = self.storage is not None and self.storage.get_heartbeat_interval() is not None
        self.stop_event = threading.Event()
        self.thread = threading.Thread(target=self._beat, daemon=True, name="ffnn-trial-heartbeat")
        if self.enabled:
            self.thread.start()

    def _beat(self) -> None:
        assert self.storage is not None  # started only when enabled
        while not self.stop_event.wait(self.storage.get_heartbeat_interval()):
            for trial_id in list(self.trial_ids.values()):
                with contextlib.suppress(Exception):  # a lost database shows in the main thread; next beat retries
                    self.storage.record_heartbeat(trial_id)

    def add(self, trial: optuna.Trial) -> None:
        if self.enabled and self.storage is not None:
            trial_id = self.base.get_trial_id_from_study_id_trial_number(self.study_id, trial.number)
            self.storage.record_heartbeat(trial_id)
            self.trial_ids[trial.number] = trial_id

    def discard(self, trial: optuna.Trial) -> None:
        self.trial_ids.pop(trial.number, None)

    def stop(self) -> None:
        self.stop_event.set()
        if self.enabled:
            self.thread.join(timeout=30)


def reconcile(study: optuna.Study, tracker: Tracker, exp_id: str) -> int:
    """End MLflow trial runs left RUNNING although Optuna finished their trial (a process died between the
    two writes); return how many."""
    states = {t.number: t.state.name for t in study.get_trials(deepcopy=False)}
    n = 0
    for r in tracker.search(exp_id, trial_runs(study.study_name, "RUNNING")):
        state = states.get(trial_number(r))
        if state in MLFLOW_STATUS:
            tracker.end_run(r.info.run_id, MLFLOW_STATUS[state], {TAG_STATE: state})
            n += 1
    return n
