"""Decisions that stay valid however often one looks: anytime-valid confidence sequences, for an
experiment that grew since an earlier report (pure numpy/scipy); and the --until-decided ``Design``.

The method: the confidence sequence of the one-sample t-test's mixture Bayes factor, Lai's (1976)
"On confidence sequences" (Ann. Statist. 4, 265-280) construction as Wang & Ramdas (2023,
"Anytime-valid t-tests and confidence sequences for Gaussian means with unknown variance",
Sequential Analysis 42) give it; the Bayes factor is Goenen, Johnson, Lu & Westfall's (2005,
Am. Stat. 59, 252-257) with a N(0, TAU2) prior on the standardized difference delta = mu / sigma
and the right-Haar prior 1 / sigma on the scale:

    BF_n(t) = (1 + n TAU2)^(-1/2) [(1 + t^2 / nu) / (1 + t^2 / (nu (1 + n TAU2)))]^((nu + 1) / 2),  nu = n - 1,

with t the paired t statistic of a hypothesised difference. Under that hypothesis BF_n is a
nonnegative martingale (Perez-Ortiz, Lardy, de Heide & Gruenwald 2024, "E-statistics, group
invariance and anytime-valid testing", Ann. Statist.), so by Ville's inequality it ever exceeds
1 / alpha with probability <= alpha. The differences it does not reject at level alpha form the
interval ``diff +- t*_n se``: it covers the true difference at every n at once with probability
>= 1 - alpha, so a verdict read from it at any look, the look one stops at or a look chosen after
seeing the data, errs with probability <= alpha. No maximum number of seeds is planned. Each
comparison of a family of m gets alpha / m (Bonferroni), so every verdict of the family is covered
at once. TAU2 = 1 is the unit-information prior, fixed here, not fitted to any data.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .stats import MIN_SEEDS

METHOD_NAME = ("anytime-valid confidence sequences (the t-test mixture of Lai 1976; Wang & Ramdas 2023), "
               "Bonferroni over the comparisons of a family")
TAU2 = 1.0  # prior variance of the standardized difference: the unit-information prior


def cs_multiplier(n: int | np.ndarray, alpha: float, tau2: float = TAU2) -> np.ndarray:
    """t*_n: the half-width of the level-``alpha`` confidence sequence at n seeds, in standard errors.

    Solves BF_n(t) = 1 / alpha in closed form: with c = 1 + n tau2 and R = (c / alpha^2)^(1/n),
    t^2 / nu = (R - 1) / (1 - R / c). Infinite where BF_n cannot reach 1 / alpha (too few seeds:
    (1 + n tau2)^(nu / 2) < 1 / alpha) and below two seeds.
    ``round(float(cs_multiplier(10, 0.05 / 7)), 2) == 5.61``
    """
    n = np.asarray(n, float)
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        c = 1 + n * tau2
        r = np.exp((np.log(c) + 2 * math.log(1 / alpha)) / n)
        u = (r - 1) / (1 - r / c)
        return np.where((n >= 2) & (r < c), np.sqrt((n - 1) * u), np.inf)


def log_bayes_factor(t: np.ndarray, n: int, tau2: float = TAU2) -> np.ndarray:
    """log BF_n(t) of the module docstring (the tests check ``cs_multiplier`` against it)."""
    t = np.asarray(t, float)
    nu, c = n - 1, 1 + n * tau2
    return -0.5 * math.log(c) + (nu + 1) / 2 * (np.log1p(t ** 2 / nu) - np.log1p(t ** 2 / (nu * c)))


def cs_interval(diff: float | np.ndarray, se: float | np.ndarray, n: int | np.ndarray, alpha: float
                ) -> tuple[np.ndarray, np.ndarray]:
    """(low, high) of the confidence sequence at n seeds; NaN where no interval exists.

    Below MIN_SEEDS, and where the per-seed differences do not vary (se 0: the sequence would be a
    point, certainty from a tie), there is no interval and so no verdict.
    """
    diff, se, n = (np.asarray(v, float) for v in (diff, se, n))
    with np.errstate(invalid="ignore"):
        half = cs_multiplier(np.maximum(n, 2), alpha) * se
    ok = (n >= MIN_SEEDS) & (se > 0) & np.isfinite(half)
    nan = np.full(np.broadcast(diff, se).shape, np.nan)
    return np.where(ok, diff - half, nan), np.where(ok, diff + half, nan)


@dataclass(frozen=True)
class Design:
    """The looks of ``--until-decided``: seeds added per round, up to ``max_seeds``."""
    alpha: float = 0.05  # family-wise error rate of every verdict of a family
    margin: float = 0.2  # points: |difference| below this is "equivalent" (or "negligible" if real)
    round: int = 10  # seeds added per model per look
    max_seeds: int = 60  # the last look

    def looks(self) -> tuple[int, ...]:
        """``Design(round=10, max_seeds=25).looks() == (10, 20, 25)``"""
        looks = list(range(self.round, self.max_seeds + 1, self.round))
        if not looks or looks[-1] != self.max_seeds:
            looks.append(self.max_seeds)
        return tuple(looks)

    def looks_until(self, n: int) -> tuple[int, ...]:
        """The planned looks before ``n`` seeds, then ``n``: the history an analysis at ``n`` seeds has had."""
        n = min(n, self.max_seeds)
        return tuple(k for k in self.looks() if k < n) + (n,)
