"""One study driven from this process: ask trials, hear their evaluations, tell their outcomes, log each as
a nested MLflow run of the study's parent run.

Outcomes are held until the whole batch has trained and then told in trial-number order, so that what
the sampler and the pruner see when the next batch is asked does not depend on which training process
finished first.
"""

from __future__ import annotations

import contextlib
import json
import math
import statistics
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from functools import partial

import optuna
import torch
from optuna.trial import TrialState

from ..config import TuneConfig
from ..context import Context
from ..errors import deferring
from ..models import ModelSpec, count_params
from ..tracking import TAG_FAILURE, TAG_KIND, TAG_MODEL, TAG_SPEC, TAG_TORCH, Tracker, owner
from ..train.trials import Outcome, TrialEval, TrialJob, TrialStack
from .search import suggest
from .storage import (
    MLFLOW_STATUS,
    TAG_STATE,
    TAG_STUDY,
    TAG_TRIAL,
    OnStale,
    TrialHeartbeat,
    fail_unowned,
    run_label,
    storage_label,
)


@dataclass
class _Running:
    trial: optuna.Trial
    run_id: str
    job: TrialJob
    history: list[tuple[int, float]] = field(default_factory=list)  # (step, mean validation accuracy) reported
    recorded: bool = False  # its curves and final values are on its MLflow run (``StudyRun.record``)
    why: tuple[str, str] | None = None  # ("pruned" or "failure", the reason): the Optuna user attr to set

    @property
    def accuracy(self) -> float:
        return self.history[-1][1] if self.history else math.nan


class StudyRun:
    """One Optuna study and its MLflow parent run: asks, reports, tells, and logs every trial."""

    def __init__(self, cfg: TuneConfig, model: str, study: optuna.Study, storage: optuna.storages.BaseStorage,
                 on_stale: OnStale | None, tracker: Tracker, exp_id: str, parent_id: str, device: torch.device,
                 say: Callable[[str], None], *, sized: Callable[[ModelSpec], ModelSpec]):
        self.cfg, self.model, self.study, self.tracker = cfg, model, study, tracker
        self.sized = sized  # a spec with the dataset's inputs and classes (Context.sized)
        self.on_stale = on_stale
        self.exp_id, self.parent_id, self.device, self.say = exp_id, parent_id, device, say
        self.family = cfg.families[model]
        self.label = run_label(cfg, model)
        self.running: dict[int, _Running] = {}
        self.held: dict[int, Outcome] = {}  # trained, not yet told
        self.started = 0
        self.finished = 0
        self.heartbeat = TrialHeartbeat(storage, study.study_name)

    def start_trials(self, n: int) -> list[TrialJob]:
        """Ask ``n`` trials, once dead processes' trials are FAILED and queued again (checked once a batch)."""
        with warnings.catch_warnings():  # Optuna warns, here and at each ask, that its heartbeat is meant for
            warnings.simplefilter("ignore")  # study.optimize
            optuna.storages.fail_stale_trials(self.study)
            fail_unowned(self.study, self.on_stale)
            return [self._start_trial() for _ in range(n)]

    @deferring  # ask, run and registration in one step that an interrupt cannot split
    def _start_trial(self) -> TrialJob:
        trial = self.study.ask()
        self.heartbeat.add(trial)
        trial.set_user_attr("owner", owner())
        trial.set_user_attr("owner_trial", trial.number)  # a retried trial inherits its failed twin's attrs
        spec, lr = suggest(trial, self.family)
        spec = self.sized(spec)
        job = TrialJob(trial.number, spec, replace(self.cfg.train, lr=lr), self.cfg.trial_seeds)
        c = job.cfg
        params = {"model": self.model, "activation": spec.activation_name, "hidden_sizes": spec.hidden_str,
                  "lr": lr, "batch_size": c.batch_size, "iters": c.iters, "eval_every": c.eval_every,
                  "seed": c.seed, "trial_seeds": job.n_seeds, "dataset": self.cfg.dataset,
                  "device": self.device.type, "n_params": count_params(spec), "trial_number": trial.number,
                  **{k: v for k, v in trial.params.items() if k != "lr"}}
        run_id = self.tracker.start_run(
            self.exp_id, f"study {self.label} trial {trial.number}", params,
            tags={TAG_KIND: "trial", TAG_STUDY: self.study.study_name, TAG_TRIAL: str(trial.number),
                  TAG_STATE: "RUNNING",
                  TAG_MODEL: self.model, TAG_SPEC: spec.describe()},
            parent_id=self.parent_id)
        for k, v in {"mlflow_run_id": run_id, "hidden_sizes": spec.hidden_str, "seeds": list(job.seeds)}.items():
            trial.set_user_attr(k, v)
        self.running[trial.number] = _Running(trial, run_id, job)
        self.started += 1
        return job

    @deferring
    def report(self, ev: TrialEval) -> list[int]:
        """Record one evaluation of each trial still training (the mean over its seeds is what the pruner
        sees); return the trials to stop."""
        stop = []
        for number, accuracy in ev.accuracy.items():
            r = self.running[number]
            mean = statistics.fmean(accuracy)
            r.history.append((ev.step, mean))
            r.trial.report(mean, ev.step)
            # at the last step it is done anyway: a finished trial tells the sampler more than a pruned one
            if ev.step < r.job.cfg.iters and r.trial.should_prune():
                stop.append(number)
        return stop

    def hold(self, stack: TrialStack, outcomes: list[Outcome]) -> None:
        """Log a stack's trials to MLflow as it comes back, while the other stacks train (the engine calls
        this once the idle processes have their next stack); tell Optuna at the batch's end (``finish_held``)."""
        for t, o in zip(stack.trials, outcomes):
            self.held[t.number] = o
            self.record(t.number, o)

    def failed(self, stack: TrialStack, error: str) -> None:
        """A stack whose process crashed or died: each of its trials FAILED with the first line."""
        self.hold(stack, [Outcome("FAIL", reason=error.splitlines()[0][:500], stack_trials=len(stack.trials))
                          for _ in stack.trials])

    def finish_held(self) -> None:
        """Tell and log the held outcomes, in trial-number order."""
        for number in sorted(self.held):
            self.finish(number, self.held.pop(number))

    @deferring
    def record(self, number: int, outcome: Outcome) -> None:
        """The trial's curves, final values and what stopped it, on its MLflow run in one batch; the run stays
        RUNNING until ``finish`` has told Optuna."""
        r = self.running[number]
        if r.recorded:
            return
        tags = {"ffnn.stopped_step": str(outcome.step), "ffnn.stack_trials": str(outcome.stack_trials)}
        if outcome.state == "PRUNED" and not outcome.reason:
            outcome.reason = (f"pruned by {type(self.study.pruner).__name__} at iteration {outcome.step} "
                              f"(validation accuracy {r.accuracy:.2f}%)")
            tags["ffnn.pruned"] = outcome.reason
            r.why = ("pruned", outcome.reason)
        elif outcome.reason:
            tags[TAG_FAILURE] = outcome.reason
            r.why = ("failure", outcome.reason)
        values = {"train_seconds": outcome.seconds}
        if outcome.state == "COMPLETE":
            tags["ffnn.val_accuracy_per_seed"] = json.dumps(outcome.per_seed)
            values["final_val_accuracy"] = outcome.value
            values.update({f"final_val_accuracy_seed{s}": v for s, v in zip(r.job.seeds, outcome.per_seed)})
            if outcome.sd is not None:
                values["val_accuracy_sd"] = outcome.sd
        self.tracker.log_run(r.run_id, {"val_accuracy": r.history, "train_loss": outcome.losses}, values,
                             outcome.step, tags)  # train_loss windowed where it trained
        r.recorded = True

    @deferring
    def finish(self, number: int, outcome: Outcome) -> None:
        self.record(number, outcome)
        r = self.running.pop(number)
        self.heartbeat.discard(r.trial)
        self.finished += 1
        if r.why is not None:
            r.trial.set_user_attr(*r.why)
        if outcome.state == "COMPLETE":
            r.trial.set_user_attr("val_accuracy_per_seed", outcome.per_seed)
            r.trial.set_user_attr("val_accuracy_sd", outcome.sd)
            self.study.tell(r.trial, outcome.value)
        else:
            self.study.tell(r.trial, state=TrialState[outcome.state])
        self.tracker.end_run(r.run_id, MLFLOW_STATUS[outcome.state], {TAG_STATE: outcome.state})
        best = self._best()
        if outcome.state == "COMPLETE":
            self.tracker.log_values(self.parent_id, {"trial_val_accuracy": outcome.value}, step=number)
            if best is not None and best.value is not None:
                self.tracker.log_values(self.parent_id, {"best_val_accuracy": best.value}, step=number)
        what = outcome.reason
        if outcome.state == "COMPLETE":
            what = f"{outcome.value:.2f}% val" + (f" (sd {outcome.sd:.2f}, {len(outcome.per_seed)} seeds)"
                                                   if outcome.sd is not None else "")
        self.say(f"{self.label} trial {number}: {outcome.state} {what} | {r.job.spec.describe()}, "
                 f"lr {r.job.cfg.lr:.3g}, {outcome.seconds:.1f}s"
                 + (f" | best {best.value:.2f}% (trial {best.number})" if best is not None else ""))

    def abort_runs(self, status: str, reason: str, record_held: bool = True) -> None:
        """End the running trials' MLflow runs with ``status`` and the reason, each write on its own (a full
        disk that refuses one must not keep the others from being tried); with ``record_held``, first record
        the trials that trained (on a full disk those writes would take the room the ends need)."""
        for number in sorted(self.held) if record_held else ():
            with contextlib.suppress(Exception):  # the store that broke the run may break this too
                self.finish(number, self.held.pop(number))
        for r in self.running.values():
            with contextlib.suppress(Exception):
                self.tracker.end_run(r.run_id, status, {TAG_STATE: "FAIL", TAG_FAILURE: reason})

    def abort_trials(self, reason: str) -> None:
        """FAIL the running trials in Optuna (after ``abort_runs``)."""
        for number, r in list(self.running.items()):
            for write in (partial(r.trial.set_user_attr, "failure", reason),
                          partial(self.study.tell, r.trial, state=TrialState.FAIL, skip_if_finished=True)):
                with contextlib.suppress(Exception):
                    write()
            self.heartbeat.discard(r.trial)
            del self.running[number]

    def _best(self) -> optuna.trial.FrozenTrial | None:
        try:
            return self.study.best_trial
        except ValueError:  # no finished trial yet
            return None


def replicates_run(cfg: TuneConfig, model: str, ctx: Context, exp_id: str) -> str:
    """The one MLflow run of a family's replicate studies (``--studies K``, K >= 2), each study's parent run a
    child of it: created on the first invocation, reopened by later ones."""
    tracker = ctx.tracker
    keys = {TAG_KIND: "studies", TAG_STUDY: cfg.name_of(model), "ffnn.storage": storage_label(cfg.storage)}
    tags = {"ffnn.studies": str(cfg.studies), "ffnn.base_sampler_seed": str(cfg.sampler_seed)}
    found = tracker.find_runs(exp_id, keys)
    if found:
        tracker.reopen_run(found[0])
        tracker.set_tags(found[0], tags)  # K may have grown since
        return found[0]
    run_id = tracker.start_run(
        exp_id, f"studies {run_label(cfg, model)}", {"model": model}, tags={**keys, **tags, TAG_MODEL: model},
        description=(f"{cfg.studies} independent Optuna studies of family {model} (study k >= 2 named "
                     f"{cfg.name_of(model, 2)!r} and so on, each with its own sampler seed from "
                     f"--sampler-seed {cfg.sampler_seed}); each child run is one study. The spread of what they "
                     f"find is what a claim about the architecture must account for."))
    return _keep_oldest(tracker, exp_id, keys, run_id) or run_id


def _keep_oldest(tracker: Tracker, exp_id: str, keys: dict[str, str], run_id: str) -> str | None:
    """After creating ``run_id`` with ``keys``: if another invocation created one at the same moment, both keep
    the older, and this one's is deleted; returns that older run, or None when ``run_id`` is it."""
    oldest = tracker.find_runs(exp_id, keys)[0]
    if oldest == run_id:
        return None
    tracker.delete_run(run_id)
    tracker.reopen_run(oldest)
    return oldest


def parent_run(cfg: TuneConfig, model: str, name: str, ctx: Context, exp_id: str, group: str | None = None) -> str:
    """The study's one MLflow parent run: created on the first invocation, reopened by later ones; a child of
    ``group`` (its family's ``replicates_run``) when given, a study from before --studies moved under it."""
    tracker = ctx.tracker
    keys = {TAG_KIND: "study", TAG_STUDY: name, "ffnn.storage": storage_label(cfg.storage)}
    found = tracker.find_runs(exp_id, keys)
    if found:
        tracker.reopen_run(found[0])
        if group:  # MLflow nests a run under the run its parentRunId tag names
            tracker.set_tags(found[0], {"mlflow.parentRunId": group})
        return found[0]
    fam, t = cfg.families[model], cfg.train
    spec = ctx.dataset
    params = {"model": model, "activation": fam.activation if fam.depth else "none", "depth": fam.depth,
              "width_min": fam.width[0], "width_max": fam.width[1], "shared_width": fam.shared_width,
              "lr_min": fam.lr[0], "lr_max": fam.lr[1], "batch_size": t.batch_size, "iters": t.iters,
              "eval_every": t.eval_every, "seed": t.seed, "trial_seeds": cfg.trial_seeds, "dataset": cfg.dataset,
              "val_size": cfg.val_size, "split_seed": cfg.split_seed, "study_name": name,
              "storage": storage_label(cfg.storage)}
    seeds = f"seed {t.seed}" if cfg.trial_seeds == 1 else f"the mean over seeds {t.seed}-{t.seed + cfg.trial_seeds - 1}"
    run_id = tracker.start_run(
        exp_id, f"study {run_label(cfg, model)}", params,
        tags={**keys, TAG_MODEL: model, TAG_TORCH: torch.__version__,
              "ffnn.dataset_sha256": spec.digest}, parent_id=group,
        description=(f"Optuna study {name!r} ({storage_label(cfg.storage)}): {fam.depth} hidden "
                     f"{fam.activation} layer(s) of {fam.width[0]}-{fam.width[1]} units, lr {fam.lr[0]:g}-"
                     f"{fam.lr[1]:g}, {t.iters} steps of {t.batch_size}; objective: accuracy on {cfg.val_size} "
                     f"training images held out (never the test set), {seeds}. Each child run is one trial."))
    if (oldest := _keep_oldest(tracker, exp_id, keys, run_id)) is not None:
        return oldest
    tracker.log_dataset(run_id, cfg.dataset, spec.digest, str(ctx.folder.resolve()), ctx.n_train, ctx.n_test,
                        context="tuning")
    return run_id
