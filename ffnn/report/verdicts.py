"""Families of comparisons -> verdicts at two scopes (this test set, new images), failures included.

Each comparison ``a -> b`` scores every seed with an outcome (failed seeds at chance), tests the
difference on the seeds both models share (Welch otherwise), and decides it one of two ways:
- one fixed-sample look: Holm over the family on the t-test and TOST p-values (``stats.holm_verdicts``);
- ``--until-decided``: repeated confidence intervals at the planned looks with alpha spending and Holm
  across the family in its group-sequential form (``spending``), each comparison keeping the verdict
  of the look that decided it;
- an experiment that grew since an earlier report: the anytime-valid confidence sequence at alpha / m
  (``sequential``), valid whatever looks came before.
The new-images scope runs the same rule on the standard error that adds the test-image sampling term
(``scope``), where every seed of both models has its per-image record.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats

from ..bits import unpack_correct
from .plan import FAMILIES, Step
from .runs import Selection, failure_text, typical_std
from .scope import new_images_se
from .sequential import Design, cs_interval
from .spending import holm_sequential
from .stats import (
    MIN_SEEDS,
    Test,
    decide,
    failure_test,
    holm_verdicts,
    paired_or_welch,
    seeds_range,
    studies_test,
    t_pvalues,
)
from .studies import Budget, budget_text, budgets, more_studies_minutes, unconverged_text

COLUMNS = ["family", "a", "b", "change", "spec_a", "spec_b", "rule", "paired", "n_a", "n_b", "corr", "mean_a",
           "mean_b", "diff", "sd", "m", "interval", "level", "low", "high", "look", "p", "p_adj", "p_tost",
           "p_tost_adj", "verdict", "pop_se", "images_se", "pop_low", "pop_high", "pop_verdict", "fail_a", "fail_b",
           "p_fail", "seeds_needed", "seeds_low", "seeds_high", "failures", "reason",
           # tuned steps: the reading (one search's configurations, or the architecture over n_studies searches),
           # the interval over studies, the searches' budgets and the studies that may not have converged
           "reading", "n_studies", "study_low", "study_high", "equal_budget", "budget", "unconverged",
           "more_studies_minutes"]
STUDY_COLUMNS = {"reading": "", "n_studies": pd.NA, "study_low": math.nan, "study_high": math.nan,
                 "equal_budget": pd.NA, "budget": "", "unconverged": "", "more_studies_minutes": math.nan}
UNAVAILABLE = "unavailable"  # pop_verdict where a side lacks per-image records (runs logged before them)


@dataclass(frozen=True)
class _Side:
    seeds: np.ndarray
    score: np.ndarray
    failed: np.ndarray
    correct: list[str]
    n_classes: int  # a failed seed guesses: right on 1 / n_classes of each image


def _side(sel: Selection, model: str) -> _Side:
    s = sel.scored(model)
    return _Side(s["seed"].to_numpy(int), s["score"].to_numpy(float), s["failed"].to_numpy(bool),
                 list(s["test_correct"]), sel.models[model].spec.n_classes)


def _first(side: _Side, seeds: Sequence[int]) -> _Side:
    keep = np.isin(side.seeds, seeds)
    return _Side(side.seeds[keep], side.score[keep], side.failed[keep],
                 [c for c, k in zip(side.correct, keep) if k], side.n_classes)


def _images(side: _Side, seeds: Sequence[int], failed: dict[int, bool]) -> np.ndarray | None:
    """(n, N) per-image correctness for ``seeds`` (a failed seed: chance on every image); None if any lacks it."""
    rows: list[np.ndarray | None] = []  # None: a failed seed without a record
    by_seed = dict(zip(side.seeds.tolist(), side.correct))
    missing = False
    for s in seeds:
        text = by_seed.get(s) or ""
        missing |= not failed[s] and not text
        rows.append(unpack_correct(text) if text else None)
    if missing:
        return None
    width = {len(r) for r in rows if r is not None}
    if len(width) != 1:
        return None
    big_n = width.pop()
    return np.stack([r.astype(float) if r is not None else np.full(big_n, 1 / side.n_classes) for r in rows])


def _new_images(a: _Side, b: _Side, t: Test) -> tuple[float, float, float]:
    """(se, df, images_se) of the new-images scope on the shared seeds t used; NaN when it cannot be had."""
    if not t.paired:
        return (math.nan, math.nan, math.nan)
    shared = sorted(set(a.seeds.tolist()) & set(b.seeds.tolist()))[:t.n_a]
    ca = _images(a, shared, dict(zip(a.seeds.tolist(), a.failed.tolist())))
    cb = _images(b, shared, dict(zip(b.seeds.tolist(), b.failed.tolist())))
    if ca is None or cb is None or ca.shape != cb.shape:
        return (math.nan, math.nan, math.nan)
    r = new_images_se(ca, cb)
    # the seeds' n - 1 degrees of freedom, not Satterthwaite's larger ones: the new-images interval then
    # always contains this test set's (a larger error never gives a narrower interval)
    return (r.se, t.df, r.images_se)


def _test(a: _Side, b: _Side, margin: float) -> Test:
    return paired_or_welch(a.score, b.score, a.seeds, b.seeds, margin)


def _pooled(sides: list[_Side]) -> _Side:
    """Every seed of several studies' models, for the failure counts (the seeds repeat: never paired)."""
    return _Side(np.concatenate([s.seeds for s in sides]), np.concatenate([s.score for s in sides]),
                 np.concatenate([s.failed for s in sides]), [c for s in sides for c in s.correct], sides[0].n_classes)


def _step_test(step: Step, sides: dict[str, _Side], margin: float) -> Test:
    """Over studies (each study's mean over its seeds one observation), or on the seeds of two models."""
    if step.over_studies:
        return studies_test([sides[u].score for u in step.a_units], [sides[u].score for u in step.b_units], margin)
    return _test(sides[step.a], sides[step.b], margin)


def _step_reason(step: Step, t: Test) -> str:
    if not step.over_studies:
        return _reason(step.a, step.b, t)
    if min(t.n_a, t.n_b) < 2:
        return f"{t.n_a} vs {t.n_b} studies with finished seeds: no verdict over searches below 2 per side"
    return "" if t.se > 0 else "the studies' means do not vary: no verdict"


def _study_fields(step: Step, t: Test, d: dict, sel: Selection, found: dict[str, Budget], margin: float) -> dict:
    """A tuned step's reading, interval over studies, budgets and convergence (STUDY_COLUMNS)."""
    if step.family != "tuned":
        return dict(STUDY_COLUMNS)
    units = [*(step.a_units or (step.a,)), *(step.b_units or (step.b,))]
    over = step.over_studies
    equal, words = budget_text(step.a, step.b, step.a_units or (step.a,), step.b_units or (step.b,), found)
    retrain = {u: float(sel.kept.loc[sel.kept["model"] == u, "train_seconds"].sum()) for u in units}
    return {"reading": "architecture" if over else "configurations", "n_studies": min(t.n_a, t.n_b) if over else 1,
            "study_low": d["low"] if over else math.nan, "study_high": d["high"] if over else math.nan,
            "equal_budget": pd.NA if equal is None else equal, "budget": words,
            "unconverged": unconverged_text(units, found, margin),
            "more_studies_minutes": more_studies_minutes(units, found, retrain)}


def _reason(a: str, b: str, t: Test) -> str:
    if min(t.n_a, t.n_b) >= MIN_SEEDS:
        return ""
    if t.paired:
        return f"{t.n_a} shared seeds: no verdict below {MIN_SEEDS} seeds per model"
    few = [f"{x} has {n} seed{'s' * (n != 1)}" for x, n in ((a, t.n_a), (b, t.n_b)) if n < MIN_SEEDS]
    return f"{', '.join(few)}: no verdict below {MIN_SEEDS} seeds per model"


def _pop_p(diff: float, se: float, df: float, margin: float) -> tuple[float, float]:
    if not se > 0 or math.isnan(df):
        return (math.nan, math.nan)
    p, p_tost = t_pvalues(diff, se, df, margin)
    return (float(p), float(p_tost))


def _guard(verdict: str, fail_a: float, fail_b: float, p_fail: float, alpha: float) -> str:
    """A side that fails significantly more often (Fisher, unadjusted alpha) is never the one that did better."""
    if not p_fail < alpha:
        return verdict
    if (verdict == "helped" and fail_b > fail_a) or (verdict == "hurt" and fail_a > fail_b):
        return "undecided"
    return verdict


def compare_steps(sel: Selection, steps: Sequence[Step], alpha: float, margin: float, power: float = 0.8,
                  design: Design | None = None, sequential: frozenset[str] = frozenset(),
                  confidence: float = 0.95) -> pd.DataFrame:
    """One row per step (COLUMNS): both scopes' intervals and verdicts, the failure test, seeds to decide.

    Families in ``sequential`` (all of them under a ``design``) use the confidence sequences; the
    others one fixed-sample look with Holm.
    """
    fallback_sd = typical_std(sel)
    sides = {m: _side(sel, m) for m in sel.models}
    found = budgets(sel)
    rows = []
    for family in FAMILIES:
        mine = [s for s in steps if s.family == family]
        if not mine:
            continue
        m = len(mine)
        seq = design is not None or family in sequential
        # the planned looks count seeds; a family decided over studies takes the anytime rule instead
        spend = design is not None and not any(s.over_studies for s in mine)
        tests = [_step_test(s, sides, margin) for s in mine]
        reasons = [_step_reason(s, t) for s, t in zip(mine, tests)]
        looks = [t.n_a if t.paired else min(t.n_a, t.n_b) for t in tests]
        if design is not None and spend:
            decided, looks, tests = _spending_family([(sides[s.a], sides[s.b]) for s in mine], tests, design, margin)
        elif seq:
            decided = []
            for i, (s, t) in enumerate(zip(mine, tests)):
                row, look, tests[i] = _sequential(sides[s.a], sides[s.b], t, alpha / m, margin)
                decided.append(row)
                looks[i] = look
        else:
            p = np.array([t.p if not r else np.nan for t, r in zip(tests, reasons)])
            p_tost = np.array([t.p_tost if not r else np.nan for t, r in zip(tests, reasons)])
            h = holm_verdicts(np.array([t.diff for t in tests]), np.array([t.se for t in tests]),
                              np.array([t.df for t in tests]), p, p_tost, alpha, margin)
            decided = [{k: (v[i].item() if hasattr(v[i], "item") else v[i]) for k, v in h.items()} for i in range(m)]
        pops = [_new_images(sides[s.a], sides[s.b], t) for s, t in zip(mine, tests)]
        pop = _pop_decisions(tests, reasons, pops, decided, seq, alpha, margin)
        for i, (s, t, reason, d) in enumerate(zip(mine, tests, reasons, decided)):
            a, b = sides[s.a], sides[s.b]
            if s.over_studies:
                a, b = _pooled([sides[u] for u in s.a_units]), _pooled([sides[u] for u in s.b_units])
            fa, fb = float(a.failed.mean()) if len(a.failed) else math.nan, \
                float(b.failed.mean()) if len(b.failed) else math.nan
            p_fail = failure_test(int(a.failed.sum()), len(a.failed), int(b.failed.sum()), len(b.failed))
            verdict = _guard(str(d["verdict"]), fa, fb, p_fail, alpha)
            pop_verdict = pop[i]["pop_verdict"]
            if pop_verdict != UNAVAILABLE:
                pop_verdict = _guard(pop_verdict, fa, fb, p_fail, alpha)
            if verdict != d["verdict"]:
                worse = s.b if fb > fa else s.a
                reason = (f"{worse} fails more often ({int(b.failed.sum() if worse == s.b else a.failed.sum())} of "
                          f"{len(b.failed) if worse == s.b else len(a.failed)} seeds, Fisher p {p_fail:.2g})")
            sd = t.sd if t.sd > 0 else fallback_sd
            need: tuple[int | None, int | None, int | None] = (None, None, None)
            if verdict == "undecided" and not spend:  # over studies: the studies per architecture to decide
                n_obs = t.n_a if t.paired else min(t.n_a, t.n_b)
                need = seeds_range(t.diff, sd, max(n_obs, 2), margin, alpha / m, power, t.paired, confidence)
            rows.append({"family": family, "a": s.a, "b": s.b, "change": s.change,
                         "spec_a": sel.models[s.a].spec.describe(), "spec_b": sel.models[s.b].spec.describe(),
                         "rule": "spending" if spend else "anytime" if seq else "holm",
                         "paired": t.paired, "n_a": t.n_a, "n_b": t.n_b,
                         "corr": t.corr, **_means(s, sides, a, b),
                         "diff": t.diff, "sd": t.sd, "m": m, **{k: d[k] for k in ("interval", "level", "low", "high")},
                         "look": looks[i], "p": t.p, "p_adj": d["p_adj"], "p_tost": t.p_tost,
                         "p_tost_adj": d["p_tost_adj"], "verdict": verdict,
                         "pop_se": pops[i][0], "images_se": pops[i][2], **pop[i], "pop_verdict": pop_verdict,
                         "fail_a": int(a.failed.sum()), "fail_b": int(b.failed.sum()), "p_fail": p_fail,
                         "seeds_needed": need[1], "seeds_low": need[0], "seeds_high": need[2],
                         "failures": "; ".join(x for x in (failure_text(sel, s.a), failure_text(sel, s.b)) if x),
                         "reason": reason if verdict == "undecided" else "",
                         **_study_fields(s, t, d, sel, found, margin)})
    table = pd.DataFrame(rows, columns=COLUMNS)
    for c in ("seeds_needed", "seeds_low", "seeds_high", "n_studies"):
        table[c] = table[c].astype("Int64")
    table["equal_budget"] = table["equal_budget"].astype("boolean")
    return table


def _means(step: Step, sides: dict[str, _Side], a: _Side, b: _Side) -> dict[str, float]:
    """mean_a, mean_b: over seeds, or over studies (the mean of the study means) for a step over studies."""
    if step.over_studies:
        return {k: float(np.mean([np.mean(sides[u].score) for u in units if len(sides[u].score)]))
                for k, units in (("mean_a", step.a_units), ("mean_b", step.b_units))}
    return {"mean_a": float(np.mean(a.score)) if len(a.score) else math.nan,
            "mean_b": float(np.mean(b.score)) if len(b.score) else math.nan}


def _sequential(a: _Side, b: _Side, t: Test, alpha_each: float, margin: float) -> tuple[dict, int, Test]:
    """A grown experiment: the confidence sequence at the seeds present (valid whatever looks came before)."""
    n_now = t.n_a if t.paired else min(t.n_a, t.n_b)
    low, high = (float(v) for v in cs_interval(t.diff, t.se, n_now, alpha_each))
    return ({"interval": "sequence" if not math.isnan(low) else "", "level": 1 - alpha_each, "low": low,
             "high": high, "p_adj": math.nan, "p_tost_adj": math.nan, "verdict": str(decide(low, high, margin))},
            n_now, t)


def _at_look(a: _Side, b: _Side, t: Test, k: int, margin: float) -> Test | None:
    """The comparison on its first ``k`` shared seeds (each side's first k when unpaired); None if short of k."""
    if t.paired:
        shared = sorted(set(a.seeds.tolist()) & set(b.seeds.tolist()))
        return _test(_first(a, shared[:k]), _first(b, shared[:k]), margin) if len(shared) >= k else None
    if min(t.n_a, t.n_b) < k:
        return None
    return _test(_first(a, sorted(a.seeds.tolist())[:k]), _first(b, sorted(b.seeds.tolist())[:k]), margin)


def _spending_family(pairs: list[tuple[_Side, _Side]], tests: list[Test], design: Design, margin: float
                     ) -> tuple[list[dict], list[int], list[Test]]:
    """--until-decided: the family's repeated confidence intervals at the design's looks, Holm across it."""
    n_now = max((t.n_a if t.paired else min(t.n_a, t.n_b)) for t in tests)
    looks = design.looks_until(max(n_now, 1))
    per_look = [[_at_look(a, b, t, k, margin) for k in looks] for (a, b), t in zip(pairs, tests)]
    shape = (1, len(looks), len(tests))
    diff, se, n = np.full(shape, np.nan), np.full(shape, np.nan), np.zeros(shape)
    for i, row in enumerate(per_look):
        for j, tk in enumerate(row):
            if tk is not None:
                diff[0, j, i], se[0, j, i], n[0, j, i] = tk.diff, tk.se, min(tk.n_a, tk.n_b)
    out = holm_sequential(diff, se, n, design, looks)
    decided, seeds, shown = [], [], []
    for i, t in enumerate(tests):
        at = int(out["at"][0, i])
        tk = per_look[i][at] or t
        decided.append({"interval": {"difference": "repeated", "equivalence": "repeated-equivalence"}.get(
                            str(out["interval"][0, i]), ""),
                        "level": float(out["level"][0, i]), "low": float(out["low"][0, i]),
                        "high": float(out["high"][0, i]), "p_adj": math.nan, "p_tost_adj": math.nan,
                        "verdict": str(out["verdict"][0, i])})
        seeds.append(looks[at] if per_look[i][at] is not None else (t.n_a if t.paired else min(t.n_a, t.n_b)))
        shown.append(tk)
    return decided, seeds, shown


def _pop_decisions(tests: list[Test], reasons: list[str], pops: list[tuple[float, float, float]],
                   decided: list[dict], seq: bool, alpha: float, margin: float) -> list[dict]:
    """The new-images scope: the same rule as the deciding one, on the new-images standard error.

    Sequential rules: the deciding interval's multiplier (its half-width in standard errors) on the
    new-images error; one look: the family's Holm procedures on the new-images p-values."""
    out = [{"pop_low": math.nan, "pop_high": math.nan, "pop_verdict": UNAVAILABLE} for _ in tests]
    have = [i for i, (p, r) in enumerate(zip(pops, reasons)) if not r and p[0] > 0 and not math.isnan(p[1])]
    if seq:
        for i in have:
            t, d, se = tests[i], decided[i], pops[i][0]
            if math.isnan(d["low"]) or not t.se > 0:
                out[i]["pop_verdict"] = "undecided"
                continue
            half = (d["high"] - d["low"]) / 2 / t.se * se
            low, high = t.diff - half, t.diff + half
            out[i] = {"pop_low": low, "pop_high": high, "pop_verdict": str(decide(low, high, margin))}
        return out
    ps = [_pop_p(tests[i].diff, pops[i][0], pops[i][1], margin) if i in have else (math.nan, math.nan)
          for i in range(len(tests))]
    h = holm_verdicts(np.array([t.diff for t in tests]), np.array([p[0] for p in pops]),
                      np.array([p[1] for p in pops]), np.array([p[0] for p in ps]), np.array([p[1] for p in ps]),
                      alpha, margin)
    for i in have:
        out[i] = {"pop_low": float(h["low"][i]), "pop_high": float(h["high"][i]), "pop_verdict": str(h["verdict"][i])}
    return out


def more_seeds_cannot_decide(diff: float, images_se: float, margin: float, alpha_each: float) -> bool:
    """On new images, would the test-image term alone keep a comparison undecided at any number of seeds?

    With infinitely many seeds the new-images standard error falls to ``images_se``: neither the
    difference from 0 nor the one from the margin could then be shown at ``alpha_each``.
    ``more_seeds_cannot_decide(0.1, 0.14, 0.2, 0.05 / 7) is True``
    """
    if math.isnan(images_se) or not images_se > 0:
        return False
    return bool(abs(diff) < stats.norm.isf(alpha_each / 2) * images_se
                and margin - abs(diff) < stats.norm.isf(alpha_each) * images_se)
