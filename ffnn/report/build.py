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

import pandas as pd
from scipy import stats

from ..tracking import RUN_COLUMNS, TAG_SEQUENTIAL, Tracker
from .plan import FAMILIES, Step, plan
from .runs import (TRAIN_FIELDS, ReportError, Selection, failure_text, select_runs, summarise, tidy_runs,
                   typical_std)
from .sequential import METHOD_NAME, Design, t_critical
from .stats import binomial_se, decide, holm, paired_or_welch, seeds_to_decide

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
           "diff", "sd", "m", "interval", "level", "low", "high", "p", "p_adj", "p_tost", "p_tost_adj", "verdict",
           "seeds_needed", "failures", "reason"]


def compare_steps(sel: Selection, steps: Sequence[Step], alpha: float, margin: float, power: float = 0.8,
                  design: Design | None = None) -> pd.DataFrame:
    """One row per step: the test, the interval its verdict is read from (points), p and Holm-adjusted p.

    One look (no ``design``), within a family of m steps (untestable ones counted, never rejected):
    helped/hurt by Holm at ``alpha`` on the two-sided p; equivalent by Holm at ``alpha`` on the TOST p
    of all m steps, when not helped/hurt. ``p_adj`` and ``p_tost_adj`` are the Holm-adjusted p-values
    (statsmodels ``multipletests``). The interval (``interval`` says which, ``level`` its nominal
    two-sided coverage): for helped/hurt the difference's t-interval at 1 - a, a = the level Holm
    tested its p at (it excludes 0 exactly when Holm rejects); for equivalent the TOST interval at
    1 - 2 a' (within +-margin exactly when Holm rejects its TOST p); for undecided the wider of the
    two, which holds 0 and reaches beyond the margin.
    Sequential ``design``: Jennison & Turnbull's repeated confidence interval at the spending
    boundary for alpha / m (Bonferroni), read by ``decide``; ``p_adj``/``p_tost_adj`` are NaN there
    (fixed-sample p-values do not account for the optional stopping).
    """
    acc = {m: sel.kept[sel.kept["model"] == m] for m in sel.models}
    fallback_sd = typical_std(sel)
    rows = []
    for family in FAMILIES:
        mine = [s for s in steps if s.family == family]
        m = len(mine)
        tests, reasons = [], []
        for s in mine:
            ra, rb = acc[s.a], acc[s.b]
            t = paired_or_welch(ra["accuracy"], rb["accuracy"], ra["seed"], rb["seed"], margin)
            reason = ""
            if min(t.n_a, t.n_b) < 2:
                few = [f"{x} has {len(acc[x])} finished seed{'s' * (len(acc[x]) != 1)}"
                       for x in (s.a, s.b) if len(acc[x]) < 2]
                reason = (", ".join(few) or "fewer than 2 seeds") + " (need >= 2)"
            elif math.isnan(t.se):
                reason = "no seed-to-seed variance"
            tests.append(t)
            reasons.append(reason)
        if design is None:
            decided = _holm_intervals(tests, reasons, alpha, margin)
        else:
            decided = [_repeated_interval(t, r, design, m, margin) for t, r in zip(tests, reasons)]
        for s, t, reason, d in zip(mine, tests, reasons, decided):
            ra, rb = acc[s.a], acc[s.b]
            sd = t.sd if t.sd > 0 else fallback_sd
            need = None
            if d["verdict"] == "undecided":
                need = seeds_to_decide(t.diff, sd, margin, alpha / m, power, t.paired,
                                       tost_alpha=alpha / m if design is None else None)
            rows.append({"family": family, "a": s.a, "b": s.b, "change": s.change,
                         "spec_a": sel.models[s.a].spec.describe(), "spec_b": sel.models[s.b].spec.describe(),
                         "paired": t.paired, "n_a": t.n_a, "n_b": t.n_b, "corr": t.corr,
                         "mean_a": float(ra["accuracy"].mean()), "mean_b": float(rb["accuracy"].mean()),
                         "diff": t.diff, "sd": t.sd, "m": m, **d, "p": t.p, "p_tost": t.p_tost,
                         "seeds_needed": need,
                         "failures": "; ".join(x for x in (failure_text(sel, s.a), failure_text(sel, s.b)) if x),
                         "reason": reason})
    table = pd.DataFrame(rows, columns=COLUMNS)
    table["seeds_needed"] = table["seeds_needed"].astype("Int64")
    return table


NO_INTERVAL = {"interval": "", "level": math.nan, "low": math.nan, "high": math.nan}


def _holm_intervals(tests: Sequence, reasons: Sequence[str], alpha: float, margin: float) -> list[dict]:
    """One look: Holm on the difference p and, separately, on the TOST p; the interval each verdict uses."""
    p_diff, p_eq = [], []
    for t, reason in zip(tests, reasons):
        if reason:
            p_diff.append(math.nan)
            p_eq.append(math.nan)
        elif t.se == 0:  # the same difference on every seed: the interval is that point
            p_diff.append(0.0 if t.diff != 0 else 1.0)
            p_eq.append(0.0 if abs(t.diff) < margin else 1.0)
        else:
            p_diff.append(t.p)
            p_eq.append(t.p_tost)
    diff_holm, eq_holm = holm(p_diff, alpha), holm(p_eq, alpha)
    out = []
    for i, (t, reason) in enumerate(zip(tests, reasons)):
        adj = {"p_adj": diff_holm.p_adj[i], "p_tost_adj": eq_holm.p_adj[i]}
        if reason:
            out.append({**NO_INTERVAL, **adj, "verdict": "undecided"})
            continue
        a_diff, a_eq = diff_holm.tested_at[i], eq_holm.tested_at[i]
        half_diff = float(stats.t.isf(a_diff / 2, t.df)) * t.se if t.se > 0 else 0.0
        half_eq = float(stats.t.isf(a_eq, t.df)) * t.se if t.se > 0 else 0.0
        if diff_holm.rejected[i]:
            verdict, shown = ("helped" if t.diff > 0 else "hurt"), "difference"
        elif eq_holm.rejected[i]:
            verdict, shown = "equivalent", "equivalence"
        else:
            verdict, shown = "undecided", "difference" if half_diff >= half_eq else "equivalence"
        half, level = (half_diff, 1 - a_diff) if shown == "difference" else (half_eq, 1 - 2 * a_eq)
        out.append({"interval": shown, "level": level, "low": t.diff - half, "high": t.diff + half, **adj,
                    "verdict": verdict})
    return out


def _repeated_interval(t, reason: str, design: Design, m: int, margin: float) -> dict:
    """Sequential: the repeated confidence interval at this look's boundary for alpha / m, and its verdict."""
    nan_adj = {"p_adj": math.nan, "p_tost_adj": math.nan}
    if reason:
        return {**NO_INTERVAL, **nan_adj, "verdict": "undecided"}
    z = design.z_boundary(min(t.n_a, t.n_b), m)
    # identical differences on every seed (se 0, e.g. both at 100%): the interval is that point
    half = float(t_critical(z, t.df)) * t.se if t.se > 0 else 0.0
    low, high = t.diff - half, t.diff + half
    return {"interval": "repeated", "level": 1 - 2 * float(stats.norm.sf(z)), "low": low, "high": high,
            **nan_adj, "verdict": str(decide(low, high, margin))}


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
               if self.design else "Holm within each family: helped/hurt on the t-test p, equivalent on the TOST p, "
               "each at alpha")
        return (f"interval of the difference in final test accuracy that decides the verdict; family-wise "
                f"alpha {self.alpha:g} ({how}); equivalent within +-{self.margin:g} pts")


def _interval(r) -> str:
    """``[+0.52, +1.00] 98.3%``; a TOST interval (the equivalence test's) says so: ``[-0.10, +0.15] 96.7% TOST``"""
    if pd.isna(r.low):
        return "-"
    return f"[{r.low:+.2f}, {r.high:+.2f}] {r.level:.1%}" + (" TOST" if r.interval == "equivalence" else "")


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
    kind = "TOST interval" if r.interval == "equivalence" else "interval"
    how = "" if pd.isna(r.low) else (f" ({r.level:.1%} {kind} {r.low:+.2f} to {r.high:+.2f}, "
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
