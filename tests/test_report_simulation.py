"""The verdict rules by simulation: thousands of synthetic experiments, pure numpy, through the report's
own decision functions (one look: ``stats.paired_pvalues`` + ``stats.holm_verdicts``; --until-decided:
``spending.simulate``; a grown experiment: ``sequential.cs_multiplier``).

Accuracies per seed of the six tutorial models share a seed effect (per-seed correlation rho) and are
rounded to 0.01 points, as 10,000 test images round them, so the seven comparisons of the tutorial
family are paired, correlated and tie as in the real runs.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from ffnn.report.sequential import Design, cs_multiplier
from ffnn.report.spending import simulate
from ffnn.report.stats import MIN_SEEDS, holm_verdicts, paired_pvalues, study_pvalues

CHAIN = [(0, 1), (1, 2), (2, 3), (3, 4), (4, 5), (0, 3), (1, 3)]  # LR->A, A->B, B->C, C->D, D->E, LR->C, A->C
N_EXP = 2000
ALPHA, MARGIN = 0.05, 0.2
MC = 3 * math.sqrt(ALPHA * (1 - ALPHA) / N_EXP)  # three Monte-Carlo standard errors
REAL = ["helped", "hurt", "negligible"]  # the verdicts that claim a difference from 0


def chain_diffs(rng, means, seeds, sigma, n_exp=N_EXP, rho=0.5) -> np.ndarray:
    """(experiments, seeds, 7) per-seed differences of the tutorial family, accuracies in 0.01 steps."""
    shared = rng.standard_normal((n_exp, seeds, 1))
    own = rng.standard_normal((n_exp, seeds, 6))
    acc = 95 + np.asarray(means) + sigma * (math.sqrt(rho) * shared + math.sqrt(1 - rho) * own)
    acc = np.round(acc, 2)
    return np.stack([acc[..., b] - acc[..., a] for a, b in CHAIN], axis=-1)


def fixed_verdicts(d: np.ndarray) -> np.ndarray:
    """One look, as the report decides a family: (experiments, seeds, m) -> (experiments, m)."""
    d = np.moveaxis(d, 1, -1)
    n = d.shape[-1]
    diff, se, p, p_tost = paired_pvalues(d, MARGIN)
    if n < MIN_SEEDS:
        p = p_tost = np.full(p.shape, np.nan)
    return holm_verdicts(diff, se, np.full(diff.shape, n - 1), p, p_tost, ALPHA, MARGIN)["verdict"]


@pytest.mark.parametrize("n", [2, 3, 5, 10, 30])
def test_complete_null_gives_few_false_differences_at_every_sample_size(n):
    rng = np.random.default_rng(n)
    for sigma in (0.05, 0.15, 0.3):
        v = fixed_verdicts(chain_diffs(rng, [0.0] * 6, n, sigma))
        assert np.isin(v, REAL).any(axis=1).mean() <= ALPHA + MC, (n, sigma)


def test_ties_without_the_exact_test_would_give_false_certainty():
    """The checks above can fail: where differences tie, p = 0 (the old zero-variance shortcut) breaks alpha,
    at 2 seeds (hence MIN_SEEDS) and at 3 (hence the exact sign-flip p)."""
    rng = np.random.default_rng(7)
    for n, sigma in ((2, 0.15), (3, 0.02)):
        d = np.moveaxis(chain_diffs(rng, [0.0] * 6, n, sigma), 1, -1)
        diff, se, p, p_tost = paired_pvalues(d, MARGIN)
        naive = np.where((se == 0) & (diff != 0), 0.0, p)
        v = holm_verdicts(diff, se, np.full(diff.shape, n - 1), naive, p_tost, ALPHA, MARGIN)["verdict"]
        assert np.isin(v, REAL).any(axis=1).mean() > ALPHA + MC, (n, sigma)
        v = holm_verdicts(diff, se, np.full(diff.shape, n - 1), p, p_tost, ALPHA, MARGIN)["verdict"]
        assert np.isin(v, REAL).any(axis=1).mean() <= ALPHA + MC or n < MIN_SEEDS


def test_a_true_difference_at_the_margin_is_rarely_called_equivalent_or_negligible():
    rng = np.random.default_rng(11)
    for n in (5, 30):
        for step in (MARGIN, -MARGIN):
            means = [0.0, step, 2 * step, 3 * step, 4 * step, 5 * step]  # the chain's steps all at the margin
            v = fixed_verdicts(chain_diffs(rng, means, n, 0.15))[:, :5]
            assert np.isin(v, ["equivalent", "negligible"]).any(axis=1).mean() <= ALPHA + MC, (n, step)


def test_a_real_but_small_difference_reads_negligible_not_helped():
    rng = np.random.default_rng(3)
    d = rng.normal(0.1, 0.15, (N_EXP, 60, 7))
    v = fixed_verdicts(d)
    assert (v == "negligible").mean() >= 0.8 and (v == "helped").mean() < 0.05


def test_large_effects_are_still_decided_at_five_seeds():
    """The exact test only replaces the t-test at ties: A -> B's +3 points stays helped at 5 seeds."""
    rng = np.random.default_rng(5)
    v = fixed_verdicts(chain_diffs(rng, [0.0, 0.1, 3.1, 3.9, 4.7, 4.9], 5, 0.15))
    assert (v[:, 1] == "helped").mean() > 0.95


@pytest.mark.parametrize("round_", [1, 2, 3, 5])
def test_sequential_rule_keeps_alpha_at_every_round(round_):
    rng = np.random.default_rng(100 + round_)
    design = Design(ALPHA, MARGIN, round_, 60)
    for sigma in (0.05, 0.15, 0.3):
        v, _ = simulate(chain_diffs(rng, [0.0] * 6, 60, sigma), design)
        assert np.isin(v, REAL).any(axis=1).mean() <= ALPHA + MC, (round_, sigma)


def test_sequential_rule_rarely_calls_a_difference_at_the_margin_equivalent():
    rng = np.random.default_rng(12)
    for step in (MARGIN, -MARGIN):
        d = chain_diffs(rng, [0.0, step, 2 * step, 3 * step, 4 * step, 5 * step], 60, 0.15)
        v, _ = simulate(d, Design(ALPHA, MARGIN, 10, 60))
        assert np.isin(v[:, :5], ["equivalent", "negligible"]).any(axis=1).mean() <= ALPHA + MC, step


def test_peeking_with_fixed_sample_intervals_breaks_alpha_so_the_check_can_fail():
    rng = np.random.default_rng(1)
    d = rng.standard_normal((N_EXP, 60, 1)) * 0.15
    naive = np.zeros(N_EXP, bool)
    for n in Design(ALPHA, 1e-9, 2, 60).looks():
        naive |= np.isin(fixed_verdicts(d[:, :n]), REAL)[:, 0]
    assert naive.mean() > ALPHA + MC
    v, _ = simulate(d, Design(ALPHA, 1e-9, 2, 60))
    assert np.isin(v, REAL).mean() <= ALPHA + MC


def test_confidence_sequence_covers_the_truth_at_every_n_at_once():
    """Ville's bound: over 200 looks of one comparison, the sequence ever misses with probability <= alpha."""
    rng = np.random.default_rng(2)
    x = rng.normal(0.3, 0.2, (N_EXP, 200))
    n = np.arange(1, 201)
    mean = np.cumsum(x, 1) / n
    sd = np.sqrt(np.maximum(np.cumsum(x ** 2, 1) - n * mean ** 2, 0) / np.maximum(n - 1, 1))
    with np.errstate(invalid="ignore"):  # inf * 0 below MIN_SEEDS, not used
        half = cs_multiplier(n, ALPHA) * sd / np.sqrt(n)
    missed = (np.abs(mean - 0.3) > half)[:, MIN_SEEDS - 1:].any(axis=1).mean()
    assert missed <= ALPHA + MC
    fixed = (np.abs(mean - 0.3) > 1.96 * sd / np.sqrt(n))[:, MIN_SEEDS - 1:].any(axis=1).mean()
    assert fixed > 3 * ALPHA  # a 95% interval at every n misses far more often


def test_a_true_difference_of_0_3_points_is_decided_within_the_default_cap():
    rng = np.random.default_rng(4)
    design = Design()
    v, stop = simulate(rng.normal(0.3, 0.15, (N_EXP, design.max_seeds, 7)), design)
    assert (v != "undecided").all(axis=1).mean() >= 0.95 and (v == "helped").mean() >= 0.95
    assert stop.mean() < design.max_seeds


def test_simulate_keeps_the_first_deciding_look_and_stops_when_all_are_decided():
    d = np.zeros((1, 20, 2))
    d[0, :, 0] = 5 + np.sin(np.arange(20))  # huge: helped at the first look
    d[0, :, 1] = 0.01 * np.cos(np.arange(20))  # tiny: equivalent
    verdicts, stop = simulate(d, Design(ALPHA, MARGIN, 10, 20))
    assert verdicts.tolist() == [["helped", "equivalent"]] and stop.tolist() == [10]


def test_large_effects_are_decided_at_the_first_look_and_holm_passes_alpha_on():
    """A -> B-sized effects are decided at the first look (10 seeds); once they are, the small open
    comparison is tested at alpha / 1, not alpha / 7: more often decided than with Bonferroni's fixed share."""
    rng = np.random.default_rng(6)
    d = rng.normal([3.0, 3.0, 3.0, 3.0, 3.0, 3.0, 0.2], 0.3, (N_EXP, 60, 7))
    v, stop = simulate(d, Design())
    assert (v[:, :6] == "helped").all() and (stop >= 10).all()
    alone = simulate(d[..., 6:], Design())[0]  # a family of one: the most alpha it can have
    together = (v[:, 6] != "undecided").mean()
    assert together == pytest.approx((alone[:, 0] != "undecided").mean(), abs=0.03) and together > 0.5


def replicate_studies(rng, tau, sigma, studies=3, seeds=5, diff=0.0, n_exp=N_EXP):
    """(experiments, studies, seeds) final accuracies of two architectures, each study one search: its found
    configuration lies tau points off the architecture's mean (which search found what), its seeds sigma
    around that; the architectures differ by ``diff``."""
    def one(shift):
        found = shift + tau * rng.standard_normal((n_exp, studies, 1))
        return np.round(95 + found + sigma * rng.standard_normal((n_exp, studies, seeds)), 2)
    return one(0.0), one(diff)


def test_study_level_test_keeps_alpha_when_searches_differ_and_pooled_seeds_do_not():
    """With a large search-to-search spread (tau 0.5 points, seeds 0.1), the Welch test on study means keeps
    its false-positive rate at every number of studies; the same test on the pooled seeds, which takes 15
    seeds of 3 searches for 15 independent draws, calls most null comparisons different."""
    rng = np.random.default_rng(24)
    for k in (2, 3, 5):
        a, b = replicate_studies(rng, tau=0.5, sigma=0.1, studies=k)
        p = study_pvalues(a.mean(-1), b.mean(-1), MARGIN)[3]
        assert (p < ALPHA).mean() <= ALPHA + MC, k
    a, b = replicate_studies(rng, tau=0.5, sigma=0.1, studies=3)
    naive = study_pvalues(a.reshape(N_EXP, -1), b.reshape(N_EXP, -1), MARGIN)[3]
    assert (naive < ALPHA).mean() > 0.3


def test_study_level_test_decides_a_real_architecture_effect():
    """Its power is real: a 1-point effect with searches 0.3 points apart is found at 5 studies."""
    a, b = replicate_studies(np.random.default_rng(3), tau=0.3, sigma=0.1, studies=5, diff=1.0)
    diff, se, df, p, p_tost = (v[:, None] for v in study_pvalues(a.mean(-1), b.mean(-1), MARGIN))  # m = 1
    v = holm_verdicts(diff, se, df, p, p_tost, ALPHA, MARGIN)["verdict"]
    assert (v == "helped").mean() > 0.9
