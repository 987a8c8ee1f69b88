"""Which comparisons a report makes, in families that do not leak into each other.

Family-wise error is controlled within a family, so a family's verdicts depend only on the
models of that family: adding tuned models never changes the tutorial chain's verdicts.
- ``tutorial``: the tutorial's chain LR->A, A->B, B->C, C->D, D->E, plus LR->C and A->C.
- ``specs``: width and depth steps among the other untuned specs (a user's experiments/*.toml).
- ``capacity``: a grid's steps (``ffnn.grid``): each width to the next one of the grid at a fixed depth, and each
  added layer at a fixed width, within one activation and recipe.
- ``recipe``: X -> X*, tuned widths and lr vs the tutorial's recipe (not a capacity step).
- ``tuned``: the chain among tuned models, A*->B*->C*, C*->D*->E* (and LR*->A*, LR*->C*, A*->C*). With one
  study per architecture a step compares the two configurations those searches found; with replicate studies
  (``C*``, ``C*s2``, ...: ``ffnn tune --studies K``) on both sides it compares the architectures over them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

from ..grid import is_cell
from ..models import REGISTRY, parse_tuned
from .runs import ModelInfo
from .studies import claim_of, tuned_groups

CHAIN = (("LR", "A", "add a sigmoid hidden layer"), ("A", "B", "sigmoid -> tanh"), ("B", "C", "tanh -> relu"),
         ("C", "D", "add a layer"), ("D", "E", "add a layer"), ("LR", "C", "add a relu hidden layer"),
         ("A", "C", "sigmoid -> relu"))
FAMILIES = {"tutorial": "the tutorial's capacity steps",
            "specs": "width and depth steps among your specs",
            "capacity": "width steps and added layers of a grid",
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
    a_units: tuple[str, ...] = ()  # tuned steps: the replicate studies' models of each side (a, then a's s2, ...)
    b_units: tuple[str, ...] = ()

    @property
    def over_studies(self) -> bool:
        """Decided over independent searches (``stats.studies_test``), not over one pair of found configurations."""
        return len(self.a_units) >= 2 and len(self.b_units) >= 2


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
    others = {n: m for n, m in models.items() if not is_cell(n, m.spec)}  # grid cells have their own family
    steps += _spec_steps([m for n, m in others.items() if parse_tuned(n) is None and n not in REGISTRY], others)
    steps += capacity_steps(models)
    for name, y in models.items():
        x = models.get(name[:-1]) if name.endswith("*") else None
        if x is not None and _same(x, y, ("dataset",)):
            steps.append(Step("recipe", x.name, name, f"tuned: {y.spec.describe()}, lr {y.train_dict()['lr']}"))
    groups = tuned_groups(models)
    for a, b, change in CHAIN:
        xs, ys = groups.get(a, []), groups.get(b, [])
        if not xs or not ys or not _same(models[xs[0]], models[ys[0]], SAME_FOR_TUNED):
            continue
        xs = [u for u in xs if _same(models[u], models[xs[0]], SAME_FOR_TUNED)]  # studies of another budget: out
        ys = [u for u in ys if _same(models[u], models[xs[0]], SAME_FOR_TUNED)]
        k = f"{len(xs)}" if len(xs) == len(ys) else f"{len(xs)} and {len(ys)}"
        step = Step("tuned", xs[0], ys[0], "", tuple(xs), tuple(ys))
        steps.append(replace(step, change=f"{change}, each tuned, over {k} independent searches" if step.over_studies
                             else f"{change}, each tuned: the configurations one search found, not {claim_of(change)}"))
    return steps


def _spec_steps(own: list[ModelInfo], models: dict[str, ModelInfo]) -> list[Step]:
    """Width steps (same activation and depth, sorted by width) and added layers, each involving a user spec."""
    untuned = [m for n, m in models.items() if parse_tuned(n) is None]
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


def capacity_steps(models: dict[str, ModelInfo]) -> list[Step]:
    """A grid's steps: at each depth every width to the next width of the grid, then at each width every
    depth to the next (an added layer); only between cells of one activation and recipe."""
    groups: dict[tuple, list[ModelInfo]] = {}
    for name, m in models.items():
        if is_cell(name, m.spec):
            groups.setdefault((m.spec.activation, m.train), []).append(m)
    steps: list[Step] = []
    for cells in groups.values():
        at = {(c.spec.hidden[0], len(c.spec.hidden)): c for c in cells}  # (width, depth) -> cell
        widths, depths = sorted({w for w, _ in at}), sorted({d for _, d in at})
        for d in depths:
            row = [w for w in widths if (w, d) in at]
            steps += [Step("capacity", at[(w, d)].name, at[(v, d)].name, f"width {w} -> {v} at depth {d}")
                      for w, v in zip(row, row[1:])]
        for w in widths:
            col = [d for d in depths if (w, d) in at]
            steps += [Step("capacity", at[(w, d)].name, at[(w, e)].name,
                           f"add a layer at width {w}" if e == d + 1 else f"depth {d} -> {e} at width {w}")
                      for d, e in zip(col, col[1:])]
    return steps


def default_family(families: Sequence[str]) -> str | None:
    """The family ``--until-decided`` decides: the tutorial chain, else the first family present.

    ``default_family(["specs", "tutorial"]) == "tutorial"``
    """
    families = list(families)
    return "tutorial" if "tutorial" in families else (families[0] if families else None)
