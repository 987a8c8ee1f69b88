"""The --until-decided stopping rule by simulation: thousands of synthetic experiments, pure numpy.

Accuracies per seed of the six tutorial models share a seed effect (per-seed correlation rho), so the
seven comparisons of the tutorial family are paired and correlated as in the real runs.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from ffnn.report.sequential import Design, simulate, t_critical, z_boundaries
from ffnn.report.stats import decide

CHAIN = [(0, 1), (1, 2), (2, 3), (3, 4), (4, 5), (0, 3), (1, 3)]  # LR->A, A->B, B->C, C->D, D->E, LR->C, A->C
N_EXP = 4000
ALPHA = 0.05
MC = 3 * math.sqrt(ALPHA * (1 - ALPHA) / N_EXP)  # three Monte-Carlo standard errors


def chain_diffs(rng, means, n_exp=N_EXP, seeds=60, sigma=0.15, rho=0.5) -> np.ndarray:
    """(experiments, seeds, 7) per-seed differences of the tutorial family; accuracy std ``sigma`` points."""
    shared = rng.standard_normal((n_exp, seeds, 1))
    own = rng.standard_normal((n_exp, seeds, 6))
    acc = np.asarray(means) + sigma * (math.sqrt(rho) * shared + math.sqrt(1 - rho) * own)
    return np.stack([acc[..., b] - acc[..., a] for a, b in CHAIN], axis=-1)


@pytest.mark.parametrize("round_", [5, 10])
def test_no_true_difference_gives_few_false_helped_or_hurt(round_):
    rng = np.random.default_rng(round_)
    verdicts, stop = simulate(chain_diffs(rng, [0.0] * 6), Design(ALPHA, 0.2, round_, 60))
    false = np.isin(verdicts, ["helped", "hurt"]).any(axis=1).mean()  # family-wise
    assert false <= ALPHA + MC
    assert (verdicts == "equivalent").all(axis=1).mean() > 0.9 and stop.mean() < 60  # and it stops early


def test_single_comparison_error_is_near_alpha_and_naive_peeking_is_not():
    """m = 1, no margin (equivalence impossible, so every look is taken): the rate of the boundary-based
    rule is close to alpha; checking a plain 95% t-interval at every look exceeds it, so this test can fail."""
    rng = np.random.default_rng(1)
    d = rng.standard_normal((N_EXP, 60, 1)) * 0.15
    design = Design(ALPHA, 1e-9, 5, 60)
    verdicts, _ = simulate(d, design)
    rate = np.isin(verdicts, ["helped", "hurt"]).mean()
    assert ALPHA / 3 < rate <= ALPHA + MC
    naive = np.zeros(N_EXP, bool)
    for n in design.looks():
        x = d[:, :n, 0]
        half = float(t_critical(1.959964, n - 1)) * x.std(axis=1, ddof=1) / math.sqrt(n)
        naive |= decide(x.mean(1) - half, x.mean(1) + half, 1e-9) != "undecided"
    assert naive.mean() > ALPHA + MC


def test_a_true_difference_of_0_2_points_is_found_within_max_seeds():
    rng = np.random.default_rng(2)
    for rho in (0.0, 0.5):
        means = [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]  # every step +0.2 points
        verdicts, _ = simulate(chain_diffs(rng, means, n_exp=2000, rho=rho), Design(ALPHA, 0.2, 10, 60))
        assert ((verdicts == "helped").mean(axis=0) >= 0.8).all()


def test_simulate_stops_at_the_first_look_where_all_are_decided():
    d = np.zeros((1, 20, 2))
    d[0, :, 0] = 5 + np.sin(np.arange(20))  # huge: helped at the first look
    d[0, :, 1] = 0.01 * np.cos(np.arange(20))  # tiny: equivalent
    verdicts, stop = simulate(d, Design(ALPHA, 0.2, 10, 20))
    assert verdicts.tolist() == [["helped", "equivalent"]] and stop.tolist() == [10]
    assert z_boundaries([0.5, 1.0], ALPHA / 2)[0] > 2.5
