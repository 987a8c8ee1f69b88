"""What a training process does for compare: a stack of seeds (tune's trials: ``trials``).

Picklable job descriptions in, plain results out; no tracker, no Optuna, so
that a training process imports neither. ``engine.Engine`` runs these in its
workers or in the calling process; ``compare`` records the results.
"""

from __future__ import annotations

import io
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import torch

from ..bits import pack_correct
from ..data import Dataset
from ..models import ModelSpec, count_params
from .loop import DivergenceRule, TrainConfig, device_name
from .stacked import train_stacked

LOSS_STRIDE = 50  # train_loss is logged as the mean of each 50 optimizer steps, at the 50th (60 points a
# 3000-step run: half the time of a run's log_batch at 10 steps, and a curve as smooth)


# ---------------------------------------------------------------- compare: a stack of seeds
@dataclass(frozen=True)
class Job:
    """One (model, seed): one MLflow run."""
    model: str
    spec: ModelSpec
    cfg: TrainConfig  # seed included


@dataclass(frozen=True)
class StackJob:
    """Seeds of one model and recipe, trained in one pass."""
    model: str
    spec: ModelSpec
    cfg: TrainConfig  # the shared recipe; its seed is unused
    seeds: tuple[int, ...]
    rule: DivergenceRule = DivergenceRule()

    def job(self, seed: int) -> Job:
        return Job(self.model, self.spec, replace(self.cfg, seed=seed))

    @property
    def cost(self) -> int:
        return count_params(self.spec) * len(self.seeds)


@dataclass
class JobResult:
    job: Job
    start_ms: int
    end_ms: int
    accuracy: float = float("nan")  # final test accuracy, percent
    seconds: float = 0.0  # the seed's share of its stack's wall time
    history: list[tuple[int, float]] = field(default_factory=list)  # (step, test accuracy)
    losses: list[tuple[int, float]] = field(default_factory=list)  # (step, mean train loss of LOSS_STRIDE steps)
    weights: bytes = b""  # torch.save(state_dict)
    error: str | None = None
    failed_step: int | None = None
    engine: str = ""  # how it trained, e.g. "stacked-cpu"
    stack_size: int = 1
    stack_seconds: float = 0.0  # the whole stack's wall time
    device_name: str = ""  # what trained it, as the training process saw it
    test_correct: str = ""  # which test images the final network got right, bits.pack_correct; "" if unknown


def run_stack(ds: Dataset, stack: StackJob, ask: Callable | None = None) -> list[JobResult]:
    """Train one stack on the process's dataset; a diverged seed comes back as an error, not an exception."""
    c = stack.cfg
    start = int(time.time() * 1000)
    # on the CPU the batches are gathered as uint8 pixels, a quarter of the bytes of x_train (less memory
    # traffic per step, the same numbers)
    x = ds.pixels_train if ds.pixels_train is not None and ds.x_train.device.type == "cpu" else ds.x_train
    res = train_stacked(stack.spec, stack.seeds, [c.lr] * len(stack.seeds), c.batch_size, c.iters, c.eval_every,
                        x, ds.y_train, ds.x_test, ds.y_test, stack.rule)
    end = int(time.time() * 1000)
    device = ds.x_train.device.type
    engine = "stacked-cpu" if device == "cpu" else f"stacked-{device}-{'graph' if res.graph else 'eager'}"
    out = []
    for r in res.seeds:
        weights = b""
        if r.state_dict is not None:
            buf = io.BytesIO()
            torch.save(r.state_dict, buf)
            weights = buf.getvalue()
        out.append(JobResult(stack.job(r.seed), start, end, r.accuracy, r.seconds, r.history,
                             window_means(r.losses, LOSS_STRIDE), weights, r.failure, r.failed_step, engine,
                             len(stack.seeds), res.seconds, device_name(ds.x_train.device),
                             pack_correct(r.eval_correct) if r.eval_correct is not None else ""))
    return out


def window_means(points: list[tuple[int, float]], stride: int) -> list[tuple[int, float]]:
    """Mean of each run of ``stride`` consecutive points, at its last step.

    ``window_means([(1, 1.0), (2, 3.0), (3, 5.0)], 2) == [(2, 2.0), (3, 5.0)]``
    """
    return [(chunk[-1][0], sum(v for _, v in chunk) / len(chunk))
            for chunk in (points[i:i + stride] for i in range(0, len(points), stride))]
