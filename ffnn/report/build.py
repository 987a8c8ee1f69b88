"""`report`: runs in MLflow -> outcomes -> families of comparisons -> verdicts -> files.

Reads what ``ffnn compare`` (and ``ffnn tune --final``) logged; never trains. Each comparison
``a -> b`` gets a verdict at two scopes, this test set and new images (``verdicts``): helped, hurt,
negligible (real, but within +-margin), equivalent (within +-margin) or undecided (with the seeds a
decision would need). Each report records its look on the experiment (``looks``).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from .capacity import Capacity, analyse_capacity
from .looks import grown_steps
from .plan import plan
from .runs import TRAIN_FIELDS, ReportError, Selection, select_runs, summarise, typical_std
from .sequential import METHOD_NAME, Design
from .spending import METHOD_NAME as SPENDING_NAME
from .stats import MIN_SEEDS, binomial_se
from .studies import budgets, study_columns, tuned_text
from .verdicts import UNAVAILABLE, compare_steps, more_seeds_cannot_decide

FORMATS = ("csv", "md", "tex", "html", "png")
N_TEST = {"mnist": 10_000, "fashion-mnist": 10_000}  # test images, where a run logged no dataset profile


@dataclass(frozen=True)
class ReportConfig:
    experiments: tuple[str, ...] = ("compare",)  # MLflow experiment names, pooled
    models: tuple[str, ...] = ()  # model names to include; () = all
    out: Path | None = None  # output folder; None = reports/<experiment>/
    formats: tuple[str, ...] = FORMATS  # files to write, from FORMATS
    alpha: float = 0.05  # family-wise error rate of the verdicts of each family
    margin: float = 0.2  # points: a difference within +-margin is "equivalent" (or "negligible" if real)
    confidence: float = 0.95  # of the per-model intervals and plot bands
    power: float = 0.8  # wanted probability of a decision, for "seeds to decide"

    @property
    def out_dir(self) -> Path:
        if self.out is not None:
            return Path(self.out)
        return Path("reports") / "+".join(re.sub(r"[^A-Za-z0-9._-]+", "_", e) for e in self.experiments)


def build_report_config(experiments: Sequence[str] | None = None, models: str | None = None,
                        out: str | None = None, formats: str | None = None,
                        margin: float | None = None) -> ReportConfig:
    """From CLI values; every error names the flag and the bad value."""
    names = tuple(dict.fromkeys(e.strip() for e in (experiments or ["compare"]) if e.strip()))
    if not names:
        raise ReportError("--experiment: give an experiment name")
    model_names = tuple(dict.fromkeys(m.strip() for m in (models or "").split(",") if m.strip()))
    fmts = tuple(dict.fromkeys(f.strip().lower() for f in (formats or ",".join(FORMATS)).split(",") if f.strip()))
    for f in fmts:
        if f not in FORMATS:
            raise ReportError(f"--formats: unknown format {f!r}; known: {', '.join(FORMATS)}")
    if margin is not None and not (margin > 0 and math.isfinite(margin)):
        raise ReportError(f"--margin: must be a number of points > 0, got {margin!r}")
    return ReportConfig(names, model_names, Path(out) if out else None, fmts,
                        margin=ReportConfig.margin if margin is None else float(margin))


def design_tag(design: Design) -> str:
    """The experiment tag that tells a report which looks ``--until-decided`` planned."""
    return json.dumps({"method": "confidence-sequence", "alpha": design.alpha, "margin": design.margin,
                       "round": design.round, "max_seeds": design.max_seeds}, sort_keys=True)


def design_from_tag(text: str | None) -> Design | None:
    if not text:
        return None
    d = json.loads(text)
    return Design(float(d["alpha"]), float(d["margin"]), int(d["round"]), int(d["max_seeds"]))


@dataclass
class Report:
    cfg: ReportConfig
    uri: str
    summary: pd.DataFrame
    comparisons: pd.DataFrame
    notes: list[str]
    n_runs: int  # finished runs the statistics use
    out: Path
    design: Design | None = None  # the --until-decided looks, when the experiment was run that way
    alpha: float = 0.05  # as decided (the design's, when there is one)
    margin: float = 0.2
    spread: float = math.nan  # root mean seed-to-seed std over the models, points
    binomial_se: float = math.nan  # of one test accuracy at the mean accuracy, points
    n_test: int | None = None
    files: list[Path] = field(default_factory=list)
    parent_run_id: str | None = None  # where the files were logged
    grown: dict[str, int] = field(default_factory=dict)  # family -> fewest seeds of an earlier look, if it grew
    capacity: Capacity | None = None  # the grid's map, frontiers and fits, when grid cells are present

    def evidence(self) -> str:
        """``"n=30 finished runs: 6 models x 5 seeds; mnist, lr 0.1, batch 100, 3000 iters"``"""
        seeds = sorted(set(self.summary["n_seeds"]))
        per = f"{seeds[0]} seeds" if len(seeds) == 1 else f"{min(seeds)}-{max(seeds)} seeds"
        configs = self.summary[list(TRAIN_FIELDS)].astype(str).drop_duplicates()
        if len(configs) == 1:
            c = configs.iloc[0]
            setup = f"{c['dataset']}, lr {c['lr']}, batch {c['batch_size']}, {c['iters']} iters"
        else:
            setup = "training configs differ between models (see summary.csv)"
        n_models = len(self.summary)
        return f"n={self.n_runs} finished runs: {n_models} model{'s' * (n_models != 1)} x {per}; {setup}"

    def verdict_lines(self) -> list[str]:
        """``C -> D (add a layer): +0.76 pts [+0.52, +1.00] 99.3%, helped; new images [+0.40, +1.12] helped``;
        then a grid's frontiers, budget interaction and fits"""
        return [comparison_text(r) for r in self.comparisons.itertuples()] + \
            (self.capacity.lines() if self.capacity else [])

    def answer_lines(self) -> list[str]:
        """The answer first: one sentence per step of every family (plain text, no markup); then a grid's
        frontier per depth, budget interaction and scaling fits (each saying whether it passed its hold-out)."""
        return [answer_text(r, self.margin, self.alpha) for r in self.comparisons.itertuples()] + \
            (self.capacity.lines() if self.capacity else [])

    def verdict_header(self) -> str:
        rules = set(self.comparisons["rule"]) if len(self.comparisons) else {"holm"}
        holm = ("Holm within each family: helped/hurt on the t-test p, equivalent on the TOST p, negligible on "
                "both, each at alpha")
        spend = f"--until-decided: {SPENDING_NAME}" + (f"; looks at {', '.join(map(str, self.design.looks()))} seeds"
                                                        if self.design else "")
        anytime = f"grown since an earlier report: {METHOD_NAME}"
        how = "; ".join(x for x, r in ((holm, "holm"), (spend, "spending"), (anytime, "anytime")) if r in rules)
        return (f"interval of the difference in final test accuracy that decides the verdict on this test set; "
                f"family-wise alpha {self.alpha:g} ({how}); equivalent within +-{self.margin:g} pts, negligible "
                f"when also shown different from 0; 'new images' adds the test set's sampling error")


def _interval(r) -> str:
    """``[+0.52, +1.00] 98.3%``; a TOST interval says so (``96.7% TOST``), a confidence sequence too (``CS``)"""
    if pd.isna(r.low):
        return "-"
    kind = {"equivalence": " TOST", "sequence": " CS", "repeated": " RCI", "repeated-equivalence": " RCI TOST"
            }.get(r.interval, "")
    return f"[{r.low:+.2f}, {r.high:+.2f}] {r.level:.1%}{kind}"


def _pairing(r) -> str:
    if r.reading == "architecture":
        return f"Welch {r.n_a} vs {r.n_b} studies"
    if r.paired:
        return f"paired n={r.n_a}" + ("" if pd.isna(r.corr) else f", r={r.corr:.2f}")
    return f"Welch {r.n_a} vs {r.n_b}"


def _seeds(r) -> str:
    """``~18 seeds (9-118 from the spread's 95% interval)``; over studies, the studies per architecture"""
    unit = "studies" if r.reading == "architecture" else "seeds"
    if pd.isna(r.seeds_needed):
        return f"{unit} to decide: unknown"
    lo, hi = r.seeds_low, r.seeds_high
    spread = "" if pd.isna(lo) or pd.isna(hi) or lo == hi else f" ({lo}-{hi} as the spread allows)"
    return f"~{r.seeds_needed} {unit} to decide{spread}"


def scope_text(r, margin: float, alpha: float) -> str:
    """What the new-images scope adds, where it differs: ``""`` when both scopes agree."""
    if r.pop_verdict == UNAVAILABLE:
        return ""
    if r.pop_verdict == r.verdict:
        return ""
    if r.verdict == "undecided":
        return f"on new images {r.pop_verdict}"
    half = (r.pop_high - r.pop_low) / 2 if not pd.isna(r.pop_low) else math.nan
    width = f" (+-{half:.2f} points)" if not pd.isna(half) else ""
    text = f"holds on this test set; on new images {r.pop_verdict}{width}"
    if r.pop_verdict == "undecided":
        cannot = more_seeds_cannot_decide(r.diff, r.images_se, margin, alpha / r.m)
        text = (f"holds on this test set; on new images the test set cannot tell{width}"
                + (": more seeds will not decide it" if cannot else ": more seeds may decide it"))
    return text


def comparison_text(r) -> str:
    head = f"{r.a} -> {r.b} ({r.change}): {r.diff:+.2f} pts"
    if r.reason:
        text = f"{head}, undecided: {r.reason}"
    else:
        text = f"{head} {_interval(r)}, {r.verdict}; {_pairing(r)}"
        if r.verdict == "undecided":
            text += f"; {_seeds(r)}"
    if not pd.isna(r.pop_low):
        text += f"; new images [{r.pop_low:+.2f}, {r.pop_high:+.2f}] {r.pop_verdict}"
    elif r.pop_verdict == UNAVAILABLE and not r.reason and r.reading != "architecture":  # none over studies
        text += "; new images: unavailable"
    if r.failures:
        text += f"; {r.failures}" + ("" if pd.isna(r.p_fail) or r.p_fail == 1 else f" (Fisher p {r.p_fail:.2g})")
    return text + tuned_text(r, answer=False)


def answer_text(r, margin: float, alpha: float = 0.05) -> str:
    """``"C -> D (add a layer): helped, +0.76 points (99.0% interval +0.52 to +1.00, 5 paired seeds)."``"""
    kind = {"equivalence": "TOST interval", "sequence": "confidence sequence", "repeated": "repeated interval",
            "repeated-equivalence": "repeated TOST interval"}.get(r.interval, "interval")
    over = r.reading == "architecture"
    how = "" if pd.isna(r.low) else (f" ({r.level:.1%} {kind} {'over studies ' * over}{r.low:+.2f} to {r.high:+.2f}, "
                                     + (f"{r.n_a} paired seeds)" if r.paired else
                                        f"{r.n_a} vs {r.n_b} {'studies' if over else 'seeds'})"))
    say = {"helped": f"helped, {r.diff:+.2f} points{how}",
           "hurt": f"hurt, {r.diff:+.2f} points{how}",
           "negligible": f"negligible: {r.diff:+.2f} points, real but inside +-{margin:g}{how}",
           "equivalent": f"equivalent within +-{margin:g} points, {r.diff:+.2f}{how}",
           "undecided": f"undecided, {r.diff:+.2f} points{how}"}[r.verdict]
    if r.verdict == "undecided":
        if r.reason:
            say += f": {r.reason}"
        elif not pd.isna(r.seeds_needed):
            lo, hi = r.seeds_low, r.seeds_high
            rng = "" if pd.isna(lo) or pd.isna(hi) or lo == hi else f" ({lo} to {hi}, as the spread allows)"
            say += (f"; about {r.seeds_needed} studies per architecture would decide it{rng}: "
                    f"`ffnn tune --studies {r.seeds_needed}`" if over else
                    f"; about {r.seeds_needed} seeds per model would decide it{rng}, or let "
                    f"`ffnn compare --until-decided` add them and keep the error rate")
    scope = scope_text(r, margin, alpha)
    if scope:
        say += f"; {scope}"
    if r.failures:
        say += f"; failures: {r.failures}"
    return f"{r.a} -> {r.b} ({r.change}): {say}.{tuned_text(r, answer=True)}"


@dataclass
class Analysis:
    sel: Selection
    summary: pd.DataFrame
    table: pd.DataFrame  # verdicts.COLUMNS
    alpha: float
    margin: float
    grown: dict[str, int]  # family -> fewest seeds of an earlier look, for families decided sequentially for it
    seeds: dict[str, int]  # seeds with an outcome, per model: this look


def analyse(runs: pd.DataFrame, cfg: ReportConfig, design: Design | None = None,
            looks: Sequence[dict] = ()) -> Analysis:
    """Selection, summary and comparisons; no I/O (the until-decided loop uses it too).

    ``looks``: the earlier reports' looks; a family with a step that grew since one of them is decided
    by the confidence sequences (as every family is under a ``design``)."""
    sel = select_runs(runs, cfg.models)
    alpha, margin = (design.alpha, design.margin) if design else (cfg.alpha, cfg.margin)
    summary = study_columns(summarise(sel, cfg.confidence), budgets(sel), margin)
    steps = plan(sel.models)
    seeds = {m: sel.tried(m) for m in sel.models}
    grown = {} if design else grown_steps(looks, [(s.family, s.a, s.b) for s in steps], seeds)
    table = compare_steps(sel, steps, alpha, margin, cfg.power, design, frozenset(grown), cfg.confidence)
    return Analysis(sel, summary, table, alpha, margin, grown, seeds)


def assemble(cfg: ReportConfig, uri: str, result: Analysis, design: Design | None, n_test: int | None) -> Report:
    """The Report of an analysis: its notes, and the spread a seed and a test set would give; no I/O."""
    sel, summary, table, alpha, margin = result.sel, result.summary, result.table, result.alpha, result.margin
    where = ", ".join(repr(e) for e in cfg.experiments)
    if sel.kept.empty:
        s = summary
        raise ReportError(f"experiment {where}: no finished runs to report on "
                          f"({int(s[['n_diverged', 'n_crashed']].sum().sum())} failed, "
                          f"{int(s['n_collapsed'].sum())} collapsed, {int(s['n_unfinished'].sum())} unfinished)")
    notes = list(sel.notes)
    if design and (alpha, margin) != (cfg.alpha, cfg.margin):
        notes.append(f"alpha {alpha:g} and margin {margin:g} pts are the --until-decided run's")
    for family, n in result.grown.items():
        notes.append(f"{family} family: the experiment grew since an earlier report at {n} seeds per model, so "
                     f"the fixed-sample guarantee no longer holds; its verdicts come from anytime-valid confidence "
                     f"sequences, valid at every look (counting the earlier fixed-sample look too, any wrong verdict "
                     f"of the family over all looks has probability at most {2 * alpha:g})")
    if len(table) and (table["pop_verdict"] == UNAVAILABLE).all() and not table["reason"].all():
        notes.append("new-images scope unavailable: the runs carry no per-image record (logged before ffnn "
                     "recorded them, or unpaired seeds); train into a new --experiment to have it")
    if len(table) and table["reason"].astype(bool).all():
        notes.append(f"no verdict is possible below {MIN_SEEDS} seeds per model, the fewest the rule needs "
                     f"(see Method): add seeds with `ffnn compare --seeds {MIN_SEEDS}` or more")
    mean_acc = float(sel.kept["accuracy"].mean())
    return Report(cfg, uri, summary, table, notes, len(sel.kept), cfg.out_dir, design, alpha, margin,
                  typical_std(sel), binomial_se(mean_acc, n_test) if n_test else math.nan, n_test,
                  grown=result.grown, capacity=analyse_capacity(sel, summary, table, alpha, margin, n_test,
                                                                cfg.confidence))
