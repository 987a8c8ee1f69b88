"""The report's statistics against scipy and statsmodels, the confidence sequence against its
Bayes factor, and the new-images error against a two-way bootstrap and a simulation."""

from __future__ import annotations

import ast
import math
from pathlib import Path

import numpy as np
import pytest
from scipy import integrate, stats
from statsmodels.stats.multitest import multipletests
from statsmodels.stats.power import TTestIndPower, TTestPower
from statsmodels.stats.weightstats import ttost_ind, ttost_paired

from ffnn.report import looks, scope, sequential, spending
from ffnn.report.scope import new_images_se, pigeonhole_bootstrap_se
from ffnn.report.sequential import Design, cs_interval, cs_multiplier, log_bayes_factor
from ffnn.report.spending import spent, t_critical, z_boundaries
from ffnn.report.stats import (
    binomial_se,
    decide,
    failure_test,
    holm,
    mean_ci,
    paired_or_welch,
    paired_pvalues,
    sd_interval,
    seeds_range,
    seeds_to_decide,
    studies_test,
    study_pvalues,
    tost_power,
)

A = [91.7, 91.8, 91.9, 91.75, 91.85]
B = [91.9, 91.95, 92.2, 91.9, 92.1]


def test_paired_test_on_shared_seeds_matches_scipy_ttest_rel_and_statsmodels_tost():
    t = paired_or_welch(A, B, range(5), range(5), margin=0.2)
    ref = stats.ttest_rel(B, A)
    assert t.paired and t.n_a == 5 and t.df == 4
    assert t.p == pytest.approx(ref.pvalue) and t.diff == pytest.approx(np.mean(B) - np.mean(A))
    ci = ref.confidence_interval(0.95)
    assert (t.diff - stats.t.ppf(0.975, 4) * t.se, t.diff + stats.t.ppf(0.975, 4) * t.se) == \
        pytest.approx((ci.low, ci.high))
    assert t.p_tost == pytest.approx(ttost_paired(np.array(B), np.array(A), -0.2, 0.2)[0])
    assert t.corr == pytest.approx(np.corrcoef(A, B)[0, 1])


def test_pairing_uses_only_the_shared_seeds_in_seed_order():
    t = paired_or_welch([1.0, 2.0, 3.0, 9.0], [2.5, 1.2, 3.1], seeds_a=[0, 1, 2, 3], seeds_b=[1, 0, 2])
    assert t.paired and t.n_a == 3
    assert t.p == pytest.approx(stats.ttest_rel([1.2, 2.5, 3.1], [1.0, 2.0, 3.0]).pvalue)


def test_welch_where_seeds_do_not_match_matches_scipy_and_statsmodels():
    a, b = np.array(A), np.array(B[:4])
    t = paired_or_welch(a, b, [0, 1, 2, 3, 4], [10, 11, 12, 13], margin=0.2)
    ref = stats.ttest_ind(b, a, equal_var=False)
    assert not t.paired and (t.n_a, t.n_b) == (5, 4) and math.isnan(t.corr)
    assert t.p == pytest.approx(ref.pvalue) and t.df == pytest.approx(ref.df)
    ci = ref.confidence_interval(0.95)
    assert t.diff + stats.t.ppf(0.975, t.df) * t.se == pytest.approx(ci.high)
    assert t.p_tost == pytest.approx(ttost_ind(b, a, -0.2, 0.2, usevar="unequal")[0])


def test_study_level_test_is_welch_on_the_study_means_as_scipy_and_statsmodels():
    """Each study's mean over its seeds is one observation (unequal seeds per study allowed)."""
    a = [[97.0, 97.2, 97.1], [96.1, 96.3, 96.2], [96.8, 96.6]]
    b = [[97.5, 97.6, 97.4], [97.9, 98.0, 97.8], [97.7, 97.5, 97.6], [97.2]]
    ma, mb = np.array([np.mean(s) for s in a]), np.array([np.mean(s) for s in b])
    t = studies_test(a, b, margin=0.2)
    ref = stats.ttest_ind(mb, ma, equal_var=False)
    assert not t.paired and (t.n_a, t.n_b) == (3, 4) and t.diff == pytest.approx(mb.mean() - ma.mean())
    assert t.p == pytest.approx(ref.pvalue) and t.df == pytest.approx(ref.df)
    assert t.p_tost == pytest.approx(ttost_ind(mb, ma, -0.2, 0.2, usevar="unequal")[0])
    assert t.sd == pytest.approx(math.sqrt((ma.var(ddof=1) + mb.var(ddof=1)) / 2))
    # vectorised over experiments: the same numbers
    many = study_pvalues(np.stack([ma, ma + 1]), np.stack([mb, mb]), 0.2)
    assert many[3][0] == pytest.approx(t.p) and many[0].tolist() == pytest.approx([t.diff, t.diff - 1])
    assert math.isnan(studies_test([[97.0]], b).p)  # one study: no test over studies
    assert math.isnan(studies_test([[97.0], [97.0]], [[98.0], [98.0]]).p)  # no spread at all: no verdict


def test_decide_reads_the_five_verdicts_from_an_interval():
    got = decide([0.1, -0.5, -0.1, -0.1, 0.05, -0.15, math.nan], [0.5, -0.1, 0.15, 0.3, 0.15, -0.01, math.nan], 0.2)
    assert got.tolist() == ["helped", "hurt", "equivalent", "undecided", "negligible", "negligible", "undecided"]


def test_tied_differences_get_scipys_exact_sign_flip_p_not_zero():
    for d in ([0.1, 0.1, 0.1], [0.3] * 5, [0.0] * 4, [95.8 - 95.7, 95.7 - 95.6, 96.1 - 96.0]):
        d = np.array(d)
        _, se, p, p_tost = paired_pvalues(d, 0.2)
        flip = stats.permutation_test((d,), np.mean, permutation_type="samples", alternative="two-sided")
        assert se == 0 and float(p) == pytest.approx(flip.pvalue)
        low = stats.permutation_test((d + 0.2,), np.mean, permutation_type="samples", alternative="greater")
        high = stats.permutation_test((d - 0.2,), np.mean, permutation_type="samples", alternative="less")
        assert float(p_tost) == pytest.approx(max(low.pvalue, high.pvalue))
    t = paired_or_welch([95.0, 95.1, 95.2], [95.5, 95.6, 95.7])  # the same +0.5 on every seed
    assert t.se == 0 and t.p == pytest.approx(0.25) and t.p_tost == 1.0


def test_holm_matches_statsmodels_and_counts_untestable_steps():
    p = [0.001, 0.02, 0.3, math.nan]
    h = holm(p, 0.05)
    ref = multipletests([0.001, 0.02, 0.3, 1.0], alpha=0.05, method="holm")
    assert h.rejected.tolist() == ref[0].tolist() == [True, False, False, False]
    assert h.p_adj[:3] == pytest.approx(ref[1][:3]) and math.isnan(h.p_adj[3])
    assert h.tested_at[:3] == pytest.approx([0.05 / 4, 0.05 / 3, 0.05 / 3])


def test_holm_interval_excludes_0_and_tost_interval_lies_within_the_margin_exactly_where_holm_rejects():
    """Random families of paired comparisons: the t-interval at 1 - tested_at excludes 0 iff Holm rejects the
    t-test p; the TOST interval at 1 - 2 tested_at lies within +-margin iff Holm rejects the TOST p."""
    rng = np.random.default_rng(0)
    margin, alpha, seen = 0.2, 0.05, set()
    for k in range(200):
        m, n = int(rng.integers(1, 8)), int(rng.integers(3, 12))
        deltas = rng.choice([0.0, 0.05, 0.1, 0.3], m)
        x = rng.normal(0, 0.15, (n, m))
        y = x + deltas + rng.normal(0, 0.1, (n, m))
        tests = [paired_or_welch(x[:, i], y[:, i], margin=margin) for i in range(m)]
        h, e = holm([t.p for t in tests], alpha), holm([t.p_tost for t in tests], alpha)
        if k < 10:  # statsmodels' holm runs gc.collect() on every call: a sample is enough
            for got, pvals in ((h, [t.p for t in tests]), (e, [t.p_tost for t in tests])):
                ref = multipletests(pvals, alpha, "holm")
                assert got.rejected.tolist() == ref[0].tolist() and got.p_adj == pytest.approx(ref[1])
        for i in range(len(tests)):
            ref = stats.ttest_rel(y[:, i], x[:, i])
            ci = ref.confidence_interval(1 - h.tested_at[i])
            assert (ci.low > 0 or ci.high < 0) == h.rejected[i]
            eq = ref.confidence_interval(1 - 2 * e.tested_at[i])
            assert (-margin < eq.low and eq.high < margin) == e.rejected[i]
            seen.add((bool(h.rejected[i]), bool(e.rejected[i])))
    assert seen >= {(True, False), (False, True), (False, False)}  # every outcome came up


def test_seeds_to_decide_is_the_smallest_n_with_statsmodels_power():
    n = seeds_to_decide(0.5, 1.0, margin=0.2, alpha=0.05)
    power = lambda k: TTestPower().power(effect_size=0.5, nobs=k, alpha=0.05)  # noqa: E731
    assert power(n) >= 0.8 > power(n - 1) and n == 34
    # where statsmodels' own solve_power stops short (n = 2.6 while n = 3 has power 0.50)
    n = seeds_to_decide(0.9167, 0.1914, 0.2, 0.01)
    d = 0.9167 / 0.1914

    def nct_power(k: int) -> float:  # two-sided one-sample t power, integrated over the chi of the std
        c, nc, df = stats.t.isf(0.005, k - 1), d * math.sqrt(k), k - 1
        dens = lambda s: stats.chi.pdf(s * math.sqrt(df), df) * math.sqrt(df)  # noqa: E731  s = sqrt(V / df)
        return integrate.quad(lambda s: dens(s) * (stats.norm.cdf(nc - c * s) + stats.norm.cdf(-nc - c * s)),
                              0, np.inf)[0]
    assert nct_power(n) >= 0.8 > nct_power(n - 1) and n == 4
    # near zero the equivalence test decides: both one-sided tests of TOST at alpha
    n = seeds_to_decide(0.0, 0.2, 0.2, 0.05 / 7)
    assert tost_power(0.0, 0.2, n, 0.05 / 7, 0.2) >= 0.8 > tost_power(0.0, 0.2, n - 1, 0.05 / 7, 0.2)
    unpaired = seeds_to_decide(0.5, 1.0, 0.2, 0.05, paired=False)
    assert TTestIndPower().power(effect_size=0.5, nobs1=unpaired, alpha=0.05) >= 0.8 and unpaired == 64
    # a smaller alpha (a larger family) needs more seeds
    assert seeds_to_decide(0.5, 1.0, 0.2, 0.05 / 7) > 34
    assert seeds_to_decide(0.2, 0.0, 0.2, 0.05) == 3 and seeds_to_decide(0.2, math.nan, 0.2, 0.05) is None


def test_tost_power_matches_a_simulation_of_both_one_sided_tests():
    rng = np.random.default_rng(0)
    for diff, sd, n in ((0.0, 0.2, 14), (0.1, 0.15, 20)):
        d = rng.normal(diff, sd, (40_000, n))
        _, _, _, p_tost = paired_pvalues(d, 0.2)
        sim = (p_tost <= 0.05 / 7).mean()
        assert tost_power(diff, sd, n, 0.05 / 7, 0.2) == pytest.approx(sim, abs=0.015)
    assert tost_power(0.0, 0.2, 14, 0.05 / 7, 0.2) < 0.7  # what the old one-sided formula called 0.8


def test_seeds_range_follows_the_spreads_chi_square_interval():
    lo_sd, hi_sd = sd_interval(0.2, 5)
    ref = stats.chi2.interval(0.95, 4)
    assert (lo_sd, hi_sd) == pytest.approx((0.2 * math.sqrt(4 / ref[1]), 0.2 * math.sqrt(4 / ref[0])))
    lo, mid, hi = seeds_range(0.0, 0.2, 5, 0.2, 0.05 / 7)
    assert lo < mid < hi and mid == seeds_to_decide(0.0, 0.2, 0.2, 0.05 / 7)


def test_failure_test_is_scipys_fisher_exact():
    assert failure_test(1, 10, 7, 10) == pytest.approx(stats.fisher_exact([[1, 9], [7, 3]]).pvalue)
    assert failure_test(0, 5, 0, 5) == 1.0 and math.isnan(failure_test(0, 0, 1, 5))


def test_binomial_se_and_mean_ci():
    assert binomial_se(98.0, 10_000) == pytest.approx(100 * math.sqrt(0.98 * 0.02 / 10_000))
    assert mean_ci(A) == pytest.approx(stats.t.interval(0.95, 4, loc=np.mean(A), scale=stats.sem(A)))


def test_cs_multiplier_solves_the_bayes_factor_threshold():
    for n in (8, 10, 30, 200):
        t = float(cs_multiplier(n, 0.05 / 7))
        assert log_bayes_factor(np.array(t), n) == pytest.approx(math.log(7 / 0.05))
        assert t > stats.t.isf(0.05 / 7 / 2, n - 1)  # wider than the fixed-sample interval
    assert math.isinf(cs_multiplier(3, 0.05 / 7)) and cs_multiplier(10, 0.05) < cs_multiplier(10, 0.01)
    low, high = cs_interval(np.array([0.5, 0.5, 0.5]), np.array([0.1, 0.0, 0.1]), np.array([10, 10, 2]), 0.05)
    assert low[0] < 0.5 < high[0] and np.isnan(low[1:]).all()  # a tie or two seeds: no interval


def test_spending_boundaries_spend_alpha_t_squared_on_brownian_motion():
    rng = np.random.default_rng(0)
    t = np.array([0.25, 0.5, 0.6, 1.0])
    c = z_boundaries(t, 0.05)
    s = np.cumsum(rng.standard_normal((200_000, 4)) * np.sqrt(np.diff(t, prepend=0)), axis=1)
    crossed = np.logical_or.accumulate(np.abs(s / np.sqrt(t)) >= c, axis=1).mean(axis=0)
    assert crossed == pytest.approx(spent(t, 0.05), abs=3 * math.sqrt(0.05 * 0.95 / 200_000))
    assert z_boundaries([1.0], 0.05) == pytest.approx([1.95996], abs=1e-5)
    assert t_critical(1.959964, 1e9) == pytest.approx(1.959964, abs=1e-4) and t_critical(2.0, 5) > 2.0


def test_design_looks():
    d = Design(round=10, max_seeds=25)
    assert d.looks() == (10, 20, 25) and d.looks_until(15) == (10, 15) and d.looks_until(25) == (10, 20, 25)


def test_new_images_se_matches_the_pigeonhole_bootstrap_and_the_true_spread():
    """Seeds x images with a per-image effect: the analytic error against Owen's bootstrap, and against
    the spread of the estimate over fresh test sets (the quantity it estimates)."""
    rng = np.random.default_rng(0)
    n, big_n = 20, 2000

    def draw():
        hard = rng.random(big_n) < 0.04  # images where b is right more often than a
        pa = np.where(hard, 0.3, 0.97)
        pb = np.where(hard, 0.6, 0.97)
        skill = rng.normal(0, 0.01, (n, 1))  # seed effects
        return (rng.random((n, big_n)) < pa + skill).astype(float), (rng.random((n, big_n)) < pb + skill).astype(float)

    a, b = draw()
    got = new_images_se(a, b)
    seeds_only = 100 * (b - a).mean(1).std(ddof=1) / math.sqrt(n)
    assert got.se > seeds_only and got.images_se > 0
    assert got.se <= pigeonhole_bootstrap_se(a, b, reps=400) * 1.05  # Owen's bootstrap overstates by the residual
    truth = np.std([100 * np.subtract(*draw()[::-1]).mean() for _ in range(300)], ddof=1)
    assert got.se == pytest.approx(truth, rel=0.2)
    same = new_images_se(a, a)
    assert same.se == 0


def test_stats_and_sequential_import_neither_pandas_nor_mlflow():
    for module in (sequential, scope, spending, looks, __import__("ffnn.report.stats", fromlist=["x"])):
        tree = ast.parse(Path(module.__file__).read_text())
        imported = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        imported |= {(n.module or "").split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
        assert not imported & {"pandas", "mlflow"}
