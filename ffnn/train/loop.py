"""The training loop: tensors + config in, metrics out.

No printing, no MLflow, no Optuna: whoever wants to watch passes ``on_eval``,
called at every evaluation step. Batches are cut from in-memory tensors by a
seeded permutation each epoch (KellerJordan/airbench's data path).
"""

from __future__ import annotations

import functools
import math
import platform
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import UserError
from ..models import ModelSpec, build_model, seeded_model


@dataclass(frozen=True)
class TrainConfig:
    """The tutorial's recipe is the default."""

    lr: float = 0.1  # SGD learning rate, per optimizer step
    batch_size: int = 100  # examples per optimizer step
    iters: int = 3000  # optimizer steps in total (3000 = 5 epochs of MNIST at batch 100)
    eval_every: int = 500  # optimizer steps between evaluations; the last step is always evaluated
    seed: int = 0  # seeds the weights and the batch order

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class EvalPoint:
    step: int  # optimizer steps done so far
    accuracy: float  # percent correct on the evaluation set
    losses: list[tuple[int, float]]  # (step, train loss) since the previous evaluation


@dataclass
class SeedResult:
    """One seed trained: what the reference loop returns, and what the stacked trainer returns for each seed."""

    seed: int
    lr: float
    accuracy: float = math.nan  # final evaluation accuracy, percent; NaN when the seed failed
    history: list[tuple[int, float]] = field(default_factory=list)  # (step, accuracy)
    losses: list[tuple[int, float]] = field(default_factory=list)  # (step, train loss), up to a failure
    state_dict: dict[str, torch.Tensor] | None = None  # nn.Sequential keys, on the CPU; None when failed
    failure: str | None = None
    failed_step: int | None = None
    stopped_step: int | None = None  # on_eval stopped it after this step's evaluation (a pruned trial)
    eval_correct: np.ndarray | None = None  # (M,) bool: each eval image classified right at the final evaluation
    seconds: float = 0.0  # wall time of its training, evaluations included; in a stack, its share of the stack's

    def model(self, spec: ModelSpec) -> nn.Sequential:
        """The trained network of ``spec`` (on the CPU): ``res.model(REGISTRY["C"])(x).argmax(1)``."""
        if self.state_dict is None:
            raise ValueError(f"seed {self.seed} has no weights: {self.failure or 'it was not trained'}")
        net = build_model(spec)  # every weight is loaded: no need to seed torch's global generator
        net.load_state_dict(self.state_dict)
        return net


@dataclass(frozen=True)
class DivergenceRule:
    """When a run counts as diverged: a non-finite loss, or a loss that stays above ``threshold``.

    The default threshold is 10x the loss of an untrained 10-class model (ln 10), a level no
    successfully trained run reaches; a spike that recovers within ``window`` steps is not divergence.
    """

    threshold: float = 10 * math.log(10)  # training loss, nats
    window: int = 100  # consecutive optimizer steps above the threshold

    def count(self, above: int, loss: float) -> tuple[int, bool]:
        """One step of the rule: the consecutive steps above the threshold after ``loss`` (``above`` before
        it), and whether the run has now diverged."""
        above = above + 1 if loss > self.threshold else 0  # NaN is not above: non-finite is its own failure
        return above, not math.isfinite(loss) or above >= self.window

    def first_break(self, losses: torch.Tensor, above: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The rule over a block of steps at once, exactly as ``count`` step by step (tested).

        ``losses``: (k, S), S runs' losses for k steps; ``above``: (S,) their steps above the threshold
        before the block. Returns, per run, the index in the block of the first step that broke the rule
        (-1 if none), and the steps above at the block's end.
        """
        k = len(losses)
        pos = torch.arange(k)[:, None]
        last_low = torch.where(losses > self.threshold, -1, pos).cummax(0).values  # latest step not above
        run = torch.where(last_low >= 0, pos - last_low, pos + 1 + above)  # steps above, counted to each step
        bad = ~torch.isfinite(losses) | (run >= self.window)
        return torch.where(bad.any(0), bad.int().argmax(0), -1), run[-1] if k else above

    def reason(self, step: int, loss: float) -> str:
        """Why a run whose loss was ``loss`` at ``step`` diverged (non-finite, or the window's last loss)."""
        if not math.isfinite(loss):
            return f"training loss became {loss} at iteration {step}"
        return (f"training loss stayed above {self.threshold:.3g} for {self.window} iterations "
                f"(at iteration {step}: {loss:.4g})")


DEFAULT_RULE = DivergenceRule()  # the trainers' default (frozen: one instance serves every call)


class DeviceError(UserError):
    """The requested device is not available."""


class Diverged(Exception):
    """The training loss became NaN or infinite, or stayed above the divergence threshold."""

    def __init__(self, step: int, loss: float, losses: list[tuple[int, float]], rule: DivergenceRule):
        super().__init__(rule.reason(step, loss))
        self.step = step
        self.loss = loss
        self.losses = losses  # the finite losses not yet passed to on_eval


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA when available; asking for ``cuda`` without a GPU is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise DeviceError("--device cuda: no CUDA GPU is available on this machine (use --device cpu or auto)")
    if name not in ("cpu", "cuda"):
        raise DeviceError(f"--device must be auto, cpu or cuda, got {name!r}")
    return torch.device(name)


@functools.cache
def device_name(device: torch.device) -> str:
    """The GPU's name or the CPU's model name, for the record (a GPU's initialises CUDA in this process)."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 10_000) -> float:
    """Percent of ``x`` classified as ``y``."""
    model.eval()
    correct = 0
    for xb, yb in zip(torch.split(x, batch_size), torch.split(y, batch_size)):
        correct += (model(xb).argmax(1) == yb).sum().item()
    model.train()
    return 100.0 * correct / len(y)


def train(
    spec: ModelSpec,
    cfg: TrainConfig,
    x_train: torch.Tensor,  # (N, 784)
    y_train: torch.Tensor,  # (N,)
    x_eval: torch.Tensor,  # (M, 784)
    y_eval: torch.Tensor,  # (M,)
    on_eval: Callable[[EvalPoint], None] | None = None,
    rule: DivergenceRule = DEFAULT_RULE,
) -> SeedResult:
    """Train ``spec`` with SGD on cross-entropy; evaluate every ``cfg.eval_every`` steps."""
    device = x_train.device
    model = seeded_model(spec, cfg.seed, device)
    optimizer = torch.optim.SGD(model.parameters(), lr=cfg.lr)
    batch_order = torch.Generator().manual_seed(cfg.seed)
    n = len(x_train)

    history: list[tuple[int, float]] = []
    losses: list[tuple[int, float]] = []
    pending: list[tuple[int, float]] = []
    accuracy = float("nan")
    step = 0
    above = 0  # consecutive steps with the loss above rule.threshold
    start = time.perf_counter()
    while step < cfg.iters:
        perm = torch.randperm(n, generator=batch_order).to(device)
        for idx in torch.split(perm, cfg.batch_size):
            step += 1
            # index_select: faster than x[idx]
            loss = F.cross_entropy(model(x_train.index_select(0, idx)), y_train.index_select(0, idx))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()  # type: ignore[no-untyped-call]  # torch: Tensor.backward is unannotated
            optimizer.step()

            value = loss.item()
            above, diverged = rule.count(above, value)
            if math.isfinite(value):
                pending.append((step, value))
            if diverged:
                raise Diverged(step, value, pending, rule)
            if step % cfg.eval_every == 0 or step == cfg.iters:
                accuracy = evaluate(model, x_eval, y_eval)
                history.append((step, accuracy))
                if on_eval is not None:
                    on_eval(EvalPoint(step, accuracy, pending))
                losses += pending
                pending = []
            if step == cfg.iters:
                break
    weights = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    return SeedResult(cfg.seed, cfg.lr, accuracy, history, losses, weights, seconds=time.perf_counter() - start)
