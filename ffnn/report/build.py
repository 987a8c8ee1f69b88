"""`report`: runs in MLflow -> outcomes -> families of comparisons -> verdicts -> files.

Reads what ``ffnn compare`` (and ``ffnn tune --final``) logged; never trains. Each comparison
``a -> b`` gets one interval for mean(b) - mean(a) (paired on shared seeds, Welch otherwise) at the
level its family and the looks taken call for, and the verdict that interval supports: helped,
hurt, equivalent (within +-margin) or undecided (with the seeds a decision would need).
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
from scipy import stats

from ..tracking import RUN_COLUMNS, TAG_SEQUENTIAL, Tracker
from .plan import FAMILIES, Step, plan
from .runs import (TRAIN_FIELDS, ReportError, Selection, failure_text, select_runs, summarise, tidy_runs,
                   typical_std)
from .sequential import METHOD_NAME, Design, fixed_z, t_critical
from .stats import binomial_se, decide, paired_or_welch, seeds_to_decide

FORMATS = ("csv", "md", "tex", "html", "png")
N_TEST = {"mnist": 10_000, "fashion-mnist": 10_000}  # test images, where a run logged no dataset profile


@dataclass(frozen=True)
class ReportConfig:
    experiments: tuple[str, ...] = ("compare",)  # MLflow experiment names, pooled
    models: tuple[str, ...] = ()  # model names to include; () = all
    out: Path | None = None  # output folder; None = reports/<experiment>/
    formats: tuple[str, ...] = FORMATS  # files to write, from FORMATS
    alpha: float = 0.05  # family-wise error rate of the verdicts of each family
    margin: float = 0.2  # points: a difference within +-margin is "equivalent"
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
    return json.dumps({"method": "rci-obf", "alpha": design.alpha, "margin": design.margin,
                       "round": design.round, "max_seeds": design.max_seeds}, sort_keys=True)


def design_from_tag(text: str | None) -> Design | None:
    if not text:
        return None
    d = json.loads(text)
    return Design(float(d["alpha"]), float(d["margin"]), int(d["round"]), int(d["max_seeds"]))


COLUMNS = ["family", "a", "b", "change", "spec_a", "spec_b", "paired", "n_a", "n_b", "corr", "mean_a", "mean_b",
           "diff", "sd", "m", "level", "low", "high", "p", "p_adj", "p_tost", "p_tost_adj", "verdict",
           "seeds_needed", "failures", "reason"]


def compare_steps(sel: Selection, steps: Sequence[Step], alpha: float, margin: float, power: float = 0.8,
                  design: Design | None = None) -> pd.DataFrame:
    """One row per step: the test, its decision interval (points), unadjusted and adjusted p, verdict.

    ``level`` is the nominal two-sided coverage of the interval: 1 - alpha / m with one look (m = the
    family's size), smaller per look under a sequential ``design``. ``p_adj`` = min(1, m p) and
    ``p_tost_adj`` = min(1, 2 m p_tost) (Bonferroni): with one look, helped/hurt iff p_adj < alpha and
    equivalent iff p_tost_adj < alpha, the same verdicts the interval gives.
    """
    acc = {m: sel.kept[sel.kept["model"] == m] for m in sel.models}
    fallback_sd = typical_std(sel)
    rows = []
    for family in FAMILIES:
        mine = [s for s in steps if s.family == family]
        m = len(mine)
        for s in mine:
            ra, rb = acc[s.a], acc[s.b]
            t = paired_or_welch(ra["accuracy"], rb["accuracy"], ra["seed"], rb["seed"], margin)
            n = min(t.n_a, t.n_b)
            reason = ""
            if n < 2 or (not t.paired and min(t.n_a, t.n_b) < 2):
                few = [f"{x} has {len(acc[x])} finished seed{'s' * (len(acc[x]) != 1)}"
                       for x in (s.a, s.b) if len(acc[x]) < 2]
                reason = (", ".join(few) or "fewer than 2 seeds") + " (need >= 2)"
            elif math.isnan(t.se):
                reason = "no seed-to-seed variance"
            if reason:
                low = high = level = math.nan
            else:
                z = design.z_boundary(n, m) if design is not None else fixed_z(alpha, m)
                # identical differences on every seed (se 0, e.g. both at 100%): the interval is that point
                half = float(t_critical(z, t.df)) * t.se if t.se > 0 else 0.0
                low, high, level = t.diff - half, t.diff + half, 1 - 2 * float(stats.norm.sf(z))
            verdict = str(decide(low, high, margin))
            sd = t.sd if t.sd > 0 else fallback_sd
            need = seeds_to_decide(t.diff, sd, margin, alpha / m, power, t.paired) \
                if verdict == "undecided" else None
            rows.append({"family": family, "a": s.a, "b": s.b, "change": s.change,
                         "spec_a": sel.models[s.a].spec.describe(), "spec_b": sel.models[s.b].spec.describe(),
                         "paired": t.paired, "n_a": t.n_a, "n_b": t.n_b, "corr": t.corr,
                         "mean_a": float(ra["accuracy"].mean()), "mean_b": float(rb["accuracy"].mean()),
                         "diff": t.diff, "sd": t.sd, "m": m, "level": level, "low": low, "high": high,
                         "p": t.p, "p_tost": t.p_tost, "verdict": verdict, "seeds_needed": need,
                         "failures": "; ".join(x for x in (failure_text(sel, s.a), failure_text(sel, s.b)) if x),
                         "reason": reason})
    table = pd.DataFrame(rows, columns=[c for c in COLUMNS if c not in ("p_adj", "p_tost_adj")])
    # Bonferroni over the family's m steps, undecidable ones included, as the intervals count them
    table["p_adj"] = np.minimum(1.0, table["m"].to_numpy(float) * table["p"].to_numpy(float))
    table["p_tost_adj"] = np.minimum(1.0, 2 * table["m"].to_numpy(float) * table["p_tost"].to_numpy(float))
    table = table.reindex(columns=COLUMNS)
    table["seeds_needed"] = table["seeds_needed"].astype("Int64")
    return table


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
        """``C -> D (add a layer): +0.76 pts [+0.52, +1.00] 99.3%, helped; paired n=5, r=0.41``"""
        return [comparison_text(r, self.margin) for r in self.comparisons.itertuples()]

    def answer_lines(self) -> list[str]:
        """The answer first: one sentence per step of every family (plain text, no markup)."""
        return [answer_text(r, self.margin) for r in self.comparisons.itertuples()]

    def verdict_header(self) -> str:
        how = (f"sequential, {METHOD_NAME}; looks at {', '.join(map(str, self.design.looks()))} seeds"
               if self.design else "Bonferroni within each family")
        return (f"interval of the difference in final test accuracy that decides the verdict; family-wise "
                f"alpha {self.alpha:g} ({how}); equivalent within +-{self.margin:g} pts")


def _interval(r) -> str:
    return "-" if pd.isna(r.low) else f"[{r.low:+.2f}, {r.high:+.2f}] {r.level:.1%}"


def _pairing(r) -> str:
    if r.paired:
        return f"paired n={r.n_a}" + ("" if pd.isna(r.corr) else f", r={r.corr:.2f}")
    return f"Welch {r.n_a} vs {r.n_b}"


def comparison_text(r, margin: float) -> str:
    head = f"{r.a} -> {r.b} ({r.change}): {r.diff:+.2f} pts"
    if r.reason:
        text = f"{head}, undecided: {r.reason}"
    else:
        text = f"{head} {_interval(r)}, {r.verdict}; {_pairing(r)}"
        if r.verdict == "undecided":
            text += f"; ~{r.seeds_needed} seeds to decide" if not pd.isna(r.seeds_needed) else \
                "; seeds to decide: unknown"
    if r.failures:
        text += f"; {r.failures}"
    return text


def answer_text(r, margin: float) -> str:
    """``"C -> D (add a layer): helped, +0.76 points (99.0% interval +0.52 to +1.00, 5 paired seeds)."``"""
    how = "" if pd.isna(r.low) else (f" ({r.level:.1%} interval {r.low:+.2f} to {r.high:+.2f}, "
                                     + (f"{r.n_a} paired seeds)" if r.paired else f"{r.n_a} vs {r.n_b} seeds)"))
    say = {"helped": f"helped, {r.diff:+.2f} points{how}",
           "hurt": f"hurt, {r.diff:+.2f} points{how}",
           "equivalent": f"equivalent within +-{margin:g} points, {r.diff:+.2f}{how}",
           "undecided": f"undecided, {r.diff:+.2f} points{how}"}[r.verdict]
    if r.verdict == "undecided":
        say += f": {r.reason}" if r.reason else (
            f"; about {r.seeds_needed} seeds per model would decide it" if not pd.isna(r.seeds_needed) else "")
    if r.failures:
        say += f"; failures: {r.failures}"
    return f"{r.a} -> {r.b} ({r.change}): {say}."


def open_experiments(tracker: Tracker, names: Sequence[str]) -> list[str]:
    """Experiment ids; an unknown name is an error that lists the experiments that exist."""
    ids = []
    for name in names:
        exp_id = tracker.experiment_id(name, create=False)
        if exp_id is None:
            existing = [e for e in tracker.experiment_names() if e != "Default"]
            have = f"existing: {', '.join(existing)}" if existing else "there are none yet; run `ffnn compare`"
            raise ReportError(f"--experiment: no experiment {name!r} at {tracker.uri}; {have}")
        ids.append(exp_id)
    return ids


def sequential_design(tracker: Tracker, exp_ids: Sequence[str]) -> Design | None:
    """The --until-decided design recorded on the experiments; pooled experiments must agree."""
    tags = {design_from_tag(tracker.experiment_tags(e).get(TAG_SEQUENTIAL)) for e in exp_ids}
    if len(tags) > 1:
        raise ReportError("--experiment: the experiments were run with different --until-decided designs; "
                          "report on them one at a time")
    return tags.pop()


def analyse(runs: pd.DataFrame, cfg: ReportConfig, design: Design | None = None
            ) -> tuple[Selection, pd.DataFrame, pd.DataFrame, float, float]:
    """Selection, summary, comparisons, alpha and margin used; no I/O (the until-decided loop uses it too)."""
    sel = select_runs(runs, cfg.models)
    alpha, margin = (design.alpha, design.margin) if design else (cfg.alpha, cfg.margin)
    summary = summarise(sel, cfg.confidence)
    table = compare_steps(sel, plan(sel.models), alpha, margin, cfg.power, design)
    return sel, summary, table, alpha, margin


def make_report(cfg: ReportConfig, tracking_uri: str | None = None) -> Report:
    """Read, compute, plot, write the files and log them on the latest comparison parent run."""
    from .export import write_files
    from .plots import histories, render_plots

    tracker = Tracker.open(tracking_uri)
    exp_ids = open_experiments(tracker, cfg.experiments)
    frame = tracker.runs_frame(exp_ids)
    runs = tidy_runs(frame) if len(frame) else pd.DataFrame()
    where = ", ".join(repr(e) for e in cfg.experiments)
    if runs.empty:
        raise ReportError(f"experiment {where} has no model runs; run `ffnn compare` first")
    design = sequential_design(tracker, exp_ids)
    sel, summary, table, alpha, margin = analyse(runs, cfg, design)
    if sel.kept.empty:
        s = summary
        raise ReportError(f"experiment {where}: no finished runs to report on "
                          f"({int(s[['n_diverged', 'n_crashed']].sum().sum())} failed, "
                          f"{int(s['n_collapsed'].sum())} collapsed, {int(s['n_unfinished'].sum())} unfinished)")
    notes = list(sel.notes)
    if design and (alpha, margin) != (cfg.alpha, cfg.margin):
        notes.append(f"alpha {alpha:g} and margin {margin:g} pts are the --until-decided run's")
    datasets = set(summary["dataset"])
    n_test = None
    if len(datasets) == 1:
        n_test = tracker.dataset_profile(str(sel.kept["run_id"].iloc[-1])).get("num_test") or \
            N_TEST.get(next(iter(datasets)))
    mean_acc = float(sel.kept["accuracy"].mean())
    report = Report(cfg, tracker.uri, summary, table, notes, len(sel.kept), cfg.out_dir, design, alpha, margin,
                    typical_std(sel), binomial_se(mean_acc, n_test) if n_test else math.nan, n_test)
    figures = {}
    if {"png", "html"} & set(cfg.formats):
        figures = render_plots(sel, histories(tracker, sel.kept), summary, cfg.confidence)
    report.files = write_files(report, figures)

    kind = frame[RUN_COLUMNS["kind"]] if RUN_COLUMNS["kind"] in frame.columns else pd.Series("", index=frame.index)
    parents = frame[kind == "comparison"].sort_values("start_time")
    if parents.empty:
        report.notes.append("no comparison parent run in the experiment: files not logged to MLflow")
    elif report.files:
        report.parent_run_id = str(parents["run_id"].iloc[-1])
        try:
            tracker.log_paths(report.parent_run_id, report.files, "report")
        except Exception as e:  # the files are written; a store problem must not hide them
            report.notes.append(f"could not log the files to run {report.parent_run_id}: {e}".splitlines()[0])
            report.parent_run_id = None
    return report
