"""What a stack of seeds needs in memory, estimated before anything trains (pure: no torch, no I/O).

A spec too large for the machine must fail with one line before a run exists, not with a traceback
from ``torch.empty`` after the parent run was created; a stack too large for its share of the memory
is cut into smaller stacks (every seed still trains, with its own numbers: stacks are independent).
"""

from __future__ import annotations

from dataclasses import dataclass

from .models import ModelSpec, count_params

FLOAT = 4  # bytes: float32
EVAL_CHUNK = 256 << 20  # bytes: the stacked evaluation's chunk of seeds (stacked._Stack.correct)


def seed_bytes(spec: ModelSpec, batch_size: int) -> int:
    """Bytes one seed of ``spec`` takes in a training stack: its weights and biases, the step's gradient
    buffers (as large as the weights), and per layer the batch's inputs, outputs and gradients.

    ``seed_bytes(ModelSpec((100,), "relu"), 100) == 4 * (2 * 79_510 + 3 * 100 * 894)``
    """
    return FLOAT * (2 * count_params(spec) + 3 * batch_size * sum(spec.sizes))


def eval_bytes(spec: ModelSpec, n_eval: int) -> int:
    """Bytes of a stack's evaluation pass: seeds go in chunks of EVAL_CHUNK, and at least one seed's
    widest layer over ``n_eval`` examples. ``eval_bytes(ModelSpec((100,), "relu"), 10_000) == EVAL_CHUNK``"""
    return max(EVAL_CHUNK, FLOAT * n_eval * max(spec.sizes[1:]))


@dataclass(frozen=True)
class Fit:
    one_seed: int  # bytes a stack of one seed needs, evaluation and the parent's model copy included
    max_seeds: int  # seeds per stack that fit in one worker's share of the memory (0: not even one)


def fit(spec: ModelSpec, batch_size: int, n_eval: int, available: int, workers: int) -> Fit:
    """How many seeds of ``spec`` each of ``workers`` processes can stack in ``available`` bytes.

    The parent also builds one copy of the model to save it (MLflow's model template): counted once.
    ``fit(ModelSpec((10 ** 8,), "relu"), 100, 10_000, 16 << 30, 2).max_seeds == 0``
    """
    per_seed, fixed = seed_bytes(spec, batch_size), eval_bytes(spec, n_eval)
    template = FLOAT * count_params(spec)
    share = (available - template) // max(workers, 1) - fixed
    return Fit(per_seed + fixed + template, max(0, int(share // per_seed)))


def human(n: float) -> str:
    """``human(313_600_000_000) == "292.1 GiB"``"""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.1f} TiB"
