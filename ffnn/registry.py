"""``--register``: each model's best seed in the MLflow Model Registry, as ``models:/<experiment>-<model>@best``."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .compare import RunRow
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
