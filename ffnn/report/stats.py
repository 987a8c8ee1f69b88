"""Pure statistics of the report: numpy, scipy and statsmodels only (no pandas, no MLflow).

Accuracy is in percent, differences in points (percentage points). A comparison
``a -> b`` is about ``mean(b) - mean(a)``. Arrays of comparisons put the family on the last
axis, so one call decides one report's family or thousands of simulated ones.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats
from statsmodels.stats.power import TTestIndPower, TTestPower
from statsmodels.stats.weightstats import ttost_ind

VERDICTS = ("helped", "hurt", "negligible", "equivalent", "undecided")
MIN_SEEDS = 3  # seeds per side (paired: shared seeds) below which no verdict is given: at 2 seeds tied
#                differences (accuracies move in 0.01-point steps) made 13-30 % of null families "decided"
TIE_TOLERANCE = 1e-9  # points: per-seed differences closer than this are equal (real ones differ by >= 0.01)
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
    se: float  # standard error of diff, points (0: the per-seed differences do not vary)
    df: float  # degrees of freedom of the t reference (Welch-Satterthwaite when unpaired)
    sd: float  # std of the per-seed differences (paired) or root mean variance (Welch), points
    corr: float  # Pearson correlation of a and b over the shared seeds (NaN below 3)
    p: float  # two-sided p of diff == 0: t-test, or the exact sign-flip test where se is 0
    p_tost: float  # TOST p of |diff| >= margin: two one-sided t-tests, or exact sign-flip where se is 0


def paired_pvalues(d: np.ndarray, margin: float) -> tuple[np.ndarray, ...]:
    """Per-seed differences ``d`` (..., n) -> (diff, se, p, p_tost), each (...).

    The paired t-test (as scipy ``ttest_rel``) and TOST (as statsmodels ``ttost_paired``), except where
    the differences do not vary at all (a tie: common at few seeds, as accuracies move in 0.01-point
    steps). There the t statistic is infinite and the exact sign-flip (permutation) test is used: with
    all n differences equal to d, two-sided p = 2 / 2^n (1 when d = 0) and each one-sided TOST p = 1 / 2^n
    when |d| < margin (1 otherwise), as scipy ``permutation_test`` gives them. No certainty from ties.
    ``paired_pvalues(np.array([0.1, 0.1, 0.1]), 0.2)[2]`` -> ``0.25``
    """
    d = np.asarray(d, float)
    n = d.shape[-1]
    diff = d.mean(-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        se = d.std(-1, ddof=1) / math.sqrt(n) if n > 1 else np.full(diff.shape, np.nan)
        # equal up to float noise: 95.7 - 95.6 and 95.8 - 95.7 differ in the 14th digit
        tie = (d.max(-1) - d.min(-1) <= TIE_TOLERANCE) & (n > 1)
        se = np.where(tie, 0.0, se)
        p, p_tost = t_pvalues(diff, se, n - 1, margin)
    p = np.where(tie, np.where(diff == 0, 1.0, min(1.0, 2.0 ** (1 - n))), p)
    p_tost = np.where(tie, np.where(np.abs(diff) < margin, 2.0 ** -n, 1.0), p_tost)
    return diff, se, p, p_tost


def t_pvalues(diff: float | np.ndarray, se: float | np.ndarray, df: float | np.ndarray, margin: float
              ) -> tuple[np.ndarray, np.ndarray]:
    """Two-sided p of diff == 0 and TOST p of |diff| >= margin for an estimate ``diff`` with standard error
    ``se`` on ``df`` degrees of freedom: ``t_pvalues(0.0, 0.1, 4, 0.2)[0]`` -> ``1.0``"""
    with np.errstate(invalid="ignore", divide="ignore"):
        p = 2 * stats.t.sf(np.abs(diff / se), df)
        p_tost = np.maximum(stats.t.sf((diff + margin) / se, df), stats.t.cdf((diff - margin) / se, df))
    return np.asarray(p), np.asarray(p_tost)


def paired_or_welch(a: Sequence[float] | np.ndarray, b: Sequence[float] | np.ndarray,
                    seeds_a: Sequence[int] | np.ndarray | None = None,
                    seeds_b: Sequence[int] | np.ndarray | None = None, margin: float = 0.2) -> Test:
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
        warnings.simplefilter("ignore", RuntimeWarning)
        if len(shared) >= 2:
            d = y - x
            n = len(d)
            diff, se, p, p_tost = (float(v) for v in paired_pvalues(d, margin))
            return Test(True, n, n, diff, se, n - 1, float(d.std(ddof=1)), corr, p, p_tost)
        diff = float(b.mean() - a.mean()) if len(a) and len(b) else math.nan
        if len(a) < 2 or len(b) < 2:
            return Test(False, len(a), len(b), diff, math.nan, math.nan, math.nan, corr, math.nan, math.nan)
        va, vb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
        se = math.sqrt(va + vb)
        sd = math.sqrt((a.var(ddof=1) + b.var(ddof=1)) / 2)
        if se == 0:  # both constant: the exact two-sample permutation test, as for ties above
            p, p_tost = _constant_groups_p(a, b, margin)
            return Test(False, len(a), len(b), diff, 0.0, math.nan, 0.0, corr, p, p_tost)
        df = (va + vb) ** 2 / (va ** 2 / (len(a) - 1) + vb ** 2 / (len(b) - 1))
        p = float(stats.ttest_ind(b, a, equal_var=False).pvalue)
        p_tost = float(ttost_ind(b, a, -margin, margin, usevar="unequal")[0])
        return Test(False, len(a), len(b), diff, se, df, sd, corr, p, p_tost)


def study_pvalues(a: np.ndarray, b: np.ndarray, margin: float) -> tuple[np.ndarray, ...]:
    """Study means of two architectures, (..., K_a) and (..., K_b) -> (diff, se, df, p, p_tost), each (...).

    The two-level design: independent hyperparameter searches (studies) of each architecture, seeds
    retrained within each study. With the study as the unit, each study's mean over its seeds is one
    observation, so the seeds' noise and the search-to-search spread both enter the error; a test on the
    pooled seeds would take S K seeds of K searches for S K independent draws and overstate what is known
    whenever searches differ (X. Bouthillier et al., Accounting for variance in machine learning benchmarks,
    MLSys 2021). With equal K and seeds per study, the t statistic on study means is the nested ANOVA's exact
    test of the between-architecture effect, F = MS_architecture / MS_studies(architecture) = t^2
    (D. C. Montgomery, Design and Analysis of Experiments, 8th ed., 2013, sec. 14.1); Welch-Satterthwaite
    degrees of freedom (<= K_a + K_b - 2) keep its level when one architecture's searches vary more than the
    other's. Welch's test and TOST as scipy ``ttest_ind(equal_var=False)`` and statsmodels
    ``ttost_ind(usevar="unequal")``; se 0 (identical study means) gives NaN p: no verdict.
    ``study_pvalues(np.array([97.0, 97.4, 96.9]), np.array([96.2, 96.8, 95.9]), 0.2)[0]`` -> ``-0.8`` (rounded)
    """
    a, b = np.asarray(a, float), np.asarray(b, float)
    ka, kb = a.shape[-1], b.shape[-1]
    va, vb = a.var(-1, ddof=1) / ka, b.var(-1, ddof=1) / kb
    diff = b.mean(-1) - a.mean(-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        se = np.sqrt(va + vb)
        df = (va + vb) ** 2 / (va ** 2 / (ka - 1) + vb ** 2 / (kb - 1))
        p, p_tost = t_pvalues(diff, np.where(se > 0, se, np.nan), df, margin)
    return diff, se, df, p, p_tost


def studies_test(a: Sequence[Sequence[float] | np.ndarray], b: Sequence[Sequence[float] | np.ndarray],
                 margin: float = 0.2) -> Test:
    """Welch's test on the study means (``study_pvalues``): ``a``, ``b`` hold each study's per-seed scores.

    ``studies_test([[97.0, 97.2], [96.1, 96.3]], [[97.5], [97.9], [97.7]]).n_a == 2``
    """
    ma, mb = (np.array([np.mean(s) for s in side if len(s)]) for side in (a, b))
    if min(len(ma), len(mb)) < 2:
        diff = float(mb.mean() - ma.mean()) if len(ma) and len(mb) else math.nan
        return Test(False, len(ma), len(mb), diff, math.nan, math.nan, math.nan, math.nan, math.nan, math.nan)
    diff, se, df, p, p_tost = (float(v) for v in study_pvalues(ma, mb, margin))
    sd = math.sqrt((ma.var(ddof=1) + mb.var(ddof=1)) / 2)  # of one study's mean: what "studies to decide" needs
    return Test(False, len(ma), len(mb), diff, se, df, sd, math.nan, p, p_tost)


def _constant_groups_p(a: np.ndarray, b: np.ndarray, margin: float) -> tuple[float, float]:
    """scipy's exact permutation tests of two constant groups: difference, and TOST (shifted by -+margin)."""
    def perm(x: np.ndarray, y: np.ndarray, alternative: str) -> float:
        return float(stats.permutation_test((y, x), lambda u, v: np.mean(u) - np.mean(v), alternative=alternative,
                                            permutation_type="independent", n_resamples=20_000, random_state=0
                                            ).pvalue)
    p = perm(a, b, "two-sided") if b[0] != a[0] else 1.0
    p_tost = max(perm(a, b + margin, "greater"), perm(a, b - margin, "less"))
    return p, p_tost


def _corr(x: np.ndarray, y: np.ndarray) -> float:
    if len(x) < 3 or x.std() == 0 or y.std() == 0:
        return math.nan
    return float(np.corrcoef(x, y)[0, 1])


def decide(low: float | np.ndarray, high: float | np.ndarray, margin: float) -> np.ndarray:
    """The verdict that one interval for mean(b) - mean(a) supports (NaN bounds: undecided).

    negligible: it excludes 0 and lies within +-margin (real, but smaller than what counts); helped:
    low > 0; hurt: high < 0; equivalent: within +-margin; otherwise undecided. A difference shown to lie
    within the margin is never helped or hurt.
    ``decide(0.1, 0.5, 0.2).item() == "helped"``; ``decide(0.05, 0.15, 0.2).item() == "negligible"``
    """
    low, high = np.asarray(low, float), np.asarray(high, float)
    inside = (low > -margin) & (high < margin)
    real = (low > 0) | (high < 0)
    return np.select([real & inside, low > 0, high < 0, inside],
                     ["negligible", "helped", "hurt", "equivalent"], "undecided")


@dataclass(frozen=True)
class Holm:
    """Holm's step-down over one family (NaN p: untestable, counted in m, never rejected)."""
    rejected: np.ndarray  # bool per hypothesis
    tested_at: np.ndarray  # the level each was tested at: alpha / (m - k + 1) at step k while all before
    #                        were rejected; the first non-rejected step's level for it and all after it
    p_adj: np.ndarray  # Holm-adjusted p (as statsmodels multipletests gives it); NaN where p is NaN


def holm(pvalues: Sequence[float] | np.ndarray, alpha: float) -> Holm:
    """Holm (1979) at family-wise ``alpha`` over the last axis: decisions, the level each p met, adjusted p.

    The k-th smallest of m p-values is compared with alpha / (m - k + 1) while all smaller ones were
    rejected; ``p <= tested_at`` exactly where Holm rejects, so the two-sided ``1 - tested_at``
    interval of each hypothesis excludes 0 exactly where it is rejected. Equal to statsmodels'
    ``multipletests(method="holm")`` (tested); not called here because that one runs ``gc.collect()``
    on every call (0.1-0.3 s in a process holding MLflow), and takes one family at a time.
    ``holm([0.01, 0.04, 0.03], 0.05)``: rejected ``[True, False, False]``, tested_at
    ``[0.05/3, 0.025, 0.025]``, p_adj ``[0.03, 0.06, 0.06]``
    """
    p = np.asarray(pvalues, float)
    m = p.shape[-1]
    filled = np.where(np.isnan(p), 1.0, p)  # an untestable comparison still counts in the family
    order = np.argsort(filled, axis=-1, kind="stable")
    sorted_p = np.take_along_axis(filled, order, -1)
    step_alpha = alpha / (m - np.arange(m))  # alpha / (m - k + 1), k = 1..m
    ok = np.logical_and.accumulate(sorted_p <= step_alpha, axis=-1)  # Holm rejects a prefix of the order
    n_rejected = ok.sum(-1, keepdims=True)
    first_open = step_alpha[np.minimum(n_rejected, m - 1)]
    sorted_at = np.where(np.arange(m) < n_rejected, step_alpha, first_open)
    sorted_adj = np.minimum(1.0, np.maximum.accumulate((m - np.arange(m)) * sorted_p, axis=-1))
    rejected, tested_at, p_adj = (np.empty(p.shape, bool), np.empty(p.shape), np.empty(p.shape))
    np.put_along_axis(rejected, order, ok, -1)
    np.put_along_axis(tested_at, order, sorted_at, -1)
    np.put_along_axis(p_adj, order, sorted_adj, -1)
    return Holm(rejected & ~np.isnan(p), tested_at, np.where(np.isnan(p), math.nan, p_adj))


def holm_verdicts(diff: np.ndarray, se: np.ndarray, df: np.ndarray, p: np.ndarray, p_tost: np.ndarray,
                  alpha: float, margin: float) -> dict[str, np.ndarray]:
    """One look at a family (last axis): the five verdicts, adjusted p and the interval each verdict uses.

    Two Holm step-downs at family-wise ``alpha``: one on the two-sided p (a difference from 0), one on
    the TOST p (a difference within +-margin), of all m comparisons. Both rejected: negligible; only
    the first: helped or hurt by the sign; only the second: equivalent; neither: undecided. NaN p
    (untestable) counts in m and is never rejected. The interval: for helped/hurt the t-interval at
    1 - a (a = the level Holm tested at; it excludes 0 exactly when Holm rejects); for equivalent and
    negligible the TOST interval at 1 - 2a' (within +-margin exactly when Holm rejects); for undecided
    the wider of the two. Where se is 0 (tied differences, exact sign-flip p) the interval is the point.
    """
    diff, se, df = (np.asarray(v, float) for v in (diff, se, df))
    by_diff, by_eq = holm(p, alpha), holm(p_tost, alpha)
    real, inside = by_diff.rejected, by_eq.rejected
    verdict = np.select([real & inside, real & (diff > 0), real & (diff < 0), inside],
                        ["negligible", "helped", "hurt", "equivalent"], "undecided")
    with np.errstate(invalid="ignore"):
        half_diff = np.where(se > 0, stats.t.isf(by_diff.tested_at / 2, df) * se, 0.0)
        half_eq = np.where(se > 0, stats.t.isf(by_eq.tested_at, df) * se, 0.0)
    use_eq = inside | (~real & (half_eq > half_diff))
    half = np.where(use_eq, half_eq, half_diff)
    testable = ~np.isnan(np.asarray(p, float))
    nan = np.full(diff.shape, np.nan)
    return {"verdict": verdict, "p_adj": by_diff.p_adj, "p_tost_adj": by_eq.p_adj,
            "interval": np.where(testable, np.where(use_eq, "equivalence", "difference"), ""),
            "level": np.where(testable, np.where(use_eq, 1 - 2 * by_eq.tested_at, 1 - by_diff.tested_at), nan),
            "low": np.where(testable, diff - half, nan), "high": np.where(testable, diff + half, nan)}


def failure_test(failed_a: int, tried_a: int, failed_b: int, tried_b: int) -> float:
    """Two-sided p of Fisher's exact test that a and b fail at the same rate (scipy ``fisher_exact``).

    ``round(failure_test(0, 10, 6, 10), 4) == 0.0108``; NaN when a side tried nothing
    """
    if tried_a == 0 or tried_b == 0:
        return math.nan
    if failed_a == failed_b == 0:
        return 1.0
    return float(stats.fisher_exact([[failed_a, tried_a - failed_a], [failed_b, tried_b - failed_b]]).pvalue)


def tost_power(diff: float, sd: float, n: int, alpha: float, margin: float) -> float:
    """Power of the paired TOST at level ``alpha`` (each one-sided test) with n seeds, true ``diff``.

    Both one-sided tests must reject: P(T_U < -t_c) - P(T_L <= t_c) with T_L, T_U noncentral t at
    (diff +- margin) / (sd / sqrt(n)), the noncentral-t approximation of PowerTOST (method "nct";
    D. Labes, H. Schuetz, B. Lang, PowerTOST). Clipped at 0.
    ``round(tost_power(0.0, 0.2, 14, 0.05 / 7, 0.2), 2) == 0.61``
    """
    if n < 2 or not sd > 0:
        return math.nan
    df, scale = n - 1, sd / math.sqrt(n)
    tc = stats.t.isf(alpha, df)
    power = stats.nct.cdf(-tc, df, (diff - margin) / scale) - stats.nct.cdf(tc, df, (diff + margin) / scale)
    return float(max(0.0, power))


def seeds_to_decide(diff: float, sd: float, margin: float, alpha: float, power: float = 0.8,
                    paired: bool = True) -> int | None:
    """Seeds (per model) at which a fixed-sample decision is likely (``power``) if the truth is ``diff``.

    ``alpha`` is the per-comparison level (the family's alpha / m). The decision is the nearer one: a
    difference from 0 (two-sided t-test, statsmodels ``TTestPower``, or ``TTestIndPower`` for Welch) or,
    when ``diff`` lies within the margin, equivalence (paired TOST, both one-sided tests at ``alpha``:
    ``tost_power``). Never below MIN_SEEDS.
    ``seeds_to_decide(0.5, 1.0, 0.2, 0.05) == 34``  (statsmodels: 33.4 for d = 0.5, alpha 0.05, power 0.8)
    """
    if not (sd >= 0) or math.isinf(sd) or math.isnan(diff):
        return None
    if sd == 0:
        return MIN_SEEDS
    solver = TTestPower() if paired else TTestIndPower()
    needs = []
    if abs(diff) / sd > 1e-3:
        needs.append(_smallest_n(lambda n: solver.power(abs(diff) / sd, n, alpha, alternative="two-sided"), power))
    if abs(diff) < margin:
        needs.append(_smallest_n(lambda n: tost_power(diff, sd if paired else sd * math.sqrt(2), n, alpha, margin),
                                 power))
    n = min((x for x in needs if x is not None), default=None)
    return None if n is None else max(n, MIN_SEEDS)


def sd_interval(sd: float, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Chi-square interval of a standard deviation estimated from ``n`` values.

    ``[round(v, 3) for v in sd_interval(0.2, 5)]`` -> ``[0.12, 0.575]``
    """
    if n < 2 or not sd >= 0:
        return (math.nan, math.nan)
    df, tail = n - 1, (1 - confidence) / 2
    return (sd * math.sqrt(df / stats.chi2.isf(tail, df)), sd * math.sqrt(df / stats.chi2.ppf(tail, df)))


def seeds_range(diff: float, sd: float, n: int, margin: float, alpha: float, power: float = 0.8,
                paired: bool = True, confidence: float = 0.95) -> tuple[int | None, int | None, int | None]:
    """(low, point, high) seeds to decide: at the ``confidence`` interval of the spread and at its estimate.

    ``seeds_range(0.0, 0.2, 5, 0.2, 0.05 / 7)`` -> fewest seeds at the spread's low end, most at the high.
    """
    lo_sd, hi_sd = sd_interval(sd, n, confidence)
    return (seeds_to_decide(diff, lo_sd, margin, alpha, power, paired),
            seeds_to_decide(diff, sd, margin, alpha, power, paired),
            seeds_to_decide(diff, hi_sd, margin, alpha, power, paired))


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
