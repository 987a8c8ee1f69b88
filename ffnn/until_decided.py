"""`ffnn compare --until-decided`: add seeds in rounds until the default family is decided.

Each round trains seeds 0..n-1 of every model through ``compare`` (which skips what already
finished, so an interrupted run resumes by running the same command again), reads the runs back,
and decides the default family (the tutorial's chain) with the sequential rule of
``report.sequential``: repeated confidence intervals with O'Brien-Fleming-type alpha spending over
the planned looks ``round, 2 round, ..., max_seeds``. It stops at the first look where every
comparison is helped, hurt or equivalent, or at ``max_seeds``. The design is recorded on the
experiment (tag ``ffnn.sequential``) so that ``ffnn report`` applies the same boundaries.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable

import pandas as pd

from .compare import Progress, RunRow, compare
from .config import CompareConfig
from .context import Context
from .errors import UserError
from .report.build import ReportConfig, analyse, design_from_tag, design_tag
from .report.plan import default_family
from .report.runs import tidy_runs
from .report.sequential import Design
from .tracking import TAG_SEQUENTIAL, Tracker


@dataclass
class Decided:
    rows: list[RunRow]  # compare's rows at the last look
    tracker: Tracker
    experiment_id: str
    seeds: int  # seeds per model at the last look
    family: str | None  # the family that was decided
    table: pd.DataFrame  # that family's comparisons at the last look (report.compare_steps columns)
    decided: bool  # every comparison of the family is helped, hurt or equivalent


def check_design(design: Design) -> Design:
    """Every error names the flag and the bad value."""
    if design.max_seeds < 2:
        raise UserError(f"--max-seeds: must be >= 2, got {design.max_seeds}")
    if not 1 <= design.round <= design.max_seeds:
        raise UserError(f"--round: must be between 1 and --max-seeds ({design.max_seeds}), got {design.round}")
    if not design.margin > 0:
        raise UserError(f"--margin: must be a number of points > 0, got {design.margin}")
    return design


def _compare_round(cfg: CompareConfig, seeds: int, ctx: Context, progress: Progress | None
                   ) -> tuple[list[RunRow], str]:
    """The one place this module trains: ``compare`` as ``cli.cmd_compare`` calls it, with ``seeds`` seeds."""
    return compare(replace(cfg, seeds=seeds), ctx, progress)


def decide_look(tracker: Tracker, experiment_id: str, cfg: CompareConfig, design: Design, seeds: int
                ) -> tuple[str | None, pd.DataFrame]:
    """The default family's comparisons on seeds 0..seeds-1 of ``cfg.models``, at this look."""
    frame = tracker.runs_frame([experiment_id])
    runs = tidy_runs(frame)
    runs = runs[runs["model"].isin(cfg.models) & (runs["seed"] < seeds)]
    _, _, table, _, _ = analyse(runs, ReportConfig(experiments=(cfg.experiment,), models=()), design)
    family = default_family(table["family"])
    return family, table[table["family"] == family].reset_index(drop=True)


def until_decided(cfg: CompareConfig, design: Design, ctx: Context, progress: Progress | None = None,
                  say: Callable[[str], None] = lambda msg: None) -> Decided:
    """Train round after round until the default family is decided or ``design.max_seeds`` is reached."""
    check_design(design)
    tracker = ctx.tracker
    exp_id = tracker.experiment_id(cfg.experiment)
    recorded = design_from_tag(tracker.experiment_tags(exp_id).get(TAG_SEQUENTIAL))
    if recorded is not None and recorded != design:
        raise UserError(f"--until-decided: experiment {cfg.experiment!r} was run with --round {recorded.round} "
                        f"--max-seeds {recorded.max_seeds} --margin {recorded.margin:g} (alpha {recorded.alpha:g}); "
                        f"use the same, or another --experiment")
    tracker.set_experiment_tags(exp_id, {TAG_SEQUENTIAL: design_tag(design)})
    result = None
    for seeds in design.looks():
        rows, exp_id = _compare_round(cfg, seeds, ctx, progress)
        family, table = decide_look(tracker, exp_id, cfg, design, seeds)
        decided = bool(len(table)) and bool((table["verdict"] != "undecided").all())
        open_steps = [f"{r.a} -> {r.b}" for r in table.itertuples() if r.verdict == "undecided"]
        say(f"look at {seeds} seeds: " + (f"{family} family decided" if decided else
                                          f"undecided: {', '.join(open_steps) or 'no comparisons'}"))
        result = Decided(rows, tracker, exp_id, seeds, family, table, decided)
        if decided or not len(table):
            break
    return result
