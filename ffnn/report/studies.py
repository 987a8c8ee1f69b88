"""The searches behind tuned models: each study's budget and convergence, whether the architectures a
tuned step compares had equal budgets, and the two readings of a tuned comparison.

A tuned model ``C*`` (``C*s2``, ... for replicate studies, ``models.tuned_name``) is the best configuration
one Optuna study found; its runs carry that study's budget as JSON (``tracking.TAG_TUNED_BY``, written by
``tune.outputs.StudySummary.budget``). With one study per architecture a tuned comparison compares two found
configurations; with two or more (``ffnn tune --studies K``) it compares the architectures over searches
(``stats.studies_test``). Pure: no I/O.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd

from ..models import parse_tuned
from .runs import Selection

LATE = 0.8  # a best trial after this share of a study's finished trials came late: it was still improving
TOP = 5  # the best trials that must agree within the margin for a study to count as settled
WANT_STUDIES = 3  # studies per architecture the answer asks for before it speaks of the architecture


@dataclass(frozen=True)
class Budget:
    """One study's search, as its tuned runs record it."""
    study: str  # Optuna study name
    index: int  # replicate 1..K of its family
    trials: int  # finished trials: complete + pruned
    complete: int
    pruned: int
    failed: int
    seconds: float  # wall time of the invocations on the study, summed
    best_trial: int | None  # Optuna trial number of the best
    best_at: int | None  # the best's place among the finished trials, 1-based
    top: tuple[float, ...]  # the best TOP complete trials' validation accuracy, percent, best first
    trial_seeds: int  # seeds per trial
    iters: int  # optimizer steps per trial

    @property
    def spent(self) -> tuple[int, int, int]:
        """What must match for two searches to have had the same budget."""
        return (self.trials, self.trial_seeds, self.iters)


def parse_budget(text: object) -> Budget | None:
    """The ``ffnn.tuned_by`` tag's JSON -> Budget; None when absent or unreadable (runs from before it)."""
    if not isinstance(text, str) or not text:
        return None
    try:
        d = json.loads(text)
        return Budget(str(d["study"]), int(d["index"]), int(d["trials"]), int(d["complete"]), int(d["pruned"]),
                      int(d["failed"]), float(d["seconds"]),
                      None if d["best_trial"] is None else int(d["best_trial"]),
                      None if d["best_at"] is None else int(d["best_at"]), tuple(float(v) for v in d["top"]),
                      int(d["trial_seeds"]), int(d["iters"]))
    except (ValueError, KeyError, TypeError):
        return None


def convergence(b: Budget, margin: float) -> str:
    """Why a study may not have converged; ``""`` when its best came before the last fifth of its trials and
    its TOP best trials agree within ``margin`` points.

    ``convergence(Budget("s", 1, 10, 10, 0, 0, 60.0, 9, 10, (97.0,) * 5, 1, 3000), 0.2)`` -> ``"best trial 10 of 10"``
    """
    why = []
    if b.best_at is None:
        return "no complete trial"
    if b.best_at > LATE * b.trials:
        why.append(f"best trial {b.best_at} of {b.trials}")
    if len(b.top) < TOP:
        why.append(f"{len(b.top)} complete trial{'s' * (len(b.top) != 1)}, fewer than the {TOP} that show agreement")
    elif (spread := b.top[0] - b.top[TOP - 1]) > margin:
        why.append(f"top {TOP} spread {spread:.2f} pts > {margin:g}")
    return "; ".join(why)


def claim_of(change: str) -> str:
    """What a tuned step would be a claim about: ``claim_of("add a layer") == "depth"``, else the activation."""
    return "depth" if "layer" in change else "the activation"


def tuned_groups(names: Iterable[str]) -> dict[str, list[str]]:
    """Tuned models by family, studies in order: ``{"C": ["C*", "C*s2"]}`` from ``["C*s2", "C", "C*"]``."""
    groups: dict[str, list[tuple[int, str]]] = {}
    for name in names:
        parsed = parse_tuned(name)
        if parsed is not None:
            groups.setdefault(parsed[0], []).append((parsed[1], name))
    return {family: [n for _, n in sorted(units)] for family, units in groups.items()}


def budgets(sel: Selection) -> dict[str, Budget]:
    """Each tuned model's study budget, from its latest run that carries one."""
    kept = sel.kept
    if "tuned_by" not in kept.columns:
        return {}
    out = {}
    for name in sel.models:
        if parse_tuned(name) is None:
            continue
        found = [b for t in kept[kept["model"] == name]["tuned_by"] if (b := parse_budget(t)) is not None]
        if found:
            out[name] = found[-1]
    return out


def study_columns(summary: pd.DataFrame, found: dict[str, Budget], margin: float) -> pd.DataFrame:
    """summary.csv's study columns: each tuned model's study, the family's studies, budget and convergence;
    ``summary`` as it was when no tuned model is present."""
    groups = tuned_groups(summary["model"])
    if not groups:
        return summary
    size = {n: len(units) for units in groups.values() for n in units}
    rows = []
    for name in summary["model"]:
        b = found.get(name)
        parsed = parse_tuned(name)
        why = convergence(b, margin) if b else ""
        rows.append({
            "study": parsed[1] if parsed else pd.NA, "n_studies": size.get(name, pd.NA),
            "study_name": b.study if b else "", "trials": b.trials if b else pd.NA,
            "pruned": b.pruned if b else pd.NA, "failed_trials": b.failed if b else pd.NA,
            "search_seconds": b.seconds if b else math.nan, "best_trial": pd.NA if b is None else b.best_trial,
            "best_at": pd.NA if b is None else b.best_at,
            "top_spread": b.top[0] - b.top[min(TOP, len(b.top)) - 1] if b and b.top else math.nan,
            "converged": pd.NA if b is None else not why, "convergence": why or ("" if b is None else "ok")})
    extra = pd.DataFrame(rows, index=summary.index)
    for c in ("study", "n_studies", "trials", "pruned", "failed_trials", "best_trial", "best_at"):
        extra[c] = extra[c].astype("Int64")
    extra["converged"] = extra["converged"].astype("boolean")
    return pd.concat([summary, extra], axis=1)


def budget_text(a: str, b: str, units_a: Sequence[str], units_b: Sequence[str],
                found: dict[str, Budget]) -> tuple[bool | None, str]:
    """(equal, words) of the searches behind the two sides: ``(True, "6 trials of 1000 steps per study")``.

    None when a side's runs record no budget (retrained before budgets were recorded).
    """
    side = {a: [found.get(u) for u in units_a], b: [found.get(u) for u in units_b]}
    if any(x is None for xs in side.values() for x in xs):
        return None, "budget unknown: runs from before budgets were recorded"
    known = {name: [x for x in xs if x is not None] for name, xs in side.items()}
    spent = {x.spent for xs in known.values() for x in xs}
    if len(spent) == 1:
        trials, seeds, iters = spent.pop()
        return True, (f"equal budgets: {trials} trials of {iters} steps" + (f", {seeds} seeds" if seeds > 1 else "")
                      + " per study")
    xa, xb = (sorted(x.spent for x in xs) for xs in known.values())
    if xa == xb:  # the same searches on both sides, some longer than others (a study resumed since)
        return True, ("equal budgets on both sides: studies of " + "/".join(str(t) for t, _, _ in xa)
                      + " trials" + ("" if len({x[1:] for x in xa}) > 1 else
                                     f" of {xa[0][2]} steps" + (f", {xa[0][1]} seeds" if xa[0][1] > 1 else "")))
    per_trial = len({x.spent[1:] for xs in known.values() for x in xs}) > 1  # seeds or steps differ too

    def words(xs: list[Budget]) -> str:
        shapes = sorted({x.spent[1:] for x in xs})
        return "/".join(str(x.trials) for x in xs) + " trials" + (
            f" ({', '.join(f'{s} seed(s) x {i} steps' for s, i in shapes)})" if per_trial else "")
    return False, "unequal budgets: " + ", ".join(f"{name} {words(xs)}" for name, xs in known.items())


def unconverged_text(units: Sequence[str], found: dict[str, Budget], margin: float) -> str:
    """``"C*s2: best trial 6 of 6; D*: top 5 spread 1.30 pts > 0.2"``: the studies that may not have converged."""
    return "; ".join(f"{u}: {why}" for u in units if (b := found.get(u)) and (why := convergence(b, margin)))


def more_studies_minutes(units: Sequence[str], found: dict[str, Budget], retrain_seconds: dict[str, float],
                         want: int = WANT_STUDIES) -> float:
    """Minutes that ``want`` studies per architecture would add at the measured rate: each missing study costs
    what its family's studies cost so far (search, and retraining its best over the seeds), on average.
    NaN when a budget is unknown; 0 when there are enough."""
    by_family = tuned_groups(units)
    total = 0.0
    for family_units in by_family.values():
        missing = want - len(family_units)
        if missing <= 0:
            continue
        cost = [found[u].seconds + retrain_seconds.get(u, 0.0) for u in family_units if u in found]
        if len(cost) < len(family_units):
            return math.nan
        total += missing * sum(cost) / len(cost)
    return total / 60


def tuned_text(r: Any, answer: bool) -> str:
    """What a tuned comparison's line adds (``r``: a row of ``verdicts.COLUMNS``): the reading, the searches'
    budgets, the studies that may not have converged and, from one search, what a claim about the architecture
    would need. ``""`` for other families. ``answer``: whole sentences for the answer, else ``; ``-parts."""
    reading = getattr(r, "reading", "")  # rows of tables from before the tuned columns have none
    if not reading:
        return ""
    a, b, budget, unconverged, minutes = r.a, r.b, r.budget, r.unconverged, r.more_studies_minutes
    cost = "" if pd.isna(minutes) else f", about {minutes:.0f} min more at the measured rate"
    need = f"`ffnn tune --studies {WANT_STUDIES}` or more{cost}"
    equal = r.equal_budget
    if not answer:
        parts = [budget, *([f"may not have converged: {unconverged}"] if unconverged else [])]
        if reading == "configurations":
            parts.append(f"a claim about {claim_of(r.change)} needs {need}")
        return "".join(f"; {p}" for p in parts if p)
    if reading == "configurations":
        text = (f" This compares {a} ({r.spec_a}) and {b} ({r.spec_b}) as one search each "
                f"found them ({budget}), not {claim_of(r.change)}: another search may find other configurations "
                f"and reverse it; a claim about {claim_of(r.change)} needs {need}.")
    else:
        text = f" The searches: {budget}."
    if not pd.isna(equal) and not equal:
        text += " The searches' budgets differ, so the comparison is not at equal search effort."
    if unconverged:
        text += f" May not have converged: {unconverged}."
    return text
