"""Grid experiments: width x depth (x budget x learning rate) cells, each an ordinary model of a comparison.

An experiment file's ``[grid]`` table (``config.parse_grid``) expands into one spec per cell: ``depth``
hidden layers of ``width`` units each, one activation. A cell is named ``w{width}d{depth}``, plus
``i{iters}`` when the grid has an ``iters`` axis and ``lr{lr}`` when it has an ``lr`` axis, and trains
with its own recipe (the experiment's, with that cell's iters and lr). The cells then go through the
normal compare path, seeds stacked per cell; the report finds them by their names (``parse_cell``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

from .models import ModelSpec
from .train import TrainConfig

_CELL = re.compile(r"^w(\d+)d(\d+)(?:i(\d+))?(?:lr([0-9][0-9.e+-]*))?$")


@dataclass(frozen=True)
class Grid:
    widths: tuple[int, ...]  # hidden units of every layer of a cell, ascending
    depths: tuple[int, ...]  # hidden layers, ascending, each >= 1
    activation: str = "relu"  # one of ffnn.models.ACTIVATIONS, after every hidden layer
    iters: tuple[int, ...] = ()  # the budget axis, optimizer steps; () = the experiment's one budget
    lr: tuple[float, ...] = ()  # the learning-rate axis, per step; () = the experiment's one lr

    @property
    def n_cells(self) -> int:
        return len(self.widths) * len(self.depths) * max(1, len(self.iters)) * max(1, len(self.lr))


@dataclass(frozen=True)
class Cell:
    width: int
    depth: int
    iters: int | None = None  # set when the grid has an iters axis
    lr: float | None = None  # set when the grid has an lr axis

    @property
    def name(self) -> str:
        """``Cell(100, 2).name == "w100d2"``; ``Cell(100, 2, 3000, 0.05).name == "w100d2i3000lr0.05"``"""
        return (f"w{self.width}d{self.depth}" + ("" if self.iters is None else f"i{self.iters}")
                + ("" if self.lr is None else f"lr{self.lr:g}"))


def parse_cell(name: str) -> Cell | None:
    """The cell a model name stands for; None if it is not a cell's name.

    ``parse_cell("w100d2i3000") == Cell(100, 2, 3000)``; ``parse_cell("C") is None``
    """
    m = _CELL.match(name)
    if m is None:
        return None
    try:
        lr = None if m.group(4) is None else float(m.group(4))
    except ValueError:
        return None
    return Cell(int(m.group(1)), int(m.group(2)), None if m.group(3) is None else int(m.group(3)), lr)


def is_cell(name: str, spec: ModelSpec) -> bool:
    """Whether model ``name`` with ``spec`` is a grid cell: its name says its width and depth, and its spec
    is that many layers of that width. ``is_cell("w50d2", ModelSpec((50, 50), "relu")) is True``"""
    cell = parse_cell(name)
    return cell is not None and cell.depth >= 1 and spec.hidden == (cell.width,) * cell.depth


def expand(grid: Grid, train: TrainConfig) -> dict[str, tuple[ModelSpec, TrainConfig]]:
    """Every cell's name -> (spec, recipe), by budget, lr, depth, then width.

    ``list(expand(Grid((25, 50), (1,)), TrainConfig())) == ["w25d1", "w50d1"]``
    """
    out = {}
    for iters in grid.iters or (None,):
        for lr in grid.lr or (None,):
            recipe = train if iters is None else replace(train, iters=iters)
            recipe = recipe if lr is None else replace(recipe, lr=lr)
            for depth in grid.depths:
                for width in grid.widths:
                    out[Cell(width, depth, iters, lr).name] = (ModelSpec((width,) * depth, grid.activation), recipe)
    return out
