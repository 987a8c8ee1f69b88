"""`tune`: one Optuna study per architecture family; every trial is a nested MLflow run.

The only module that imports optuna. The objective is the accuracy on a fixed
validation split held out from the training set (``data.split_validation``);
the test set is dropped as soon as the data is loaded. Trials train in worker
processes (or in this one, with one worker). This process alone writes to the
Optuna storage and to MLflow: a worker sends each evaluation and waits for the
prune decision, so N workers never race on either store.
"""

from __future__ import annotations

import contextlib
import json
import math
import re
import signal
import threading
import time
import warnings
import zlib
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import Protocol, runtime_checkable

import optuna
import torch
from optuna.trial import TrialState

from .compare import Progress, RunRow, compare
from .config import CompareConfig, ConfigError, Family, TuneConfig, validate_train
from .context import Context
from .engine import Engine, worker_count
from .errors import Interrupted, UserError, deferring, ignore_interrupts, install_interrupt_handlers
from .jobs import LOSS_STRIDE, Outcome, TrialJob, load_split, trial_work, window_means
from .models import REGISTRY, ModelSpec, count_params
from .tracking import TAG_FAILURE, TAG_KIND, Tracker, heartbeat_grace, heartbeat_interval, owner, pid_alive
from .train import EvalPoint, TrainConfig

optuna.logging.set_verbosity(optuna.logging.WARNING)

TAG_STUDY = "ffnn.study"  # the Optuna study name, on the study's parent run and on every trial run
TAG_STATE = "ffnn.trial_state"  # COMPLETE, PRUNED or FAIL (Optuna's names); RUNNING meanwhile
MLFLOW_STATUS = {"COMPLETE": "FINISHED", "PRUNED": "KILLED", "FAIL": "FAILED"}
CONFIG_ATTR = "ffnn_config"  # study user attr: what must stay the same for trials to be comparable


class StorageError(UserError):
    """The Optuna storage cannot be used."""


# ---------------------------------------------------------------- search space
def suggest(trial: optuna.Trial, family: Family) -> tuple[ModelSpec, float]:
    """Sample a model and a learning rate; parameters are named after the structure (``n_units_l0``, ``lr``)."""
    lo, hi = family.width
    if family.shared_width and family.depth:
        hidden = (trial.suggest_int("n_units", lo, hi, log=True),) * family.depth
    else:
        hidden = tuple(trial.suggest_int(f"n_units_l{i}", lo, hi, log=True) for i in range(family.depth))
    lr = trial.suggest_float("lr", *family.lr, log=True)
    return ModelSpec(hidden, family.activation if hidden else "none"), lr


def spec_of(params: dict, family: Family) -> ModelSpec:
    """The model that ``suggest`` built from these params: ``{"n_units_l0": 64, "lr": 0.1}`` -> 784-64-10."""
    if "n_units" in params:
        hidden = (int(params["n_units"]),) * family.depth
    else:
        hidden = tuple(int(params[f"n_units_l{i}"]) for i in range(family.depth))
    return ModelSpec(hidden, family.activation if hidden else "none")


# ---------------------------------------------------------------- storage
def storage_label(url: str) -> str:
    """The URL without its password, for tags and messages."""
    return re.sub(r"(://[^:/@]+):[^@]*@", r"\1:***@", url)


def open_storage(url: str, on_stale: Callable[[optuna.Study, optuna.trial.FrozenTrial], None] | None = None
                 ) -> optuna.storages.BaseStorage:
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
                return rdb()
            except Exception:
                time.sleep(1 + attempt)  # another process was creating the schema at this instant
        return rdb()  # the third try: its error is the caller's
    except Exception as e:  # driver and connection errors come as many types
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise StorageError(f"Optuna storage {storage_label(url)!r} is unusable: {first}") from None


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
        run_id = _trial_run(self.tracker, self.exp_id, study, trial.number)
        if run_id is None:
            model = next((m for m in self.cfg.families if self.cfg.name_of(m) == study.study_name), "")
            parents = self.tracker.find_runs(self.exp_id, {TAG_KIND: "study", TAG_STUDY: study.study_name})
            run_id = self.tracker.start_run(
                self.exp_id, f"study {run_label(self.cfg, model) if model else study.study_name} trial {trial.number}",
                {"trial_number": trial.number, **trial.params},
                tags={TAG_KIND: "trial", TAG_STUDY: study.study_name, "ffnn.model": model},
                parent_id=parents[0] if parents else None)
        self.tracker.end_run(run_id, "FAILED", tags)


def _trial_run(tracker: Tracker, exp_id: str, study: optuna.Study, number: int) -> str | None:
    """The MLflow run of trial ``number``, found by its tags, if it has one."""
    runs = tracker.search(exp_id, f"tags.`{TAG_KIND}` = 'trial' and tags.`{TAG_STUDY}` = '{study.study_name}' "
                                  f"and params.trial_number = '{number}'")
    return runs[0].info.run_id if runs else None


def _fail_unowned(study: optuna.Study) -> None:
    """FAIL (and retry) RUNNING trials older than the grace period that no process took up: their process
    died between asking and recording its first heartbeat, so Optuna's heartbeat cannot see them."""
    grace = heartbeat_grace()

    def unowned(t: optuna.trial.FrozenTrial) -> bool:
        age = (datetime.now() - t.datetime_start).total_seconds() if t.datetime_start else 0
        return t.user_attrs.get("owner_trial") != t.number and age > grace

    _fail_running(study, unowned)


def _fail_running(study: optuna.Study, dead: Callable[[optuna.trial.FrozenTrial], bool]) -> None:
    """FAIL the RUNNING trials that ``dead`` picks, and hand each to the storage's stale-trial callback
    (``StaleTrials``: retried, its MLflow run ended) as Optuna's own heartbeat check would."""
    on_stale = getattr(study._storage, "get_heartbeat_stale_trial_callback", lambda: None)()
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


class _TrialHeartbeat:
    """Records Optuna's heartbeat for this process's running trials from a thread (``study.optimize``
    would do it; we ask and tell ourselves). One write per trial and interval."""

    def __init__(self, storage: optuna.storages.BaseStorage):
        # the storages that keep Optuna's heartbeat (RDB) have these two public methods; on when given an interval
        self.storage = storage if isinstance(storage, _Heartbeats) else None
        self.trial_ids: set[int] = set()
        self.enabled = self.storage is not None and self.storage.get_heartbeat_interval() is not None
        self.stop_event = threading.Event()
        self.thread = threading.Thread(target=self._beat, daemon=True, name="ffnn-trial-heartbeat")
        if self.enabled:
            self.thread.start()

    def _beat(self) -> None:
        assert self.storage is not None  # started only when enabled
        while not self.stop_event.wait(self.storage.get_heartbeat_interval()):
            for trial_id in list(self.trial_ids):
                with contextlib.suppress(Exception):  # a lost database shows in the main thread; next beat retries
                    self.storage.record_heartbeat(trial_id)

    def add(self, trial: optuna.Trial) -> None:
        if self.enabled and self.storage is not None:
            self.storage.record_heartbeat(trial._trial_id)
            self.trial_ids.add(trial._trial_id)

    def discard(self, trial: optuna.Trial) -> None:
        self.trial_ids.discard(trial._trial_id)

    def stop(self) -> None:
        self.stop_event.set()
        if self.enabled:
            self.thread.join(timeout=30)


def _reconcile(study: optuna.Study, tracker: Tracker, exp_id: str) -> int:
    """End MLflow trial runs left RUNNING although Optuna finished their trial (a process died between the
    two writes); return how many."""
    states = {t.number: t.state.name for t in study.get_trials(deepcopy=False)}
    n = 0
    for r in tracker.search(exp_id, f"tags.`{TAG_KIND}` = 'trial' and tags.`{TAG_STUDY}` = '{study.study_name}' "
                                    f"and attributes.status = 'RUNNING'"):
        state = states.get(int(r.data.params.get("trial_number", -1)))
        if state in MLFLOW_STATUS:
            tracker.end_run(r.info.run_id, MLFLOW_STATUS[state], {TAG_STATE: state})
            n += 1
    return n


def _fingerprint(cfg: TuneConfig, model: str) -> dict:
    """What a study's trials share; a resume with other values would mix incomparable trials."""
    t = cfg.train
    return json.loads(json.dumps({
        "family": asdict(cfg.families[model]), "dataset": cfg.dataset, "val_size": cfg.val_size,
        "split_seed": cfg.split_seed, "batch_size": t.batch_size, "iters": t.iters, "eval_every": t.eval_every,
        "seed": t.seed}))


def make_sampler(cfg: TuneConfig, n_existing: int) -> optuna.samplers.BaseSampler:
    # seeded by the history's length: a resumed study must not replay the first run's random points;
    # and by the process (host:pid): processes sharing a study at once must not sample the same points
    seed = (cfg.sampler_seed + n_existing + zlib.crc32(owner().encode())) % 2**32
    if cfg.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    # constant_liar: running trials count as bad guesses, so parallel workers spread out
    return optuna.samplers.TPESampler(seed=seed, constant_liar=True)


def make_pruner(cfg: TuneConfig) -> optuna.pruners.BasePruner:
    if cfg.pruner == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=cfg.startup_trials, n_warmup_steps=cfg.warmup_steps)
    if cfg.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=cfg.train.eval_every, max_resource=cfg.train.iters,
                                              reduction_factor=cfg.reduction_factor)
    return optuna.pruners.NopPruner()


def open_study(cfg: TuneConfig, model: str, storage: optuna.storages.BaseStorage) -> optuna.Study:
    """Create the study or load it (``load_if_exists``); refuse a resume with another budget or space."""
    name = cfg.name_of(model)
    study = optuna.create_study(storage=storage, study_name=name, direction="maximize", load_if_exists=True)
    if study.direction != optuna.study.StudyDirection.MAXIMIZE:
        raise ConfigError(f"study {name!r} in {storage_label(cfg.storage)} minimizes; use another --study-name")
    wanted = _fingerprint(cfg, model)
    have = study.user_attrs.get(CONFIG_ATTR)
    if have is None:
        study.set_user_attr(CONFIG_ATTR, wanted)
    elif have != wanted:
        diff = [k for k in wanted if have.get(k) != wanted[k]]
        k = diff[0] if diff else "config"
        raise ConfigError(f"study {name!r} in {storage_label(cfg.storage)} was created with {k}={have.get(k)!r}, "
                          f"not {wanted.get(k)!r}; use another --study-name, or the same settings to resume")
    # a trial whose process is gone from this host: no need to wait for the grace
    _fail_running(study, lambda t: bool(t.user_attrs.get("owner")) and not pid_alive(t.user_attrs["owner"]))
    n = len(study.get_trials(deepcopy=False))
    return optuna.load_study(study_name=name, storage=storage, sampler=make_sampler(cfg, n),
                             pruner=make_pruner(cfg))


def run_label(cfg: TuneConfig, model: str) -> str:
    """``C`` for the default study name, else the study name: runs are named ``study C trial 12``."""
    name = cfg.name_of(model)
    return model if name == TuneConfig.study_name.format(model=model) else name


# ---------------------------------------------------------------- one study, driven from this process
@dataclass
class _Running:
    trial: optuna.Trial
    run_id: str
    job: TrialJob
    accuracy: float = math.nan  # the last validation accuracy reported


@dataclass
class StudySummary:
    model: str  # family name
    name: str  # Optuna study name
    states: dict[str, int]  # every trial in the study, by state
    finished_now: int  # trials this invocation finished
    seconds: float  # this invocation's wall time on the study
    best_number: int | None = None
    best_value: float | None = None  # validation accuracy, percent
    best_params: dict = field(default_factory=dict)
    best_spec: ModelSpec | None = None
    out: Path | None = None  # reports folder
    files: list[Path] = field(default_factory=list)
    parent_run_id: str = ""
    notes: list[str] = field(default_factory=list)

    @property
    def trials_per_minute(self) -> float:
        return 60.0 * self.finished_now / self.seconds if self.seconds > 0 else math.nan


class _Study:
    """One Optuna study and its MLflow parent run: asks, reports, tells, and logs every trial."""

    def __init__(self, cfg: TuneConfig, model: str, study: optuna.Study, tracker: Tracker, exp_id: str,
                 parent_id: str, device: torch.device, say: Callable[[str], None]):
        self.cfg, self.model, self.study, self.tracker = cfg, model, study, tracker
        self.exp_id, self.parent_id, self.device, self.say = exp_id, parent_id, device, say
        self.family = cfg.families[model]
        self.label = run_label(cfg, model)
        self.running: dict[int, _Running] = {}
        self.started = 0
        self.finished = 0
        self.heartbeat = _TrialHeartbeat(study._storage)

    @deferring  # ask, run and registration in one step that an interrupt cannot split
    def start_trial(self) -> TrialJob:
        with warnings.catch_warnings():  # Optuna warns that its heartbeat is meant for study.optimize
            warnings.simplefilter("ignore")
            optuna.storages.fail_stale_trials(self.study)  # dead processes' trials: FAILED and queued again
            _fail_unowned(self.study)
            trial = self.study.ask()
        self.heartbeat.add(trial)
        trial.set_user_attr("owner", owner())
        trial.set_user_attr("owner_trial", trial.number)  # a retried trial inherits its failed twin's attrs
        spec, lr = suggest(trial, self.family)
        job = TrialJob(trial.number, spec, replace(self.cfg.train, lr=lr))
        c = job.cfg
        params = {"model": self.model, "activation": spec.activation_name, "hidden_sizes": spec.hidden_str,
                  "lr": lr, "batch_size": c.batch_size, "iters": c.iters, "eval_every": c.eval_every,
                  "seed": c.seed, "dataset": self.cfg.dataset, "device": self.device.type,
                  "n_params": count_params(spec), "trial_number": trial.number,
                  **{k: v for k, v in trial.params.items() if k != "lr"}}
        run_id = self.tracker.start_run(
            self.exp_id, f"study {self.label} trial {trial.number}", params,
            tags={TAG_KIND: "trial", TAG_STUDY: self.study.study_name, TAG_STATE: "RUNNING",
                  "ffnn.model": self.model, "ffnn.spec": spec.describe()},
            parent_id=self.parent_id)
        for k, v in {"mlflow_run_id": run_id, "hidden_sizes": spec.hidden_str}.items():
            trial.set_user_attr(k, v)
        self.running[trial.number] = _Running(trial, run_id, job)
        self.started += 1
        return job

    @deferring
    def report(self, number: int, point: EvalPoint) -> bool:
        """Record one evaluation; True when the trial should stop."""
        r = self.running[number]
        r.accuracy = point.accuracy
        r.trial.report(point.accuracy, point.step)
        self.tracker.log_metrics(r.run_id, "val_accuracy", [(point.step, point.accuracy)])
        self.tracker.log_metrics(r.run_id, "train_loss", window_means(point.losses, LOSS_STRIDE))
        if point.step >= r.job.cfg.iters:
            return False  # done anyway: a finished trial tells the sampler more than a pruned one
        return r.trial.should_prune()

    @deferring
    def finish(self, number: int, outcome: Outcome) -> None:
        r = self.running.pop(number)
        self.heartbeat.discard(r.trial)
        self.finished += 1
        if outcome.losses:
            self.tracker.log_metrics(r.run_id, "train_loss", window_means(outcome.losses, LOSS_STRIDE))
        tags = {TAG_STATE: outcome.state, "ffnn.stopped_step": str(outcome.step)}
        if outcome.state == "PRUNED" and not outcome.reason:
            outcome.reason = (f"pruned by {type(self.study.pruner).__name__} at iteration {outcome.step} "
                              f"(validation accuracy {r.accuracy:.2f}%)")
            tags["ffnn.pruned"] = outcome.reason
            r.trial.set_user_attr("pruned", outcome.reason)
        elif outcome.reason:
            tags[TAG_FAILURE] = outcome.reason
            r.trial.set_user_attr("failure", outcome.reason)
        self.tracker.log_values(r.run_id, {"train_seconds": outcome.seconds}, step=outcome.step)
        if outcome.state == "COMPLETE":
            self.tracker.log_values(r.run_id, {"final_val_accuracy": outcome.value}, step=outcome.step)
            self.study.tell(r.trial, outcome.value)
        else:
            self.study.tell(r.trial, state=TrialState[outcome.state])
        self.tracker.end_run(r.run_id, MLFLOW_STATUS[outcome.state], tags)
        best = self._best()
        if outcome.state == "COMPLETE":
            self.tracker.log_values(self.parent_id, {"trial_val_accuracy": outcome.value}, step=number)
            if best is not None and best.value is not None:
                self.tracker.log_values(self.parent_id, {"best_val_accuracy": best.value}, step=number)
        what = (f"{outcome.value:.2f}% val" if outcome.state == "COMPLETE" else outcome.reason)
        self.say(f"{self.label} trial {number}: {outcome.state} {what} | {r.job.spec.describe()}, "
                 f"lr {r.job.cfg.lr:.3g}, {outcome.seconds:.1f}s"
                 + (f" | best {best.value:.2f}% (trial {best.number})" if best is not None else ""))

    def abort(self, status: str, reason: str) -> None:
        """End the running trials: FAIL in Optuna, ``status`` in MLflow."""
        for number, r in list(self.running.items()):
            r.trial.set_user_attr("failure", reason)
            self.study.tell(r.trial, state=TrialState.FAIL, skip_if_finished=True)
            self.tracker.end_run(r.run_id, status, {TAG_STATE: "FAIL", TAG_FAILURE: reason})
            self.heartbeat.discard(r.trial)
            del self.running[number]

    def _best(self) -> optuna.trial.FrozenTrial | None:
        try:
            return self.study.best_trial
        except ValueError:  # no finished trial yet
            return None


# ---------------------------------------------------------------- the command
@dataclass
class TuneResult:
    studies: list[StudySummary]
    storage: str  # label, password hidden
    tracking_uri: str
    workers: int
    final: dict[str, list[RunRow]] = field(default_factory=dict)  # model name (C, C*) -> comparison rows


def tune(cfg: TuneConfig, ctx: Context, progress: Callable[[str], None] | None = None,
         compare_progress: Progress | None = None) -> TuneResult:
    """Run ``cfg.n_trials`` more trials of each family's study; then, with ``cfg.final``, retrain the best."""
    say = progress or (lambda msg: None)
    if cfg.val_size >= ctx.n_train:
        raise ConfigError(f"val_size ({cfg.val_size}) must be smaller than the training set ({ctx.n_train})")
    validate_train(cfg.train, ctx.n_train - cfg.val_size)
    stale = StaleTrials(cfg)
    storage = open_storage(cfg.storage, stale)
    tracker = ctx.tracker
    exp_id = tracker.experiment_id(cfg.experiment, description=(
        f"Made by `ffnn tune --experiment {cfg.experiment}`: one parent run per Optuna study (its search space, "
        f"best_params.json, Optuna's plots), one nested run per trial (validation accuracy per evaluation; "
        f"pruned trials KILLED). Trials live in the Optuna storage too: `make dashboard`."))
    stale.tracker, stale.exp_id = tracker, exp_id
    tracker.fail_orphans(exp_id)
    workers = worker_count(cfg.workers, ctx.device, cfg.n_trials)

    result = TuneResult([], storage_label(cfg.storage), tracker.uri, workers)
    engine: Engine | None = None
    old_handlers = install_interrupt_handlers()
    graceful = False
    try:
        if cfg.n_trials:
            say(f"{workers} training process{'es' if workers > 1 else ''} on {ctx.device_name}; "
                f"validation: {cfg.val_size} of {ctx.n_train} training images; storage {result.storage}")
            engine = ctx.engine(trial_work, workers, partial(load_split, ctx.dataset, ctx.data_dir, str(ctx.device),
                                                             cfg.val_size, cfg.split_seed))
        for model in cfg.models:
            result.studies.append(_run_study(cfg, model, storage, ctx, exp_id, engine, say))
        graceful = True
    finally:
        for signum, handler in old_handlers.items():
            signal.signal(signum, handler)
        if engine is not None:
            engine.close(graceful)
    if cfg.final:
        result.final = final_runs(cfg, result.studies, ctx, say, compare_progress)
    return result


def _run_study(cfg: TuneConfig, model: str, storage: optuna.storages.BaseStorage, ctx: Context, exp_id: str,
               engine: Engine | None, say: Callable[[str], None]) -> StudySummary:
    tracker = ctx.tracker
    study = open_study(cfg, model, storage)
    name = study.study_name
    parent_id = _parent_run(cfg, model, name, ctx, exp_id)
    tracker.set_tags(parent_id, {"ffnn.sampler": cfg.sampler, "ffnn.pruner": cfg.pruner,
                                 "ffnn.n_trials_requested": str(cfg.n_trials), "ffnn.device_name": ctx.device_name,
                                 "ffnn.optuna_version": optuna.__version__})
    st = _Study(cfg, model, study, tracker, exp_id, parent_id, ctx.device, say)
    before = len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)))
    say(f"study {name!r}: {before} trials so far; running {cfg.n_trials} more"
        + (f" (at most {cfg.timeout:g}s)" if cfg.timeout else ""))
    start = time.monotonic()

    def next_trial() -> TrialJob | None:
        if st.started < cfg.n_trials and (cfg.timeout is None or time.monotonic() - start < cfg.timeout):
            return st.start_trial()
        return None

    try:
        if engine is not None:
            engine.run(next_trial, lambda job, outcome: st.finish(job.number, outcome),
                       lambda job, error: st.finish(job.number, Outcome("FAIL", reason=error.splitlines()[0][:500])),
                       lambda job, point: st.report(job.number, point))
    except BaseException as e:
        st.heartbeat.stop()
        status = "KILLED" if isinstance(e, (KeyboardInterrupt, Interrupted)) else "FAILED"
        with ignore_interrupts():  # a second Ctrl-C must not cut the clean-up short
            st.abort(status, f"interrupted ({e or 'SIGINT'})" if status == "KILLED" else "tune crashed")
            tracker.end_run(parent_id, status)
        raise
    st.heartbeat.stop()
    seconds = time.monotonic() - start
    _reconcile(study, tracker, exp_id)
    summary = _summarize(cfg, model, study, st.finished, seconds, parent_id)
    summary.files, notes = write_outputs(study, summary, Path(cfg.reports_dir) / name, cfg)
    summary.notes.extend(notes)
    summary.out = Path(cfg.reports_dir) / name
    tracker.log_paths(parent_id, summary.files)
    counts = summary.states
    tracker.log_values(parent_id, {"n_complete": counts.get("COMPLETE", 0), "n_pruned": counts.get("PRUNED", 0),
                                   "n_fail": counts.get("FAIL", 0), "trials_per_minute": summary.trials_per_minute},
                       step=sum(counts.values()))
    tracker.end_run(parent_id, "FINISHED")
    return summary


def _parent_run(cfg: TuneConfig, model: str, name: str, ctx: Context, exp_id: str) -> str:
    """The study's one MLflow parent run: created on the first invocation, reopened by later ones."""
    tracker = ctx.tracker
    keys = {TAG_KIND: "study", TAG_STUDY: name, "ffnn.storage": storage_label(cfg.storage)}
    found = tracker.find_runs(exp_id, keys)
    if found:
        tracker.reopen_run(found[0])
        return found[0]
    fam, t = cfg.families[model], cfg.train
    spec = ctx.dataset
    params = {"model": model, "activation": fam.activation if fam.depth else "none", "depth": fam.depth,
              "width_min": fam.width[0], "width_max": fam.width[1], "shared_width": fam.shared_width,
              "lr_min": fam.lr[0], "lr_max": fam.lr[1], "batch_size": t.batch_size, "iters": t.iters,
              "eval_every": t.eval_every, "seed": t.seed, "dataset": cfg.dataset, "val_size": cfg.val_size,
              "split_seed": cfg.split_seed, "study_name": name, "storage": storage_label(cfg.storage)}
    run_id = tracker.start_run(
        exp_id, f"study {run_label(cfg, model)}", params,
        tags={**keys, "ffnn.model": model, "ffnn.torch_version": torch.__version__,
              "ffnn.dataset_sha256": spec.digest},
        description=(f"Optuna study {name!r} ({storage_label(cfg.storage)}): {fam.depth} hidden "
                     f"{fam.activation} layer(s) of {fam.width[0]}-{fam.width[1]} units, lr {fam.lr[0]:g}-"
                     f"{fam.lr[1]:g}, {t.iters} steps of {t.batch_size}; objective: accuracy on {cfg.val_size} "
                     f"training images held out (never the test set). Each child run is one trial."))
    oldest = tracker.find_runs(exp_id, keys)[0]
    if oldest != run_id:  # another invocation created one at the same moment: both keep the older
        tracker.delete_run(run_id)
        tracker.reopen_run(oldest)
        return oldest
    tracker.log_dataset(run_id, cfg.dataset, spec.digest, str(ctx.folder.resolve()), ctx.n_train, ctx.n_test,
                        context="tuning")
    return run_id


def _summarize(cfg: TuneConfig, model: str, study: optuna.Study, finished: int, seconds: float,
               parent_id: str) -> StudySummary:
    trials = study.get_trials(deepcopy=False)
    s = StudySummary(model, study.study_name, dict(Counter(t.state.name for t in trials)), finished, seconds,
                     parent_run_id=parent_id)
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    if complete:
        best = study.best_trial
        s.best_number, s.best_value, s.best_params = best.number, best.value, dict(best.params)
        s.best_spec = spec_of(best.params, cfg.families[model])
    return s


PLOTS = {
    "optimization history": "plot_optimization_history",
    "parameter importances (fANOVA)": "plot_param_importances",
    "parallel coordinates": "plot_parallel_coordinate",
    "intermediate values (validation accuracy by iteration)": "plot_intermediate_values",
}


def write_outputs(study: optuna.Study, s: StudySummary, out: Path, cfg: TuneConfig) -> tuple[list[Path], list[str]]:
    """best_params.json, trials.csv and plots.html: Optuna's four plots on one page, plotly.js inside, so it
    opens offline and in MLflow's artifact view (a sandboxed blob that cannot load a script beside it)."""
    out.mkdir(parents=True, exist_ok=True)
    files: list[Path] = []
    notes: list[str] = []
    best = {"study": s.name, "storage": storage_label(cfg.storage), "model": s.model,
            "trials": s.states, "best_trial": s.best_number, "val_accuracy": s.best_value, "params": s.best_params,
            "hidden_sizes": s.best_spec.hidden_str if s.best_spec else None,
            "spec": s.best_spec.describe() if s.best_spec else None,
            "train": {k: v for k, v in cfg.train.as_dict().items() if k != "lr"},
            "val_size": cfg.val_size, "split_seed": cfg.split_seed, "dataset": cfg.dataset}
    (out / "best_params.json").write_text(json.dumps(best, indent=2) + "\n")
    files.append(out / "best_params.json")
    if not study.get_trials(deepcopy=False):
        return files, notes
    study.trials_dataframe().to_csv(out / "trials.csv", index=False)
    files.append(out / "trials.csv")

    import optuna.visualization as vis
    from plotly.offline import get_plotlyjs
    sections = []
    for title, fn in PLOTS.items():
        kwargs = {"evaluator": optuna.importance.FanovaImportanceEvaluator(seed=0)} if "importances" in title else {}
        try:
            fig = getattr(vis, fn)(study, **kwargs)
        except Exception as e:  # too few trials for this plot, say; the others still come
            notes.append(f"{title} plot skipped: {str(e).splitlines()[0] if str(e) else type(e).__name__}")
            continue
        sections.append(f"<h2>{title}</h2>\n" + fig.to_html(full_html=False, include_plotlyjs=False))
    if sections:
        head = (f"<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>study {s.name}</title>"
                f"<script>{get_plotlyjs()}</script></head><body>\n<h1>Optuna study {s.name}</h1>\n")
        (out / "plots.html").write_text(head + "\n".join(sections) + "\n</body></html>\n")
        files.append(out / "plots.html")
    return files, notes


def final_runs(cfg: TuneConfig, studies: list[StudySummary], ctx: Context, say: Callable[[str], None],
               compare_progress: Progress | None) -> dict[str, list[RunRow]]:
    """Each best configuration (as ``C*``) and its tutorial model (``C``) over ``cfg.seeds`` seeds, on the full
    training set and the test set, as ordinary comparison runs; finished ones are skipped."""
    tuned = [s for s in studies if s.best_spec is not None]
    for s in studies:
        if s.best_spec is None:
            say(f"study {s.name!r} has no finished trial: nothing to retrain")
    # the untuned baselines with the tutorial's lr, unless `compare` has them already; then one
    # comparison per tuned model, since each has its own lr
    baselines = tuple(s.model for s in tuned if s.model in REGISTRY)
    calls: list[tuple[tuple[str, ...], TrainConfig, dict[str, ModelSpec]]] = (
        [(baselines, replace(cfg.train, lr=TrainConfig.lr, seed=0), {})] if baselines else [])
    calls += [((f"{s.model}*",), replace(cfg.train, lr=float(s.best_params["lr"]), seed=0),
               {f"{s.model}*": spec}) for s in tuned if (spec := s.best_spec) is not None]
    rows: dict[str, list[RunRow]] = {}
    for models, train_cfg, extra in calls:
        ccfg = CompareConfig(experiment=cfg.final_experiment, dataset=cfg.dataset, models=models,
                             seeds=cfg.seeds, train=train_cfg, specs={**REGISTRY, **extra}, device=cfg.device,
                             workers=cfg.workers)
        say(f"final: {', '.join(f'{m} ({ccfg.spec(m).describe()})' for m in models)}, lr {train_cfg.lr:g}, "
            f"x{cfg.seeds} seeds -> experiment {cfg.final_experiment!r}")
        found, _ = compare(ccfg, ctx, compare_progress)
        for m in models:
            rows[m] = [r for r in found if r.model == m]
    return dict(sorted(rows.items(), key=lambda kv: (kv[0].rstrip("*"), kv[0])))
