"""Which comparisons a report makes, in families that do not leak into each other.

Family-wise error is controlled within a family, so a family's verdicts depend only on the
models of that family: adding tuned models never changes the tutorial chain's verdicts.
- ``tutorial``: the tutorial's chain LR->A, A->B, B->C, C->D, D->E, plus LR->C and A->C.
- ``specs``: width and depth steps among the other untuned specs (a user's experiments/*.toml).
- ``recipe``: X -> X*, tuned widths and lr vs the tutorial's recipe (not a capacity step).
- ``tuned``: the chain among tuned models, A*->B*->C*, C*->D*->E* (and LR*->A*, LR*->C*, A*->C*).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from ..models import REGISTRY
from .runs import ModelInfo

CHAIN = (("LR", "A", "add a sigmoid hidden layer"), ("A", "B", "sigmoid -> tanh"), ("B", "C", "tanh -> relu"),
         ("C", "D", "add a layer"), ("D", "E", "add a layer"), ("LR", "C", "add a relu hidden layer"),
         ("A", "C", "sigmoid -> relu"))
FAMILIES = {"tutorial": "the tutorial's capacity steps",
            "specs": "width and depth steps among your specs",
            "recipe": "tuned widths and lr vs the tutorial's recipe",
            "tuned": "capacity steps between tuned models"}
SAME_FOR_CAPACITY = ("lr", "batch_size", "iters", "dataset")  # an untuned step changes nothing else
SAME_FOR_TUNED = ("batch_size", "iters", "dataset")  # tuned models differ in lr by design


@dataclass(frozen=True)
class Step:
    family: str  # a key of FAMILIES
    a: str  # the baseline model
    b: str  # the model after the change
    change: str  # in words


def _same(x: ModelInfo, y: ModelInfo, fields: Sequence[str]) -> bool:
    tx, ty = x.train_dict(), y.train_dict()
    return all(tx[f] == ty[f] for f in fields)


def plan(models: dict[str, ModelInfo]) -> list[Step]:
    """Every family's steps among ``models``, families in the order of FAMILIES."""
    steps: list[Step] = []
    for a, b, change in CHAIN:
        x, y = models.get(a), models.get(b)
        if x and y and _same(x, y, SAME_FOR_CAPACITY):
            steps.append(Step("tutorial", a, b, change))
    steps += _spec_steps([m for n, m in models.items() if not n.endswith("*") and n not in REGISTRY], models)
    for name, y in models.items():
        x = models.get(name[:-1]) if name.endswith("*") else None
        if x is not None and _same(x, y, ("dataset",)):
            steps.append(Step("recipe", x.name, name, f"tuned: {y.spec.describe()}, lr {y.train_dict()['lr']}"))
    for a, b, change in CHAIN:
        x, y = models.get(a + "*"), models.get(b + "*")
        if x and y and _same(x, y, SAME_FOR_TUNED):
            steps.append(Step("tuned", x.name, y.name, f"{change}, each tuned"))
    return steps


def _spec_steps(own: list[ModelInfo], models: dict[str, ModelInfo]) -> list[Step]:
    """Width steps (same activation and depth, sorted by width) and added layers, each involving a user spec."""
    untuned = [m for n, m in models.items() if not n.endswith("*")]
    mine = {m.name for m in own}
    steps: list[Step] = []
    groups: dict[tuple, list[ModelInfo]] = {}
    for x in untuned:
        if x.spec.hidden:
            groups.setdefault((x.spec.activation, len(x.spec.hidden), x.train), []).append(x)
    for group in groups.values():
        group = sorted(group, key=lambda m: (sum(m.spec.hidden), m.spec.hidden))
        for x, y in zip(group, group[1:]):
            if x.spec.hidden != y.spec.hidden and {x.name, y.name} & mine:
                steps.append(Step("specs", x.name, y.name, f"width {x.spec.hidden_str} -> {y.spec.hidden_str}"))
    for x in untuned:
        for y in untuned:
            hx, hy = x.spec.hidden, y.spec.hidden
            if ({x.name, y.name} & mine and hx and x.spec.activation == y.spec.activation
                    and hy == (*hx, hx[-1]) and _same(x, y, SAME_FOR_CAPACITY)):
                steps.append(Step("specs", x.name, y.name, "add a layer"))
    return steps


def default_family(families: Sequence[str]) -> str | None:
    """The family ``--until-decided`` decides: the tutorial chain, else the first family present.

    ``default_family(["specs", "tutorial"]) == "tutorial"``
    """
    families = list(families)
    return "tutorial" if "tutorial" in families else (families[0] if families else None)
