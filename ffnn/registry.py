"""Each model's best seed: its LoggedModel (``--log-models best``) and, with ``--register``, its place in the MLflow
Model Registry as ``models:/<experiment>-<model>@best``."""

from __future__ import annotations

import io
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np

    from .compare import RunRow
    from .models import ModelSpec
    from .tracking import Tracker


@dataclass(frozen=True)
class Registered:
    model: str
    seed: int
    accuracy: float
    uri: str  # models:/<name>@<alias>
    version: int


def best_rows(rows: list[RunRow]) -> dict[str, RunRow]:
    """Each model's FINISHED seed with the highest final test accuracy (the first of a tie)."""
    best: dict[str, RunRow] = {}
    for r in rows:
        if r.status == "FINISHED" and r.run_id and not math.isnan(r.accuracy) and \
                (r.model not in best or r.accuracy > best[r.model].accuracy):
            best[r.model] = r
    return best


def log_best_models(tracker: Tracker, exp_id: str, rows: list[RunRow], spec_of: Callable[[str], ModelSpec],
                    iters_of: Callable[[str], int], example: np.ndarray) -> int:
    """A LoggedModel for each model's best FINISHED seed that has none yet, rebuilt from its ``weights.pt``
    (runs logged before ffnn kept weights have their model already); returns how many were logged. A seed
    added later that does better gets its own, and the earlier best keeps its."""
    import torch

    from .models import build_model

    logged = 0
    for model, r in best_rows(rows).items():
        if tracker.model_id(r.run_id) is not None:
            continue
        weights = tracker.weights(r.run_id)
        if weights is None:
            continue
        net = build_model(spec_of(model))
        net.load_state_dict(torch.load(io.BytesIO(weights)))
        tracker.log_torch_model(r.run_id, exp_id, net, example, iters_of(model),
                                tracker.client.get_run(r.run_id).data.params)
        logged += 1
    return logged


def register_best(experiment: str, tracker: Tracker, rows: list[RunRow]) -> list[Registered]:
    """Register each model's best seed (C* -> ``<experiment>-C-tuned``) and point the alias ``best`` at it."""
    from .tracking import BEST_ALIAS, registry_name

    out = []
    for model, r in best_rows(rows).items():
        name = registry_name(experiment, model)
        version = tracker.register_model(
            name, r.run_id, description=f"{model} seed {r.seed} of experiment {experiment!r}: the best final "
                                        f"test accuracy ({r.accuracy:.2f}%) among its seeds, so an optimistic one")
        out.append(Registered(model, r.seed, r.accuracy, f"models:/{name}@{BEST_ALIAS}", version))
    return out
