"""`compare`: train every (model, seed) of an experiment and record each run.

The seeds of one model train together as one stack (``stacked.train_stacked``)
in the engine's worker processes (or in this one with one worker on the CPU;
on CUDA in one child process, while this one records). Every MLflow write
happens here, in the parent, through the context's ``Tracker``: one writer per
store. Each seed stays its own MLflow run, created and claimed before its
stack starts, so a kill -9 loses at most the unfinished seeds of the stacks in
flight, and the next run trains them again.
"""

from __future__ import annotations

import contextlib
import io
import math
import random
import time
from collections.abc import Mapping
from dataclasses import dataclass, replace

import numpy as np
import psutil
import torch

from .bits import MAX_TAG_CHARS
from .config import CompareConfig, validate_train
from .context import Context
from .errors import Fault, Interrupted, UserError, deferred_interrupts, ignore_interrupts, stop_line
from .events import Listener, Note, Planned, Trained, ignore
from .memory import fit, human
from .models import build_model, count_params
from .registry import log_best_models
from .tracking import (
    CHILD_RUNS,
    TAG_DATASET_SHA,
    TAG_DEVICE_NAME,
    TAG_ENGINE,
    TAG_FAILURE,
    TAG_FAILURE_STEP,
    TAG_KEY,
    TAG_KIND,
    TAG_STACK_INDEPENDENT,
    TAG_STACK_SIZE,
    TAG_TEST_CORRECT,
    TAG_TORCH,
    Tracker,
    TrackingError,
    child_key,
    child_params,
    child_tags,
    heartbeat_interval,
)
from .train import DivergenceRule
from .train.jobs import Job, JobResult, StackJob, run_stack

CPU_MAX_STACK = 10  # seeds per stack on the CPU: the matmuls are at peak already, larger stacks' weights fall out
# of cache (README: *How it is fast*), and a kill -9 loses at most that many seeds per process
CUDA_MAX_STACK = 250  # seeds per stack on a GPU: past it a seed costs no less (README: *Measured on a GPU*),
# and the next stack trains while this one is written to MLflow


@dataclass
class RunRow:
    """One (model, seed) of this comparison as it stands in the store."""
    model: str
    seed: int
    status: str
    accuracy: float
    seconds: float
    failure: str = ""
    run_id: str = ""


# ---------------------------------------------------------------- planning
def plan_stacks(todo: list[Job], device: torch.device, workers: int, rule: DivergenceRule,
                max_stack: int | None = None, caps: Mapping[str, int] | None = None) -> list[StackJob]:
    """Group the seeds of each (model, recipe) into stacks, most expensive first.

    On the CPU each group is cut into ``workers`` stacks (at most CPU_MAX_STACK seeds), so the
    processes share every model; on CUDA a group is cut only into stacks of CUDA_MAX_STACK.
    ``caps``: seeds per stack that fit in memory, per model (``memory_caps``).
    """
    groups: dict[tuple, list[int]] = {}
    for j in todo:
        groups.setdefault((j.model, j.spec, replace(j.cfg, seed=0)), []).append(j.cfg.seed)
    stacks = []
    for (model, spec, cfg), seeds in groups.items():
        if max_stack:
            size = max_stack
        elif device.type == "cuda":
            size = CUDA_MAX_STACK
        else:
            size = min(CPU_MAX_STACK, math.ceil(len(seeds) / workers))
        size = max(1, min(size, (caps or {}).get(model, size)))
        seeds = sorted(seeds)
        stacks += [StackJob(model, spec, cfg, tuple(seeds[i:i + size]), rule) for i in range(0, len(seeds), size)]
    return sorted(stacks, key=lambda s: -s.cost)


def memory_caps(cfg: CompareConfig, ctx: Context, todo: list[Job], available: int | None = None
                ) -> dict[str, int]:
    """Seeds per stack that fit in memory, per model; a model of which not even one seed fits is a
    ``UserError`` (one line, exit 2) raised before any run is created. On the CPU the stacks share the
    host's available memory between the workers (on Ray: this host's stands for a node's, shared by the
    most CPUs one node has); on CUDA the stacks live on the GPU (which this process does not touch), so
    only the parent's one copy of each model is checked against the host."""
    if available is None:
        available = int(psutil.virtual_memory().available)
    workers = ctx.worker_count(cfg.workers, len(todo), per_host=True)
    caps = {}
    for model in dict.fromkeys(j.model for j in todo):
        spec = cfg.spec(model)
        if ctx.device.type == "cpu":
            f = fit(spec, cfg.train.batch_size, ctx.n_test, available, workers)
            need, caps[model] = f.one_seed, f.max_seeds
        else:
            need, caps[model] = 4 * count_params(spec), CUDA_MAX_STACK
        if caps[model] < 1 or need > available:
            raise UserError(f"model {model} ({spec.describe()}) needs {human(need)} of memory for one seed; "
                            f"{human(available)} is available: make it smaller")
    return caps


# ---------------------------------------------------------------- the parent
def key_of(job: Job, dataset: str) -> str:
    return child_key(job.model, job.spec, job.cfg, dataset)


def compare(cfg: CompareConfig, ctx: Context, on_event: Listener = ignore) -> tuple[list[RunRow], str]:
    """Train what is missing; return every (model, seed) row and the experiment id."""
    cfg = ctx.bind(cfg)  # the dataset's recorded name, every spec sized to its inputs and classes
    validate_train(cfg.train, ctx.n_train)
    all_jobs = [Job(m, cfg.spec(m), replace(cfg.train_of(m), seed=s)) for m in cfg.models for s in range(cfg.seeds)]
    caps = memory_caps(cfg, ctx, all_jobs)  # before the store is touched: a spec that cannot fit is exit 2
    tracker = ctx.tracker
    exp_id = tracker.experiment_id(cfg.experiment, description=experiment_description(cfg.experiment))
    tracker.fail_orphans(exp_id)

    done = tracker.finished_keys(exp_id)
    todo = [j for j in all_jobs if key_of(j, cfg.dataset) not in done]
    on_event(Planned(len(all_jobs) - len(todo), len(all_jobs)))
    if todo:
        _Comparison(cfg, ctx, exp_id, on_event, caps, finished_before=len(all_jobs) - len(todo)).train(todo)
    rows = _rows(tracker, exp_id, all_jobs, cfg.dataset)
    if cfg.log_models == "best":  # also when nothing was trained: a comparison cut short may have left it to do
        log_best_models(tracker, exp_id, rows, cfg.spec, lambda m: cfg.train_of(m).iters, ctx.input_example())
    return rows, exp_id


class _Comparison:
    """One invocation's parent run and the child runs it opens, claims and closes."""

    def __init__(self, cfg: CompareConfig, ctx: Context, exp_id: str, on_event: Listener,
                 caps: Mapping[str, int] | None = None, finished_before: int = 0):
        self.cfg, self.ctx, self.exp_id, self.on_event, self.caps = cfg, ctx, exp_id, on_event, caps
        self.finished = finished_before  # FINISHED runs of this comparison in the store
        self.writing: tuple[str, str] | None = None  # (name, id) of the run being recorded, named if that fails
        self.tracker: Tracker = ctx.tracker
        self.example = ctx.input_example()  # stored with each model
        self.open_runs: dict[str, dict] = {}  # run id -> its params (logged when it ends), created and not yet ended
        self.run_ids: dict[tuple[str, int], str] = {}  # (model, seed) -> run id, for the stacks in flight
        self.others: dict[str, Job] = {}  # run key -> job another process holds: trained if that process dies
        # the device's name comes with the results, from the process that trained them: asking for a GPU's
        # name here would set up CUDA in this process, which only writes to MLflow (seconds, and GPU memory)
        self.device_names: set[str] = set()
        self.common_tags = {TAG_TORCH: torch.__version__, TAG_DATASET_SHA: ctx.dataset.digest,
                            # cuBLAS may pick other kernels for other stack sizes; the CPU path does not
                            TAG_STACK_INDEPENDENT: str(ctx.device.type == "cpu").lower()}

    def train(self, todo: list[Job]) -> None:
        cfg, ctx = self.cfg, self.ctx
        rule = cfg.divergence
        n_cpu_workers = ctx.worker_count(cfg.workers, len(todo))
        queue = plan_stacks(todo, ctx.device, n_cpu_workers, rule, cfg.stack_size or None, self.caps)
        workers = ctx.worker_count(cfg.workers, len(queue))
        parent_params = {"models": ",".join(cfg.models), "seeds": cfg.seeds, "dataset": cfg.dataset,
                         "device": ctx.device.type, "workers": workers,
                         "stack_size": max(len(s.seeds) for s in queue),
                         "divergence_threshold": rule.threshold, "divergence_window": rule.window,
                         **{k: v for k, v in cfg.train.as_dict().items() if k != "seed"}}
        self.parent = self.tracker.start_run(
            self.exp_id, f"compare {','.join(cfg.models)} x{cfg.seeds}", params=parent_params,
            tags={TAG_KIND: "comparison", **self.common_tags}, system_metrics=True,
            description=(f"Compares {', '.join(f'{m} ({cfg.spec(m).describe()})' for m in cfg.models)} over "
                         f"{cfg.seeds} seeds on {cfg.dataset}; {len(todo)} runs trained by this invocation in "
                         f"{len(queue)} stacks. Report: `ffnn report --experiment {cfg.experiment}` -> "
                         f"reports/{cfg.experiment}/"))
        engine = None
        start, store_before = time.perf_counter(), self.tracker.store_seconds
        reserve = self.tracker.reserve_space()
        try:  # from here on whatever goes wrong ends the parent and the open runs, never leaves them RUNNING
            self.tracker.start_heartbeat(self.parent)  # other processes see this one alive while it is fresh
            self.tracker.prepare_model_logging(build_model(queue[0].spec), self.example)  # meanwhile, in a thread
            engine = ctx.engine(run_stack, workers)

            def next_job() -> StackJob | None:
                while queue:
                    stack = self._launch(queue.pop(0))
                    if stack is not None:
                        return stack
                return None

            while True:
                engine.run(next_job, self._finish, self._crashed)
                if not self.others:
                    break
                # what other processes hold: wait for it, and train what their death left behind
                queue = plan_stacks(self._orphaned(), ctx.device, n_cpu_workers, rule, cfg.stack_size or None,
                                    self.caps)
            self.tracker.log_values(self.parent, {"wall_seconds": time.perf_counter() - start,
                                                  "tracking_seconds": self.tracker.store_seconds - store_before,
                                                  "runs_trained": len(todo)})
            self.tracker.end_run(self.parent, "FINISHED", tags={TAG_DEVICE_NAME: ", ".join(
                sorted(self.device_names))} if self.device_names else None)
        except BaseException as e:
            interrupted = isinstance(e, (KeyboardInterrupt, Interrupted))
            line = stop_line(e, self.writing and f"run {self.writing[0]}")
            reserve.release()  # room for the writes that close the runs, if the disk is full
            # a second Ctrl-C must not cut the clean-up short; with the server lost there is nothing to close
            with ignore_interrupts(), contextlib.suppress(TrackingError):
                if engine is not None:
                    engine.close(graceful=False)
                self._close_all("KILLED" if interrupted else "FAILED", line)
            if interrupted or isinstance(e, UserError):
                raise
            raise Fault.after(line, f"{self.finished} run(s) of this comparison are finished and kept",
                              "run the same command again to train what is missing") from e
        finally:
            reserve.release()

    def _close_all(self, status: str, reason: str) -> None:
        """End every run this invocation opened, the parent last, each on its own: one write that fails
        (a store that is full too) does not keep the others open."""
        writing = self.writing[1] if self.writing else None
        for run_id, params in list(self.open_runs.items()):
            why = reason if status == "KILLED" or run_id == writing else \
                f"not finished: the comparison stopped ({reason})"
            with contextlib.suppress(Exception):
                self.tracker.log_run(run_id, {}, {}, 0, {TAG_FAILURE: why}, params)
            with contextlib.suppress(Exception):
                self.tracker.end_run(run_id, status)
        with contextlib.suppress(Exception):
            self.tracker.set_tags(self.parent, {TAG_FAILURE: reason})
        with contextlib.suppress(Exception):
            self.tracker.end_run(self.parent, status)

    def _launch(self, stack: StackJob) -> StackJob | None:
        """Create and claim a run per seed, as one step that an interrupt cannot split; keep the seeds won."""
        cfg, ctx = self.cfg, self.ctx
        with deferred_interrupts():
            held = self.tracker.held_keys(self.exp_id)
            created = {}
            for seed in stack.seeds:
                job = stack.job(seed)
                key = key_of(job, cfg.dataset)
                if key in held:  # finished or running elsewhere: trained again only if its owner dies
                    self.others[key] = job
                    continue
                # params go with the metrics when the run ends: one store write fewer per run
                run_id = self.tracker.start_run(
                    self.exp_id, f"{job.model} seed={seed}", {},
                    tags={**child_tags(job.model, job.spec, key), **self.common_tags},
                    parent_id=self.parent)
                self.open_runs[run_id] = child_params(job.model, job.spec, job.cfg, cfg.dataset, ctx.device.type)
                created[key] = (seed, run_id)
            won = self.tracker.claim_many(self.exp_id, {key: run_id for key, (_, run_id) in created.items()})
            seeds = []
            for key, (seed, run_id) in created.items():
                if key not in won:
                    del self.open_runs[run_id]
                    self.others[key] = stack.job(seed)
                    continue
                self.run_ids[(stack.model, seed)] = run_id
                seeds.append(seed)
        return replace(stack, seeds=tuple(seeds)) if seeds else None

    def _orphaned(self) -> list[Job]:
        """Wait a heartbeat for the jobs other processes hold; return those nobody holds any more (their
        owner died, or they failed) and forget those that FINISHED."""
        time.sleep(heartbeat_interval() * random.uniform(0.5, 1.0))  # jitter: two idle processes do not collide
        finished, free = self.tracker.open_keys(self.exp_id, self.others)
        for key in finished:
            del self.others[key]
        jobs = [self.others.pop(key) for key in list(self.others) if key in free]
        if jobs:
            self.on_event(Note(f"{len(jobs)} run(s) that another process left unfinished: taking them over"))
        return jobs

    def _finish(self, stack: StackJob, results: list[JobResult]) -> None:
        ids = {r.job.cfg.seed: self.run_ids.pop((stack.model, r.job.cfg.seed)) for r in results}
        # a run another process found dead (a heartbeat too late) and took over stays as that process left it
        status = self.tracker.statuses(self.exp_id, ids.values())
        for r in results:
            run_id = ids[r.job.cfg.seed]
            if status.get(run_id, "RUNNING") != "RUNNING":
                self.open_runs.pop(run_id)
                self.on_event(Note(f"{r.job.model} seed={r.job.cfg.seed}: taken over by another process meanwhile"))
                continue
            self.writing = (f"{r.job.model} seed={r.job.cfg.seed}", run_id)
            with deferred_interrupts():
                self.tracker.log_dataset(run_id, self.cfg.dataset, self.ctx.dataset.digest,
                                         str(self.ctx.folder.resolve()), self.ctx.n_train, self.ctx.n_test)
                # the run stays open (and is ended FAILED with the cause) until it is recorded whole
                _record(self.tracker, self.exp_id, run_id, r, self.open_runs[run_id],
                        self.example if self.cfg.log_models == "all" else None)
                del self.open_runs[run_id]
            self.writing = None
            self.finished += r.error is None
            if r.device_name:
                self.device_names.add(r.device_name)
            self.on_event(Trained(f"{r.job.model} seed={r.job.cfg.seed}", r.accuracy, r.seconds, r.error))

    def _crashed(self, stack: StackJob, error: str) -> None:
        now = int(time.time() * 1000)
        self._finish(stack, [JobResult(stack.job(s), now, now, error=f"training failed: {error}")
                             for s in stack.seeds])


def _record(tracker: Tracker, exp_id: str, run_id: str, r: JobResult, params: dict,
            example: np.ndarray | None) -> None:
    """A seed's params, metrics and tags (one write), then its network, then its end. The network is a
    LoggedModel (linked to the final metrics) given the ``example`` it takes, else its ``weights.pt``."""
    tags = {TAG_ENGINE: r.engine, TAG_STACK_SIZE: str(r.stack_size)} if r.engine else {}
    if r.device_name:
        tags[TAG_DEVICE_NAME] = r.device_name
    series = {"train_loss": r.losses, "test_accuracy": r.history}
    if r.error is None:
        # a test set of more than about 47,000 images does not fit a tag: then the run goes without it
        if r.test_correct and len(r.test_correct) <= MAX_TAG_CHARS:
            tags[TAG_TEST_CORRECT] = r.test_correct
        tracker.log_run(run_id, series, {"final_test_accuracy": r.accuracy, "train_seconds": r.seconds,
                                         "stack_seconds": r.stack_seconds}, r.job.cfg.iters, tags, params)
        logged = None
        if example is None:
            tracker.log_weights(run_id, r.weights)
        else:
            model = build_model(r.job.spec)
            model.load_state_dict(torch.load(io.BytesIO(r.weights)))
            logged = tracker.log_torch_model(run_id, exp_id, model, example, r.job.cfg.iters, params)
        try:
            tracker.end_run(run_id, "FINISHED")
        except BaseException:  # the run ends FAILED (_close_all): no model of it stays behind
            if logged is not None:
                tracker.delete_model(logged)
            raise
    else:
        tags[TAG_FAILURE] = r.error.splitlines()[0][:500]
        if r.failed_step is not None:
            tags[TAG_FAILURE_STEP] = str(r.failed_step)
        tracker.log_run(run_id, series, {}, 0, tags, params)
        tracker.end_run(run_id, "FAILED")


def experiment_description(experiment: str) -> str:
    """What a comparison experiment holds and which commands fill it (Markdown; the MLflow UI shows it)."""
    return (f"Made by `ffnn compare --experiment {experiment}` and `ffnn tune --final` (tuned models, named "
            f"like `C*`). One parent run per invocation, with system metrics; one nested run per (model, seed): "
            f"parameters, test accuracy per evaluation, `final_test_accuracy` and the trained network "
            f"(`weights.pt`); each model's best seed also as an MLflow LoggedModel (`runs:/RUN_ID/model`, the "
            f"Models tab; `--log-models all`: every run). Statistics: `ffnn report --experiment {experiment}` "
            f"writes reports/{experiment}/.")


def _rows(tracker: Tracker, exp_id: str, jobs: list[Job], dataset: str) -> list[RunRow]:
    """The latest run of each job in the store (FINISHED preferred)."""
    wanted = {key_of(j, dataset): j for j in jobs}
    best: dict[str, RunRow] = {}
    for r in tracker.search(exp_id, CHILD_RUNS):
        key = r.data.tags.get(TAG_KEY)
        if key not in wanted:
            continue
        j = wanted[key]
        row = RunRow(j.model, j.cfg.seed, r.info.status, r.data.metrics.get("final_test_accuracy", float("nan")),
                     r.data.metrics.get("train_seconds", float("nan")), r.data.tags.get(TAG_FAILURE, ""),
                     r.info.run_id)
        if key not in best or (best[key].status != "FINISHED" and row.status == "FINISHED"):
            best[key] = row
    return [best[k] for k in wanted if k in best]
