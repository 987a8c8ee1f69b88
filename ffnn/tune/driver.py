"""`tune`: one Optuna study per architecture family, trials asked and trained in batches.

Each batch of trials is asked at once (TPE's constant liar spreads them out), cut into stacks
(``trials.plan_stacks``: trials of one shape or, on the CPU, of close widths together; on CUDA all of them, padded
to the widest) and
trained by the training processes; this process alone writes to the Optuna storage and to MLflow. A
process sends each evaluation and waits for the prune decisions, so N workers never race on either store.
The next batch is asked only once this one is told, in trial-number order: the same command on a fresh
study samples the same configurations.
"""

from __future__ import annotations

import contextlib
import json
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path

import optuna
import torch
from optuna.trial import TrialState

from ..compare import RunRow, compare
from ..config import CompareConfig, ConfigError, TuneConfig, validate_train
from ..context import Context
from ..engine import Engine
from ..errors import Fault, Interrupted, UserError, ignore_interrupts, stop_line
from ..events import Listener, Note, ignore
from ..models import REGISTRY, ModelSpec, parse_tuned, tuned_name
from ..tracking import TAG_DEVICE_NAME, TAG_FAILURE, TAG_TUNED_BY, SpaceReserve, heartbeat_interval, sqlite_path
from ..train import TrainConfig
from ..train.trials import load_split, plan_stacks, trial_work
from .outputs import WALL_ATTR, StudySummary, summarize, write_outputs
from .search import TPE_STARTUP, open_study, replicate
from .storage import StaleTrials, fail_dead_owners, fail_unowned, open_storage, reconcile, storage_label
from .study import StudyRun, parent_run, replicates_run

BATCH_PER_WORKER = 2  # trials asked at once per CPU training process: the longest first, so both keep busy
BATCH_CUDA = 32  # trials asked at once on a GPU: one padded stack, one pass
STACK_SEEDS = {"cpu": 10, "cuda": 250}  # the most seeds of one stack (compare's limits)
# On the CPU, trials of close widths share a stack when padding adds at most this many weights to each. A step
# costs about 0.2 ms besides its arithmetic of about 3.8 ns a weight (one thread, one seed of C), so padding
# pays up to about 50,000 weights; half of that keeps the gain safe (README: tune, Batches of trials).
CPU_PAD_WITHIN = 25_000


@dataclass
class TuneResult:
    studies: list[StudySummary]
    storage: str  # label, password hidden
    tracking_uri: str
    workers: int
    final: dict[str, list[RunRow]] = field(default_factory=dict)  # model name (C, C*, C*s2) -> comparison rows
    final_specs: dict[str, ModelSpec] = field(default_factory=dict)  # tuned model name (C*, C*s2) -> its spec


def tune(cfg: TuneConfig, ctx: Context, on_event: Listener = ignore) -> TuneResult:
    """Run ``cfg.n_trials`` more trials of each family's study; then, with ``cfg.final``, retrain the best."""
    def say(text: str) -> None:
        on_event(Note(text))

    # the dataset's recorded name (an .npz file's carries its hash); a val_share becomes its count of examples
    cfg = replace(cfg, dataset=ctx.dataset.name, val_size=cfg.val_examples(ctx.n_train), val_share=None)
    val_size = cfg.val_size
    if val_size >= ctx.n_train:
        raise ConfigError(f"val_size ({val_size}) must be smaller than the training set ({ctx.n_train})")
    validate_train(cfg.train, ctx.n_train - val_size)
    stale = StaleTrials(cfg)
    storage = open_storage(cfg.storage, stale)
    tracker = ctx.tracker
    exp_id = tracker.experiment_id(cfg.experiment, description=(
        f"Made by `ffnn tune --experiment {cfg.experiment}`: one parent run per Optuna study (its search space, "
        f"best_params.json, Optuna's plots), one nested run per trial (validation accuracy per evaluation; "
        f"pruned trials KILLED). Trials live in the Optuna storage too: `make dashboard`."))
    stale.tracker, stale.exp_id = tracker, exp_id
    tracker.fail_orphans(exp_id)
    workers = ctx.worker_count(cfg.workers, cfg.n_trials)

    result = TuneResult([], storage_label(cfg.storage), tracker.uri, workers)
    engine: Engine | None = None
    graceful = False
    try:
        if cfg.n_trials:
            say(f"{workers} training process{'es' if workers > 1 else ''} on {ctx.device_name}; "
                f"validation: {val_size} of {ctx.n_train} training examples; storage {result.storage}")
            engine = ctx.engine(trial_work, workers, partial(load_split, ctx.dataset, ctx.data_dir, str(ctx.device),
                                                             val_size, cfg.split_seed))
        for model in cfg.models:
            result.studies += _run_studies(cfg, model, storage, stale, ctx, exp_id, engine, workers, say)
        graceful = True
    finally:
        if engine is not None:
            engine.close(graceful)
    if cfg.final:
        result.final, result.final_specs = final_runs(cfg, result.studies, ctx, say, on_event)
    return result


def batch_size(cfg: TuneConfig, study: optuna.Study, started: int, workers: int, device: torch.device) -> int:
    """How many trials to ask at once next: ``cfg.trial_batch``, or by default ``BATCH_PER_WORKER`` per training
    process (``BATCH_CUDA`` on a GPU), and at least what is left of TPE's random start (the same random
    points whether asked at once or one by one), and the rest when less than a batch would be left; never
    more than the trials left."""
    left = cfg.n_trials - started
    size = cfg.trial_batch
    if not size:
        size = BATCH_CUDA if device.type == "cuda" else BATCH_PER_WORKER * workers
        tail = size  # a remainder smaller than a batch joins this one: a batch's last trials leave processes idle
        if cfg.sampler == "tpe":
            done = len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)))
            size = max(size, TPE_STARTUP - done)
        if left - size < tail:
            size = left
    return max(0, min(size, left))


def left_by_others(study: optuna.Study, heartbeat: bool, deadline: float | None, on_stale: StaleTrials) -> int:
    """How many trials that other processes left wait to be trained: while another process's trial is
    RUNNING, wait a heartbeat and look again; a trial whose heartbeat went stale is FAILED and queued again
    (Optuna's ``fail_stale_trials``, ``RetryHeartbeatStaleTrialCallback``), and this process trains it, as
    compare takes over a dead machine's runs. 0 when none is left, or without a heartbeat to judge by."""
    if not heartbeat:
        return 0
    while deadline is None or time.monotonic() < deadline:
        with warnings.catch_warnings():  # Optuna warns that its heartbeat is meant for study.optimize
            warnings.simplefilter("ignore")
            optuna.storages.fail_stale_trials(study)
        fail_unowned(study, on_stale)  # died before its first heartbeat
        fail_dead_owners(study, on_stale)
        if waiting := study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
            return len(waiting)
        if not study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            return 0
        time.sleep(heartbeat_interval())
    return 0


def _run_studies(cfg: TuneConfig, model: str, storage: optuna.storages.BaseStorage, stale: StaleTrials,
                 ctx: Context, exp_id: str, engine: Engine | None, workers: int,
                 say: Callable[[str], None]) -> list[StudySummary]:
    """The family's ``cfg.studies`` replicate studies, one after another; with two or more, their parent runs
    are children of one run of the family (``replicates_run``)."""
    if cfg.studies == 1:
        return [_run_study(cfg, model, storage, stale, ctx, exp_id, engine, workers, say)]
    tracker = ctx.tracker
    group = replicates_run(cfg, model, ctx, exp_id)
    done: list[StudySummary] = []
    try:
        for k in range(1, cfg.studies + 1):
            done.append(_run_study(replicate(cfg, k), model, storage, stale, ctx, exp_id, engine, workers, say,
                                   index=k, group=group))
            if done[-1].best_value is not None:
                tracker.log_values(group, {"best_val_accuracy": done[-1].best_value}, step=k)
    except BaseException as e:
        with ignore_interrupts(), contextlib.suppress(Exception):  # the study has said why; end its family's run
            tracker.end_run(group, "KILLED" if isinstance(e, (KeyboardInterrupt, Interrupted)) else "FAILED")
        raise
    tracker.end_run(group, "FINISHED")
    return done


def _run_study(cfg: TuneConfig, model: str, storage: optuna.storages.BaseStorage, stale: StaleTrials, ctx: Context,
               exp_id: str, engine: Engine | None, workers: int, say: Callable[[str], None], index: int = 1,
               group: str | None = None) -> StudySummary:
    tracker = ctx.tracker
    study = open_study(cfg, model, storage, stale)
    name = study.study_name
    parent_id = parent_run(cfg, model, name, ctx, exp_id, group)
    tracker.set_tags(parent_id, {"ffnn.sampler": cfg.sampler, "ffnn.pruner": cfg.pruner,
                                 "ffnn.sampler_seed": str(cfg.sampler_seed), "ffnn.trial_seeds": str(cfg.trial_seeds),
                                 "ffnn.n_trials_requested": str(cfg.n_trials), TAG_DEVICE_NAME: ctx.device_name,
                                 "ffnn.optuna_version": optuna.__version__, "ffnn.study_index": str(index)})
    study.set_user_attr("ffnn_study", {"index": index, "sampler_seed": cfg.sampler_seed})
    st = StudyRun(cfg, model, study, storage, stale, tracker, exp_id, parent_id, ctx.device, say, sized=ctx.sized)
    before = len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)))
    say(f"study {name!r}: {before} trials so far; running {cfg.n_trials} more"
        + (f" (at most {cfg.timeout:g}s)" if cfg.timeout else "")
        + (f", {cfg.trial_seeds} seeds each" if cfg.trial_seeds > 1 else ""))
    start = time.monotonic()
    pad = ctx.device.type == "cuda"  # all of a batch in one stack; the CPU pads only close widths
    max_seeds = max(STACK_SEEDS.get(ctx.device.type, STACK_SEEDS["cpu"]), cfg.trial_seeds)
    # room kept beside each SQLite store for the writes that end the trials if the disk fills up: MLflow's
    # runs first, then Optuna's trials, each with its own
    reserve, trials_reserve = tracker.reserve_space(), SpaceReserve(sqlite_path(cfg.storage or ""))
    try:  # from here on whatever goes wrong ends the trials and the parent with the cause, none left RUNNING
        while engine is not None and (cfg.timeout is None or time.monotonic() - start < cfg.timeout):
            size = batch_size(cfg, study, st.started, workers, ctx.device)
            if not size:  # this process's trials are done: what others left behind is trained here
                size = left_by_others(study, st.heartbeat.enabled, start + cfg.timeout if cfg.timeout else None,
                                      stale)
            if not size:
                break
            stacks = plan_stacks(st.start_trials(size), workers, pad, max_seeds,
                                 pad_within=0 if pad else CPU_PAD_WITHIN)
            engine.run(partial(next, iter(stacks), None), st.hold, st.failed, lambda stack, ev: st.report(ev))
            st.finish_held()
        st.heartbeat.stop()
        seconds = time.monotonic() - start
        study.set_user_attr(WALL_ATTR, float(study.user_attrs.get(WALL_ATTR, 0.0)) + seconds)
        reconcile(study, tracker, exp_id)
        summary = summarize(cfg, model, study, st.finished, seconds, parent_id, index)
        summary.best_spec = summary.best_spec and ctx.sized(summary.best_spec)  # the dataset's inputs and classes
        summary.files, notes = write_outputs(study, summary, Path(cfg.reports_dir) / name, cfg)
        summary.notes.extend(notes)
        summary.out = Path(cfg.reports_dir) / name
        tracker.log_paths(parent_id, summary.files)
        counts = summary.states
        tracker.log_values(parent_id, {"n_complete": counts.get("COMPLETE", 0), "n_pruned": counts.get("PRUNED", 0),
                                       "n_fail": counts.get("FAIL", 0),
                                       "trials_per_minute": summary.trials_per_minute}, step=sum(counts.values()))
        tracker.end_run(parent_id, "FINISHED")
        return summary
    except BaseException as e:
        interrupted = isinstance(e, (KeyboardInterrupt, Interrupted))
        line = stop_line(e, places=[p for u in (cfg.storage or "", tracker.uri) if (p := sqlite_path(u))])
        reserve.release()  # room for the writes that end the trials, if the disk is full
        st.heartbeat.stop()
        status = "KILLED" if interrupted else "FAILED"
        with ignore_interrupts():  # a second Ctrl-C must not cut the clean-up short
            # the MLflow runs first, the small writes that leave nothing RUNNING; Optuna's last
            for close in (lambda: st.abort_runs(status, line, record_held=interrupted),
                          lambda: tracker.set_tags(parent_id, {TAG_FAILURE: line}),
                          lambda: tracker.end_run(parent_id, status), trials_reserve.release,
                          lambda: st.abort_trials(line)):
                with contextlib.suppress(Exception):  # the store that broke the study may break this too
                    close()
        if interrupted or isinstance(e, (UserError, Fault)):
            raise
        raise Fault.after(line, "the study's finished trials are kept", "run the same command again") from e
    finally:
        reserve.release()
        trials_reserve.release()


def final_runs(cfg: TuneConfig, studies: list[StudySummary], ctx: Context, say: Callable[[str], None],
               on_event: Listener) -> tuple[dict[str, list[RunRow]], dict[str, ModelSpec]]:
    """Each best configuration (as ``C*``, replicate study k's as ``C*s<k>``) and its tutorial model (``C``) over
    ``cfg.seeds`` seeds, on the full training set and the test set, as ordinary comparison runs; finished ones
    are skipped. Each tuned run carries its study's budget (``TAG_TUNED_BY``). Returns the rows and the specs."""
    tuned = [s for s in studies if s.best_spec is not None]
    for s in studies:
        if s.best_spec is None:
            say(f"study {s.name!r} has no finished trial: nothing to retrain")
    # the untuned baselines with the tutorial's lr, unless `compare` has them already; then one
    # comparison per tuned model, since each has its own lr
    baselines = tuple(dict.fromkeys(s.model for s in tuned if s.model in REGISTRY))
    calls: list[tuple[tuple[str, ...], TrainConfig, dict[str, ModelSpec], StudySummary | None]] = (
        [(baselines, replace(cfg.train, lr=TrainConfig.lr, seed=0), {}, None)] if baselines else [])
    calls += [((tuned_name(s.model, s.index),), replace(cfg.train, lr=float(s.best_params["lr"]), seed=0),
               {tuned_name(s.model, s.index): spec}, s) for s in tuned if (spec := s.best_spec) is not None]
    rows: dict[str, list[RunRow]] = {}
    for models, train_cfg, extra, study in calls:
        ccfg = CompareConfig(experiment=cfg.final_experiment, dataset=cfg.dataset, models=models,
                             seeds=cfg.seeds, train=train_cfg, specs={**REGISTRY, **extra}, device=cfg.device,
                             workers=cfg.workers)
        say(f"final: {', '.join(f'{m} ({ccfg.spec(m).describe()})' for m in models)}, lr {train_cfg.lr:g}, "
            f"x{cfg.seeds} seeds -> experiment {cfg.final_experiment!r}"
            + (f" (study {study.name!r})" if study is not None else ""))
        found, _ = compare(ccfg, ctx, on_event)
        for m in models:
            rows[m] = [r for r in found if r.model == m]
        if study is not None:  # the budget as of now: a study that ran more trials but kept its best updates it
            tag = {TAG_TUNED_BY: json.dumps(study.budget(cfg), sort_keys=True)}
            for r in rows[models[0]]:
                if r.run_id:
                    ctx.tracker.set_tags(r.run_id, tag)
    specs = {m: spec for _, _, extra, _ in calls for m, spec in extra.items()}
    return dict(sorted(rows.items(), key=lambda kv: parse_tuned(kv[0]) or (kv[0], 0))), specs
