"""Pure statistics of the report: numpy, scipy and statsmodels only (no pandas, no MLflow).

Accuracy is in percent, differences in points (percentage points). A comparison
``a -> b`` is about ``mean(b) - mean(a)``.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
from scipy import stats
from statsmodels.stats.power import TTestIndPower, TTestPower
from statsmodels.stats.weightstats import ttost_ind, ttost_paired

VERDICTS = ("helped", "hurt", "equivalent", "undecided")
SEEDS_LIMIT = 100_000  # beyond this, "seeds needed" is reported as unknown


def mean_ci(values: Sequence[float], confidence: float = 0.95) -> tuple[float, float]:
    """Student-t interval of the mean; NaN below two values.

    ``mean_ci([1.0, 2.0, 3.0])`` -> ``(-0.484, 4.484)`` (rounded)
    """
    x = np.asarray(values, float)
    if len(x) < 2:
        return (math.nan, math.nan)
    sem = stats.sem(x)
    if sem == 0:
        return (float(x.mean()), float(x.mean()))
    low, high = stats.t.interval(confidence, len(x) - 1, loc=x.mean(), scale=sem)
    return (float(low), float(high))


def binomial_se(accuracy: float, n_test: int) -> float:
    """Standard error (points) of one accuracy measured on ``n_test`` test images.

    ``round(binomial_se(98.0, 10_000), 3) == 0.14``
    """
    p = accuracy / 100
    return float(100 * math.sqrt(p * (1 - p) / n_test))


@dataclass(frozen=True)
class Test:
    """One comparison's estimate: what the decision interval is built from."""
    paired: bool  # paired t on the shared seeds; Welch otherwise
    n_a: int  # seeds of a (all of them when Welch; the shared ones when paired)
    n_b: int
    diff: float  # mean(b) - mean(a), points
    se: float  # standard error of diff, points
    df: float  # degrees of freedom of the t reference (Welch-Satterthwaite when unpaired)
    sd: float  # std of the per-seed differences (paired) or root mean variance (Welch), points
    corr: float  # Pearson correlation of a and b over the shared seeds (NaN below 3)
    p: float  # two-sided p of diff == 0 (scipy ttest_rel / ttest_ind), unadjusted
    p_tost: float  # TOST p of |diff| >= margin (statsmodels ttost_paired / ttost_ind), unadjusted


def paired_or_welch(a: Sequence[float], b: Sequence[float], seeds_a: Sequence[int] | None = None,
                    seeds_b: Sequence[int] | None = None, margin: float = 0.2) -> Test:
    """Paired t-test on the seeds both share when there are >= 2 of them; Welch's test otherwise.

    ``paired_or_welch([1, 2, 3], [2, 3, 5], [0, 1, 2], [0, 1, 2]).paired is True``
    """
    a, b = np.asarray(a, float), np.asarray(b, float)
    sa = list(range(len(a))) if seeds_a is None else list(seeds_a)
    sb = list(range(len(b))) if seeds_b is None else list(seeds_b)
    shared = sorted(set(sa) & set(sb))
    ia, ib = {s: i for i, s in enumerate(sa)}, {s: i for i, s in enumerate(sb)}
    x = a[[ia[s] for s in shared]]
    y = b[[ib[s] for s in shared]]
    corr = _corr(x, y)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # zero variance gives NaN, handled by the caller
        if len(shared) >= 2:
            d = y - x
            n = len(d)
            sd = float(d.std(ddof=1))
            p = float(stats.ttest_rel(y, x).pvalue)
            p_tost = float(ttost_paired(y, x, -margin, margin)[0]) if sd > 0 else math.nan
            return Test(True, n, n, float(d.mean()), sd / math.sqrt(n), n - 1, sd, corr, p, p_tost)
        diff = float(b.mean() - a.mean()) if len(a) and len(b) else math.nan
        if len(a) < 2 or len(b) < 2:
            return Test(False, len(a), len(b), diff, math.nan, math.nan, math.nan, corr, math.nan, math.nan)
        va, vb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
        se = math.sqrt(va + vb)
        df = (va + vb) ** 2 / (va ** 2 / (len(a) - 1) + vb ** 2 / (len(b) - 1)) if se > 0 else math.nan
        p = float(stats.ttest_ind(b, a, equal_var=False).pvalue)
        p_tost = float(ttost_ind(b, a, -margin, margin, usevar="unequal")[0]) if se > 0 else math.nan
        sd = math.sqrt((a.var(ddof=1) + b.var(ddof=1)) / 2)
        return Test(False, len(a), len(b), diff, se, df, sd, corr, p, p_tost)


def _corr(x: np.ndarray, y: np.ndarray) -> float:
    if len(x) < 3 or x.std() == 0 or y.std() == 0:
        return math.nan
    return float(np.corrcoef(x, y)[0, 1])


def decide(low: float | np.ndarray, high: float | np.ndarray, margin: float) -> np.ndarray:
    """The verdict that an interval for mean(b) - mean(a) supports (NaN bounds: undecided).

    helped: low > 0; hurt: high < 0; equivalent: -margin < low and high < margin; otherwise undecided.
    ``decide(0.1, 0.5, 0.2).item() == "helped"``; ``decide(-0.1, 0.15, 0.2).item() == "equivalent"``
    """
    low, high = np.asarray(low, float), np.asarray(high, float)
    return np.select([low > 0, high < 0, (low > -margin) & (high < margin)],
                     ["helped", "hurt", "equivalent"], "undecided")


@dataclass(frozen=True)
class Holm:
    """Holm's step-down over one family (NaN p: untestable, counted in m, never rejected)."""
    rejected: np.ndarray  # bool per hypothesis
    tested_at: np.ndarray  # the level each was tested at: alpha / (m - k + 1) at step k while all before
    #                        were rejected; the first non-rejected step's level for it and all after it
    p_adj: np.ndarray  # Holm-adjusted p (as statsmodels multipletests gives it); NaN where p is NaN


def holm(pvalues: Sequence[float], alpha: float) -> Holm:
    """Holm (1979) at family-wise ``alpha``: decisions, the level each p was compared with, adjusted p.

    The k-th smallest of m p-values is compared with alpha / (m - k + 1) while all smaller ones were
    rejected; ``p <= tested_at`` exactly where Holm rejects, so the two-sided ``1 - tested_at``
    interval of each hypothesis excludes 0 exactly where it is rejected. Equal to statsmodels'
    ``multipletests(method="holm")`` (tested); not called here because that one runs ``gc.collect()``
    on every call (0.1-0.3 s in a process holding MLflow).
    ``holm([0.01, 0.04, 0.03], 0.05)``: rejected ``[True, False, False]``, tested_at
    ``[0.05/3, 0.025, 0.025]``, p_adj ``[0.03, 0.06, 0.06]``
    """
    p = np.asarray(pvalues, float)
    m = len(p)
    filled = np.where(np.isnan(p), 1.0, p)  # an untestable comparison still counts in the family
    order = np.argsort(filled, kind="stable")
    step_alpha = alpha / (m - np.arange(m))  # alpha / (m - k + 1), k = 1..m
    ok = np.logical_and.accumulate(filled[order] <= step_alpha)  # Holm rejects a prefix of the sorted order
    n_rejected = int(ok.sum())
    sorted_at = step_alpha.copy()
    if n_rejected < m:
        sorted_at[n_rejected:] = step_alpha[n_rejected]
    sorted_adj = np.minimum(1.0, np.maximum.accumulate((m - np.arange(m)) * filled[order]))
    rejected, tested_at, p_adj = np.empty(m, bool), np.empty(m), np.empty(m)
    rejected[order], tested_at[order], p_adj[order] = ok, sorted_at, sorted_adj
    return Holm(rejected & ~np.isnan(p), tested_at, np.where(np.isnan(p), math.nan, p_adj))


def seeds_to_decide(diff: float, sd: float, margin: float, alpha: float, power: float = 0.8,
                    paired: bool = True, tost_alpha: float | None = None) -> int | None:
    """Seeds (per model) at which a decision is likely (``power``) if the truth is the observed ``diff``.

    ``alpha`` is the per-comparison level, i.e. already divided by the family size. The decision is
    the nearer one: a difference from 0 (two-sided t-test at ``alpha``) or, when the observed ``diff``
    lies within the margin, equivalence (TOST: each one-sided test at ``tost_alpha``; default
    ``alpha / 2``, as reading equivalence from the two-sided interval at ``1 - alpha`` implies).
    statsmodels' ``TTestPower`` (paired: a one-sample test of the differences) or ``TTestIndPower``
    (Welch, equal groups).
    ``seeds_to_decide(0.5, 1.0, 0.2, 0.05) == 34``  (statsmodels: 33.4 for d = 0.5, alpha 0.05, power 0.8)
    """
    if not (sd >= 0) or math.isinf(sd) or math.isnan(diff):
        return None
    if sd == 0:
        return 2
    solver = TTestPower() if paired else TTestIndPower()
    needs = []
    tost_alpha = alpha / 2 if tost_alpha is None else tost_alpha
    for effect, alt, level in ((abs(diff) / sd, "two-sided", alpha), ((margin - abs(diff)) / sd, "larger", tost_alpha)):
        if effect > 1e-3:
            needs.append(_smallest_n(lambda n: solver.power(effect, n, level, alternative=alt), power))
    n = min((x for x in needs if x is not None), default=None)
    return n


def _smallest_n(power_at: Callable[[int], float], power: float) -> int | None:
    """Smallest integer n >= 2 with ``power_at(n) >= power`` (power grows with n): doubling, then bisection.

    statsmodels' ``solve_power`` is not used: its root finder returns n = 2.6 where n = 3 has power 0.50.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        lo, hi = 1, 2
        while not power_at(hi) >= power:  # NaN (statsmodels' nct at extremes) counts as too few
            lo, hi = hi, hi * 2
            if hi > SEEDS_LIMIT:
                return None
        while hi - lo > 1:
            mid = (lo + hi) // 2
            lo, hi = (lo, mid) if power_at(mid) >= power else (mid, hi)  # NaN: too few
    return hi
