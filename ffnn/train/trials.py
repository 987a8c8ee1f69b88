"""What a training process does for ``tune``: trials of a study trained as stacks of seeds.

A trial trains K seeds (``TrialJob.seeds``: the study's seed and the K - 1 after it) of its spec and learning
rate in one ``stacked.train_stacked`` pass: seed s of a trial gets exactly the numbers that the stacked
trainer gives seed s of that spec and recipe anywhere else (``compare`` included). Several trials of one
batch can share a stack (``plan_stacks``): trials of the same shape, or on CUDA trials of different widths
padded to the widest, each narrower one masked so that its numbers are those it gets alone.

Picklable job descriptions in, plain outcomes out; no tracker, no Optuna, so that a training process
imports neither. At each evaluation the process asks the parent (``TrialEval`` -> the trial numbers to
stop); a trial whose seed diverged is stopped here, and its other seeds with it.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace

import torch

from .. import data as data_mod
from .. import datasets
from ..errors import Interrupted
from ..models import ModelSpec, count_params
from .jobs import LOSS_STRIDE, window_means
from .loop import DEFAULT_RULE, DivergenceRule, TrainConfig
from .stacked import StackEval, train_stacked


@dataclass(frozen=True)
class TuneData:
    """The training set cut in two; the test set is not kept."""

    x_fit: torch.Tensor  # (N - val_size, 784) trained on
    y_fit: torch.Tensor
    x_val: torch.Tensor  # (val_size, 784) the objective
    y_val: torch.Tensor
    pixels_fit: torch.Tensor | None = None  # x_fit as stored, uint8 (x_fit == pixels_fit / 255 exactly)


def load_split(dataset: datasets.Source, data_dir: str, device: str, val_size: int, seed: int) -> TuneData:
    ds = datasets.load(dataset, data_dir, device=device, verify=False)
    x_fit, y_fit, x_val, y_val = data_mod.split_validation(ds.x_train, ds.y_train, val_size, seed)
    # the same rows as uint8 (the same permutation): on the CPU batches are gathered from these, as compare does
    pixels = None
    if ds.pixels_train is not None and ds.x_train.device.type == "cpu":
        pixels = data_mod.split_validation(ds.pixels_train, ds.y_train, val_size, seed)[0]
    return TuneData(x_fit, y_fit, x_val, y_val, pixels)


@dataclass(frozen=True)
class TrialJob:
    number: int  # Optuna trial number
    spec: ModelSpec
    cfg: TrainConfig  # the trial's lr; the study's budget; cfg.seed is the first of its seeds
    n_seeds: int = 1  # K: seeds cfg.seed .. cfg.seed + K - 1, trained in one stack

    @property
    def seeds(self) -> tuple[int, ...]:
        return tuple(range(self.cfg.seed, self.cfg.seed + self.n_seeds))


@dataclass(frozen=True)
class TrialStack:
    """Trials trained in one pass: one shape, or (``padded``) widths padded to the widest."""

    trials: tuple[TrialJob, ...]
    rule: DivergenceRule = DEFAULT_RULE

    @property
    def padded(self) -> bool:
        return len({t.spec.hidden for t in self.trials}) > 1

    @property
    def widest(self) -> ModelSpec:
        return replace(self.trials[0].spec, hidden=tuple(max(w) for w in zip(*(t.spec.hidden for t in self.trials))))

    @property
    def cost(self) -> int:
        """Weights trained, padding included: what the pass costs, roughly."""
        return count_params(self.widest) * sum(t.n_seeds for t in self.trials)


@dataclass(frozen=True)
class TrialEval:
    """What the parent hears at an evaluation: each trial still training, its seeds' validation accuracy."""

    step: int
    accuracy: dict[int, list[float]]  # trial number -> percent, one per seed


@dataclass
class Outcome:
    state: str  # COMPLETE, PRUNED or FAIL (Optuna's names)
    value: float = math.nan  # mean final validation accuracy over the trial's seeds, percent
    per_seed: list[float] = field(default_factory=list)  # final validation accuracy of each seed, percent
    seconds: float = 0.0  # the trial's share of its stack's wall time (by seeds), evaluations included
    step: int = 0  # optimizer steps done
    reason: str = ""  # why it diverged or failed; empty when the pruner stopped it
    losses: list[tuple[int, float]] = field(default_factory=list)  # (step, mean train loss of its seeds), windowed
    stack_trials: int = 1  # trials in its stack

    @property
    def sd(self) -> float | None:
        """The seeds' sample standard deviation, points; None with fewer than 2 seeds."""
        return statistics.stdev(self.per_seed) if len(self.per_seed) > 1 else None


# Hidden widths where this CPU's matrix kernels give a padded seed exactly its unpadded numbers (MKL on
# AVX-512; tests/test_trials.py checks it on the machine it runs on): outside them, padding changes rounding.
PAD_EXACT = (16, 256)


def plan_stacks(trials: Sequence[TrialJob], workers: int, pad: bool, max_seeds: int,
                pad_within: int = 0) -> list[TrialStack]:
    """Cut a batch of trials into stacks, the most expensive first.

    Trials of one shape share a stack; with ``pad`` (CUDA, where a bigger stack is nearly free) all of them
    do. With ``pad_within`` (the CPU), so do trials whose widths all lie in ``PAD_EXACT`` when padding each
    to the stack's widest adds at most ``pad_within`` weights to it: a step's fixed cost, paid once per stack,
    outweighs that much arithmetic. A shape shared by many trials (a family without hidden layers, say) is
    dealt out so that there are stacks for ``workers`` processes, and no stack holds more than ``max_seeds``
    seeds.
    """
    parts = [list(trials)] if pad and trials else _close_groups(trials, pad_within)
    while len(parts) < workers and any(len(p) > 1 for p in parts):
        big = max(parts, key=len)
        parts.remove(big)
        parts += [big[::2], big[1::2]]
    stacks = []
    for part in parts:
        chunk: list[TrialJob] = []
        for t in part:
            if chunk and sum(c.n_seeds for c in chunk) + t.n_seeds > max_seeds:
                stacks.append(TrialStack(tuple(chunk)))
                chunk = []
            chunk.append(t)
        stacks.append(TrialStack(tuple(chunk)))
    return sorted(stacks, key=lambda s: -s.cost)


def _close_groups(trials: Sequence[TrialJob], within: int) -> list[list[TrialJob]]:
    """Trials by shape; then, widest first, each shape in ``PAD_EXACT`` joins the first group it can pad into
    with at most ``within`` weights added to any member."""
    shapes: dict[tuple[int, ...], list[TrialJob]] = {}
    for t in trials:
        shapes.setdefault(t.spec.hidden, []).append(t)
    lo, hi = PAD_EXACT
    groups: list[list[TrialJob]] = []  # shapes that stay on their own
    exact: list[list[TrialJob]] = []
    for hidden, part in shapes.items():
        (exact if within and all(lo <= w <= hi for w in hidden) else groups).append(part)
    merged: list[list[TrialJob]] = []
    for part in sorted(exact, key=lambda p: -count_params(p[0].spec)):
        for group in merged:
            wide = count_params(TrialStack(tuple(group + part)).widest)
            if all(wide - count_params(t.spec) <= within for t in group + part):
                group.extend(part)
                break
        else:
            merged.append(list(part))
    return merged + groups


def _mean_losses(series: Iterable[list[tuple[int, float]]]) -> list[tuple[int, float]]:
    """Per step, the mean over the seeds that have a loss there: ``[[(1, 1.0)], [(1, 3.0)]] -> [(1, 2.0)]``."""
    by_step: dict[int, list[float]] = {}
    for points in series:
        for step, v in points:
            by_step.setdefault(step, []).append(v)
    return [(s, statistics.fmean(v)) for s, v in sorted(by_step.items())]


def run_trials(data: TuneData, stack: TrialStack, ask: Callable[[TrialEval], Iterable[int]]) -> list[Outcome]:
    """Train a stack of trials; one Outcome per trial, in order. Pruning, divergence and crashes come back as
    outcomes, not exceptions. ``ask`` gets each evaluation and returns the trial numbers to stop (pruned)."""
    trials = stack.trials
    first = trials[0].cfg
    if any((t.cfg.batch_size, t.cfg.iters, t.cfg.eval_every) != (first.batch_size, first.iters, first.eval_every)
           for t in trials):
        raise ValueError("the trials of a stack share their budget")
    cols: list[list[int]] = []  # trial i -> its seeds' columns in the stack
    for t in trials:
        start = cols[-1][-1] + 1 if cols else 0
        cols.append(list(range(start, start + t.n_seeds)))
    index = {t.number: i for i, t in enumerate(trials)}
    over: set[int] = set()  # trials stopped: diverged or pruned
    pruned_at: dict[int, int] = {}

    def on_eval(ev: StackEval) -> list[int]:
        stop: list[int] = []
        report = {}
        for i, t in enumerate(trials):
            if i in over:
                continue
            accuracy = [ev.accuracy[j] for j in cols[i]]
            if any(math.isnan(a) for a in accuracy):  # a seed diverged: so has the trial, and its seeds stop
                over.add(i)
                stop += cols[i]
            else:
                report[t.number] = accuracy
        if report:
            for number in set(ask(TrialEval(ev.step, report))) & set(report):
                i = index[number]
                over.add(i)
                pruned_at[i] = ev.step
                stop += cols[i]
        return stop

    specs = [t.spec for t in trials for _ in t.seeds]
    x = data.pixels_fit if data.pixels_fit is not None else data.x_fit
    try:
        res = train_stacked(specs if stack.padded else specs[0], [s for t in trials for s in t.seeds],
                            [t.cfg.lr for t in trials for _ in t.seeds], first.batch_size, first.iters,
                            first.eval_every, x, data.y_fit, data.x_val, data.y_val, stack.rule, on_eval)
    except Interrupted:
        raise
    except Exception as e:  # a failed stack is recorded, the study goes on
        reason = f"{type(e).__name__}: {e}".splitlines()[0][:500]
        return [Outcome("FAIL", reason=reason, stack_trials=len(trials)) for _ in trials]
    n_seeds = len(res.seeds)
    out = []
    for i, t in enumerate(trials):
        seeds = [res.seeds[j] for j in cols[i]]
        o = Outcome("COMPLETE", seconds=res.seconds * len(seeds) / n_seeds, step=first.iters,
                    losses=window_means(_mean_losses(r.losses for r in seeds), LOSS_STRIDE), stack_trials=len(trials))
        failed = sorted((r for r in seeds if r.failure is not None), key=lambda r: r.failed_step or 0)
        if failed:
            # Pruned rather than failed: TPE ranks pruned trials below every finished one but ignores
            # failed ones, so this way it learns that the region diverges.
            bad = failed[0]
            reason = bad.failure or "diverged"
            o.state, o.step = "PRUNED", bad.failed_step or 0
            o.reason = reason if t.n_seeds == 1 else f"{reason} (seed {bad.seed})"
        else:
            o.per_seed = [r.accuracy for r in seeds]
            if i in pruned_at:
                o.state, o.step = "PRUNED", pruned_at[i]
            else:
                o.value = statistics.fmean(o.per_seed)
        out.append(o)
    return out


def trial_work(data: TuneData, stack: TrialStack, ask: Callable[[TrialEval], Iterable[int]]) -> list[Outcome]:
    """The engine's work for a stack of trials: ``ask`` sends each evaluation to the parent and returns the
    trials it pruned."""
    return run_trials(data, stack, ask)
