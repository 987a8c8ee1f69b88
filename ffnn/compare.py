"""`compare`: train every (model, seed) of an experiment and record each run.

Training happens in worker processes (or in this one); every MLflow write
happens here, in the parent, through one ``Tracker``: one writer per store.
"""

from __future__ import annotations

import contextlib
import io
import multiprocessing
import os
import random
import signal
import time
import traceback
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

import torch

from . import data as data_mod
from .config import CompareConfig, validate_train
from .errors import Interrupted, deferred_interrupts, ignore_interrupts
from .models import ModelSpec, count_params
from .tracking import TAG_KEY, TAG_KIND, Tracker, TrackingError, heartbeat_interval, run_key
from .train import Diverged, EvalPoint, TrainConfig, device_name, resolve_device, train


@dataclass(frozen=True)
class Job:
    model: str
    spec: ModelSpec
    cfg: TrainConfig  # seed included


@dataclass
class JobResult:
    job: Job
    start_ms: int
    end_ms: int
    accuracy: float = float("nan")  # final test accuracy, percent
    seconds: float = 0.0
    history: list[tuple[int, float]] = field(default_factory=list)  # (step, test accuracy)
    losses: list[tuple[int, float]] = field(default_factory=list)  # (step, train loss)
    weights: bytes = b""  # torch.save(state_dict)
    error: str | None = None
    failed_step: int | None = None


@dataclass
class RunRow:
    """One (model, seed) of this comparison as it stands in the store."""
    model: str
    seed: int
    status: str
    accuracy: float
    seconds: float
    failure: str = ""


# CPU matmul results depend on the thread count; one thread per training process makes a
# run's metrics identical whatever --workers is, and workers use the other cores.
TRAIN_THREADS = 1
LOSS_STRIDE = 10  # train_loss is logged as the mean of each 10 optimizer steps, at the 10th

# ---------------------------------------------------------------- workers
_DATA: data_mod.Dataset | None = None


def _init_worker(dataset: data_mod.DatasetSpec, data_dir: str, device: str) -> None:
    global _DATA
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides what an interrupt means
    torch.set_num_threads(TRAIN_THREADS)
    _DATA = data_mod.load(dataset, data_dir, device=device, verify=False)


def run_job(job: Job) -> JobResult:
    """Train one (model, seed) on the process's dataset; never raises for training failures."""
    assert _DATA is not None, "worker has no data"
    ds = _DATA
    start = int(time.time() * 1000)
    losses: list[tuple[int, float]] = []

    def on_eval(point: EvalPoint) -> None:
        losses.extend(point.losses)

    try:
        res = train(job.spec, job.cfg, ds.x_train, ds.y_train, ds.x_test, ds.y_test, on_eval)
    except Diverged as e:
        losses.extend(e.losses)
        return JobResult(job, start, int(time.time() * 1000), losses=losses,
                         error=f"diverged: {e}", failed_step=e.step)
    except Exception as e:  # a failed run is recorded, the comparison goes on
        return JobResult(job, start, int(time.time() * 1000), losses=losses,
                         error=f"{type(e).__name__}: {e}".splitlines()[0] + "\n" + traceback.format_exc(limit=3))
    buf = io.BytesIO()
    torch.save({k: v.cpu() for k, v in res.model.state_dict().items()}, buf)
    return JobResult(job, start, int(time.time() * 1000), res.accuracy, res.seconds, res.history, losses,
                     buf.getvalue())


# ---------------------------------------------------------------- parent
def key_of(job: Job, dataset: str) -> str:
    c = job.cfg
    return run_key({"model": job.model, "hidden": list(job.spec.hidden), "activation": job.spec.activation_name,
                    "lr": c.lr, "batch_size": c.batch_size, "iters": c.iters, "eval_every": c.eval_every,
                    "seed": c.seed, "dataset": dataset})


def run_params(job: Job, dataset: str, device: str) -> dict[str, object]:
    c = job.cfg
    return {"model": job.model, "activation": job.spec.activation_name, "hidden_sizes": job.spec.hidden_str,
            "lr": c.lr, "batch_size": c.batch_size, "iters": c.iters, "eval_every": c.eval_every,
            "seed": c.seed, "dataset": dataset, "device": device, "n_params": count_params(job.spec)}


def worker_count(cfg: CompareConfig, device: torch.device, n_jobs: int) -> int:
    if cfg.workers:
        return max(1, min(cfg.workers, n_jobs))
    if device.type == "cuda":
        return 1
    return max(1, min(os.cpu_count() or 1, n_jobs))


Progress = Callable[[str, JobResult | None], None]


def compare(cfg: CompareConfig, data_dir: str, data_source: str | None, tracking_uri: str | None,
            progress: Progress | None = None) -> tuple[list[RunRow], Tracker, str]:
    """Train what is missing; return every (model, seed) row, the tracker and the experiment id."""
    device = resolve_device(cfg.device)
    spec = data_mod.get_spec(cfg.dataset)
    folder = data_mod.prepare(spec, data_dir, data_source)
    validate_train(cfg.train, data_mod.count_examples(folder))
    tracker = Tracker.open(tracking_uri)
    exp_id = tracker.experiment_id(cfg.experiment)
    tracker.fail_orphans(exp_id)

    all_jobs = [Job(m, cfg.spec(m), replace(cfg.train, seed=s)) for m in cfg.models for s in range(cfg.seeds)]
    done = tracker.finished_keys(exp_id)
    todo = [j for j in all_jobs if key_of(j, cfg.dataset) not in done]
    say = progress or (lambda msg, res: None)
    say(f"{len(all_jobs) - len(todo)} of {len(all_jobs)} runs already finished; training {len(todo)}", None)
    if todo:
        _train_jobs(cfg, todo, spec, folder, device, data_dir, tracker, exp_id, say)
    return _rows(tracker, exp_id, all_jobs, cfg.dataset), tracker, exp_id


def _train_jobs(cfg: CompareConfig, todo: list[Job], spec: data_mod.DatasetSpec, folder: Path,
                device: torch.device, data_dir: str, tracker: Tracker, exp_id: str, say: Progress) -> None:
    """``folder`` holds the verified raw files that ``prepare`` returned."""
    workers = worker_count(cfg, device, len(todo))
    source = str(folder.resolve())
    n_train = data_mod.count_examples(folder)
    n_test = data_mod.count_examples(folder, "t10k-labels-idx1-ubyte")
    dev_name = device_name(device)
    common_tags = {"ffnn.device_name": dev_name, "ffnn.torch_version": torch.__version__,
                   "ffnn.dataset_sha256": spec.digest}
    parent = tracker.start_run(
        exp_id, f"compare {','.join(cfg.models)} x{cfg.seeds}",
        params={"models": ",".join(cfg.models), "seeds": cfg.seeds, "dataset": cfg.dataset, "device": device.type,
                "workers": workers, **{k: v for k, v in cfg.train.as_dict().items() if k != "seed"}},
        tags={TAG_KIND: "comparison", **common_tags},
        description=(f"Compares {', '.join(f'{m} ({cfg.spec(m).describe()})' for m in cfg.models)} over "
                     f"{cfg.seeds} seeds on {cfg.dataset}; {len(todo)} runs trained by this invocation. "
                     f"Report: `ffnn report --experiment {cfg.experiment}` -> reports/{cfg.experiment}/"))
    tracker.start_heartbeat(parent)  # other processes see this one alive while it is fresh
    active: dict[Future, tuple[Job, str]] = {}  # training in a worker
    open_runs: set[str] = set()  # created and not yet ended
    others: dict[str, Job] = {}  # run key -> job another process holds: trained again if that process dies
    pool = None
    status = "FINISHED"
    try:
        if workers > 1:
            pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                                       initializer=_init_worker,
                                       initargs=(spec, data_dir, device.type))
        else:
            global _DATA
            _DATA = data_mod.load(spec, data_dir, device=device, verify=False)
            torch.set_num_threads(TRAIN_THREADS)
        queue = list(todo)

        def start(job: Job) -> str:
            return tracker.start_run(
                exp_id, f"{job.model} seed={job.cfg.seed}", run_params(job, cfg.dataset, device.type),
                tags={TAG_KIND: "run", TAG_KEY: key_of(job, cfg.dataset), "ffnn.model": job.model,
                      "ffnn.spec": job.spec.describe(), **common_tags},
                parent_id=parent)

        def launch(job: Job) -> str | None:
            """Create, claim and register the run as one step that an interrupt cannot split."""
            key = key_of(job, cfg.dataset)
            with deferred_interrupts():
                if tracker.taken(exp_id, key):
                    others[key] = job
                    return None
                run_id = start(job)
                open_runs.add(run_id)
                if not tracker.claim(exp_id, key, run_id):
                    open_runs.discard(run_id)
                    others[key] = job
                    return None
                tracker.log_dataset(run_id, cfg.dataset, spec.digest, source, n_train, n_test)
                return run_id

        def finish(run_id: str, result: JobResult) -> None:
            with deferred_interrupts():
                _record(tracker, run_id, result)
                open_runs.discard(run_id)
            say(f"{result.job.model} seed={result.job.cfg.seed}", result)

        while queue or active or others:
            if not queue and not active:
                queue = _orphaned(tracker, exp_id, others, say)
            while queue and len(active) < workers:
                job = queue.pop(0)
                run_id = launch(job)
                if run_id is None:
                    continue
                if pool is None:
                    finish(run_id, run_job(job))
                else:
                    active[pool.submit(run_job, job)] = (job, run_id)
            if pool is not None and active:
                finished, _ = wait(list(active), return_when=FIRST_COMPLETED)
                for fut in finished:
                    job, run_id = active.pop(fut)
                    try:
                        result = fut.result()
                    except Exception as e:  # the worker process died
                        now = int(time.time() * 1000)
                        result = JobResult(job, now, now, error=f"worker failed: {type(e).__name__}: {e}")
                    finish(run_id, result)
    except BaseException as e:
        status = "KILLED" if isinstance(e, (KeyboardInterrupt, Interrupted)) else "FAILED"
        # a second Ctrl-C must not cut the clean-up short; with the server lost there is nothing to close
        with ignore_interrupts(), contextlib.suppress(TrackingError):
            if pool is not None:
                pool.shutdown(wait=False, cancel_futures=True)
            for run_id in open_runs:
                tracker.end_run(run_id, status, {"ffnn.failure": f"interrupted ({e or 'SIGINT'})"
                                                 if status == "KILLED" else "comparison crashed"})
            tracker.end_run(parent, status)
        raise
    if pool is not None:
        pool.shutdown(wait=True)
    tracker.end_run(parent, status)


def _orphaned(tracker: Tracker, exp_id: str, others: dict[str, Job], say: Progress) -> list[Job]:
    """Wait a heartbeat for the jobs other processes hold; return those nobody holds any more (their owner
    died, or they failed) and forget those that FINISHED."""
    time.sleep(heartbeat_interval() * random.uniform(0.5, 1.0))  # jitter: two idle processes do not collide
    finished, free = tracker.open_keys(exp_id, others)
    for key in finished:
        del others[key]
    jobs = [others.pop(key) for key in list(others) if key in free]
    if jobs:
        say(f"{len(jobs)} run(s) that another process left unfinished: taking them over", None)
    return jobs


def _record(tracker: Tracker, run_id: str, r: JobResult) -> None:
    tracker.log_metrics(run_id, "train_loss", window_means(r.losses, LOSS_STRIDE))
    tracker.log_metrics(run_id, "test_accuracy", r.history)
    if r.error is None:
        tracker.log_values(run_id, {"final_test_accuracy": r.accuracy, "train_seconds": r.seconds},
                           step=r.job.cfg.iters)
        tracker.log_files(run_id, {"state_dict.pt": r.weights,
                                   "spec.json": _spec_json(r.job).encode()}, "model")
        tracker.end_run(run_id, "FINISHED")
    else:
        tags = {"ffnn.failure": r.error.splitlines()[0][:500]}
        if r.failed_step is not None:
            tags["ffnn.failure_step"] = str(r.failed_step)
        tracker.end_run(run_id, "FAILED", tags)


def window_means(points: list[tuple[int, float]], stride: int) -> list[tuple[int, float]]:
    """Mean of each run of ``stride`` consecutive points, at its last step.

    ``window_means([(1, 1.0), (2, 3.0), (3, 5.0)], 2) == [(2, 2.0), (3, 5.0)]``
    """
    return [(chunk[-1][0], sum(v for _, v in chunk) / len(chunk))
            for chunk in (points[i:i + stride] for i in range(0, len(points), stride))]


def _spec_json(job: Job) -> str:
    import json
    return json.dumps({"model": job.model, "hidden": list(job.spec.hidden), "activation": job.spec.activation_name,
                       "sizes": job.spec.sizes}, indent=2)


def _rows(tracker: Tracker, exp_id: str, jobs: list[Job], dataset: str) -> list[RunRow]:
    """The latest run of each job in the store (FINISHED preferred)."""
    wanted = {key_of(j, dataset): j for j in jobs}
    best: dict[str, RunRow] = {}
    for r in tracker.search(exp_id, f"tags.`{TAG_KIND}` = 'run'"):
        key = r.data.tags.get(TAG_KEY)
        if key not in wanted:
            continue
        j = wanted[key]
        row = RunRow(j.model, j.cfg.seed, r.info.status, r.data.metrics.get("final_test_accuracy", float("nan")),
                     r.data.metrics.get("train_seconds", float("nan")), r.data.tags.get("ffnn.failure", ""))
        if key not in best or (best[key].status != "FINISHED" and row.status == "FINISHED"):
            best[key] = row
    return [best[k] for k in wanted if k in best]
