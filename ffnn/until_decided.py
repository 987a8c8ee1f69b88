"""`ffnn compare --until-decided`: add seeds in rounds until the default family is decided.

Each round trains seeds 0..n-1, through ``compare`` (which skips what already finished, so an
interrupted run resumes by running the same command again), of the models that still have an
undecided comparison (every model at the first look), reads the runs back, and decides the default
family (the tutorial's chain) with the anytime-valid confidence sequences of ``report.sequential``
at the looks ``round, 2 round, ..., max_seeds``. A comparison keeps the verdict of the first look that
decided it; the models of decided comparisons only stop training. It stops at the first look where
every comparison is decided, or at ``max_seeds``. The design is recorded on the experiment (tag
``ffnn.sequential``) so that ``ffnn report`` applies the same rule.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import pandas as pd

from .compare import RunRow, compare
from .config import CompareConfig
from .context import Context
from .errors import UserError
from .events import Listener, Note, ignore
from .report.build import ReportConfig, analyse, design_from_tag, design_tag
from .report.io import read_runs
from .report.plan import default_family
from .report.sequential import Design
from .tracking import TAG_SEQUENTIAL, Tracker


@dataclass
class Decided:
    rows: list[RunRow]  # compare's rows of every round
    tracker: Tracker
    experiment_id: str
    seeds: int  # seeds per model at the last look (of the models still training then)
    family: str | None  # the family that was decided
    table: pd.DataFrame  # that family's comparisons at the last look (report.verdicts columns)
    decided: bool  # every comparison of the family is helped, hurt, negligible or equivalent
    runs: int = 0  # FINISHED (model, seed) runs of the comparison at the end, over all rounds

    def seeds_per_model(self) -> dict[str, int]:
        """``{"LR": 10, ..., "E": 40}``: the models of decided comparisons stopped early"""
        out: dict[str, int] = {}
        for r in self.rows:
            out[r.model] = max(out.get(r.model, 0), r.seed + 1)
        return out


def check_design(design: Design) -> Design:
    """Every error names the flag and the bad value."""
    if design.max_seeds < 2:
        raise UserError(f"--max-seeds: must be >= 2, got {design.max_seeds}")
    if not 1 <= design.round <= design.max_seeds:
        raise UserError(f"--round: must be between 1 and --max-seeds ({design.max_seeds}), got {design.round}")
    if not (design.margin > 0 and math.isfinite(design.margin)):
        raise UserError(f"--margin: must be a number of points > 0, got {design.margin:g}")
    return design


def _compare_round(cfg: CompareConfig, seeds: int, ctx: Context, on_event: Listener
                   ) -> tuple[list[RunRow], str]:
    """The one place this module trains: ``compare`` as ``cli.cmd_compare`` calls it, with ``seeds`` seeds."""
    return compare(replace(cfg, seeds=seeds), ctx, on_event)


def decide_look(tracker: Tracker, experiment_id: str, cfg: CompareConfig, design: Design, seeds: int
                ) -> tuple[str | None, pd.DataFrame]:
    """The default family's comparisons on seeds 0..seeds-1 of ``cfg.models``, at this look."""
    runs = read_runs(tracker, [experiment_id])
    runs = runs[runs["model"].isin(cfg.models) & (runs["seed"] < seeds)]
    table = analyse(runs, ReportConfig(experiments=(cfg.experiment,), models=()), design).table
    family = default_family(table["family"])
    return family, table[table["family"] == family].reset_index(drop=True)


def until_decided(cfg: CompareConfig, design: Design, ctx: Context, on_event: Listener = ignore) -> Decided:
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
    result: Decided | None = None
    training = cfg
    every: dict[tuple[str, int], RunRow] = {}  # the rows of every round: models stop at different looks
    for seeds in design.looks():
        rows, exp_id = _compare_round(training, seeds, ctx, on_event)
        every.update({(r.model, r.seed): r for r in rows})
        family, table = decide_look(tracker, exp_id, cfg, design, seeds)
        undecided = table[table["verdict"] == "undecided"]
        decided = bool(len(table)) and undecided.empty
        open_steps = [f"{r.a} -> {r.b}" for r in undecided.itertuples()]
        on_event(Note(f"look at {seeds} seeds: " + (f"{family} family decided" if decided else
                                                    f"undecided: {', '.join(open_steps) or 'no comparisons'}")))
        result = Decided(list(every.values()), tracker, exp_id, seeds, family, table, decided,
                         sum(r.status == "FINISHED" for r in every.values()))
        if decided or not len(table):
            break
        # only the models of undecided comparisons get the next round's seeds
        still = set(undecided["a"]) | set(undecided["b"])
        training = replace(cfg, models=tuple(m for m in cfg.models if m in still))
    assert result is not None  # design.looks() is never empty
    return result
