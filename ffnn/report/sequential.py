"""Group-sequential decisions: repeated confidence intervals with alpha spending (pure numpy/scipy).

The method: Jennison & Turnbull's repeated confidence intervals (RCIs; "Interim analyses: the
repeated confidence interval approach", JRSS B 51, 1989) with Lan & DeMets' O'Brien-Fleming-type
alpha-spending function (Biometrika 70, 1983), two-sided:

    alpha(t) = 4 - 4 Phi(z_{1 - alpha / 4} / sqrt(t)),  t = seeds / max_seeds,

i.e. alpha / 2 spent on each side as gsDesign's ``sfLDOF`` and rpact's ``asOF`` do.

At look k the boundary c_k solves P(|Z_1| < c_1, ..., |Z_{k-1}| < c_{k-1}, |Z_k| >= c_k) =
alpha(t_k) - alpha(t_{k-1}) for the z-statistics of Brownian motion at t_1 < t_2 < ...
(Armitage, McPherson & Rowe's recursive integration, on a grid). The interval
``diff +- c_k se`` then covers the true difference at every look at once with probability
>= 1 - alpha, so a verdict read from it at any look, the look where one stops included, errs with
probability <= alpha whatever the stopping rule. With seeds unknown variance, c_k is carried to
the t scale at the same nominal level (Jennison & Turnbull 2000, section 11.3): t_df quantile of
Phi(c_k). Each comparison of a family of m gets alpha / m (Bonferroni): one error budget per
interval, so every verdict of the family (helped, hurt, equivalent) is covered at once.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
from scipy import optimize, stats

from .stats import decide

METHOD_NAME = ("repeated confidence intervals (Jennison & Turnbull 1989) with Lan-DeMets O'Brien-Fleming-type "
               "alpha spending (Lan & DeMets 1983), Bonferroni over the comparisons of a family")
GRID = 801  # points of the recursive integration's grid; boundaries are exact to ~1e-4


def obf_spent(t: float | np.ndarray, alpha: float) -> np.ndarray:
    """Two-sided alpha spent by information fraction ``t`` (Lan-DeMets O'Brien-Fleming type, per side).

    ``obf_spent(1.0, 0.05) == 0.05`` (all of it at the last look)
    """
    t = np.clip(np.asarray(t, float), 1e-12, 1.0)
    return 4 * stats.norm.sf(stats.norm.isf(alpha / 4) / np.sqrt(t))


def z_boundaries(fractions: Sequence[float], alpha: float) -> np.ndarray:
    """Two-sided z boundaries c_1..c_K at information fractions ``fractions`` (increasing, last <= 1).

    ``z_boundaries([1.0], 0.05)`` -> ``[1.96]``; five equal looks give 4.877, 3.357, 2.680, 2.290, 2.031
    (the gsDesign / rpact values).
    """
    t = np.asarray(fractions, float)
    if len(t) == 0:
        return np.array([])
    if np.any(np.diff(t) <= 0) or t[0] <= 0 or t[-1] > 1 + 1e-12:
        raise ValueError(f"information fractions must increase within (0, 1], got {list(t)}")
    spent = obf_spent(t, alpha)
    increments = np.diff(np.concatenate([[0.0], spent]))
    c = np.empty(len(t))
    c[0] = stats.norm.isf(max(increments[0], 1e-300) / 2)
    # sub-density of the score S_1 = Z_1 sqrt(t_1) on the continuation region (-b, b), b = c sqrt(t)
    b = c[0] * math.sqrt(t[0])
    x = np.linspace(-b, b, GRID)
    f = stats.norm.pdf(x, scale=math.sqrt(t[0]))
    for k in range(1, len(t)):
        w = _simpson(x)
        s = math.sqrt(t[k] - t[k - 1])

        def exit_prob(z: float) -> float:
            bk = z * math.sqrt(t[k])
            return float(np.sum(w * f * (stats.norm.cdf((-bk - x) / s) + stats.norm.sf((bk - x) / s))))

        target = increments[k]
        if exit_prob(0.0) <= target:
            c[k] = 0.0
        elif exit_prob(40.0) >= target:
            c[k] = 40.0
        else:
            c[k] = optimize.brentq(lambda z: exit_prob(z) - target, 0.0, 40.0, xtol=1e-10)
        bk = c[k] * math.sqrt(t[k])
        new_x = np.linspace(-bk, bk, GRID)
        f = (stats.norm.pdf((new_x[:, None] - x[None, :]) / s) / s) @ (w * f)
        x = new_x
    return c


def _simpson(x: np.ndarray) -> np.ndarray:
    """Simpson's weights on an odd-length uniform grid."""
    h = x[1] - x[0]
    w = np.ones(len(x))
    w[1:-1:2], w[2:-1:2] = 4, 2
    return w * h / 3


@dataclass(frozen=True)
class Design:
    """The planned looks of ``--until-decided``: seeds added per round up to ``max_seeds``."""
    alpha: float = 0.05  # family-wise error rate of every verdict of a family
    margin: float = 0.2  # points: |difference| below this is "equivalent"
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

    def z_boundary(self, n: int, m: int) -> float:
        """Two-sided z boundary at an analysis of ``n`` seeds, for one of ``m`` comparisons."""
        looks = self.looks_until(n)
        return float(z_boundaries([k / self.max_seeds for k in looks], self.alpha / m)[-1])


def fixed_z(alpha: float, m: int) -> float:
    """The one-look boundary: ``fixed_z(0.05, 1)`` -> 1.96."""
    return float(stats.norm.isf(alpha / m / 2))


def t_critical(z: float | np.ndarray, df: float | np.ndarray) -> np.ndarray:
    """The t quantile with the same nominal one-sided level as ``z``: ``t_critical(1.96, 1e9)`` -> 1.96."""
    return stats.t.isf(stats.norm.sf(z), df)


def simulate(diffs: np.ndarray, design: Design) -> tuple[np.ndarray, np.ndarray]:
    """Run the stopping rule on simulated paired differences; return (verdicts, seeds at stop).

    ``diffs``: (experiments, max_seeds, m) per-seed differences mean(b) - mean(a) of the m comparisons
    of one family. At each planned look every comparison gets its repeated confidence interval; the
    experiment stops at the first look where all m are helped, hurt or equivalent, or at the last.
    Verdicts: (experiments, m) strings read at the stopping look.
    """
    n_exp, n_max, m = diffs.shape
    if n_max < design.max_seeds:
        raise ValueError(f"need {design.max_seeds} seeds of differences, got {n_max}")
    looks = design.looks()
    z = z_boundaries([k / design.max_seeds for k in looks], design.alpha / m)
    csum, csq = np.cumsum(diffs, axis=1), np.cumsum(diffs ** 2, axis=1)
    verdicts = np.full((n_exp, m), "undecided", dtype=object)
    stop = np.full(n_exp, looks[-1])
    open_ = np.ones(n_exp, bool)
    for n, zk in zip(looks, z):
        mean = csum[:, n - 1] / n
        var = np.maximum(csq[:, n - 1] - n * mean ** 2, 0) / (n - 1)
        half = t_critical(zk, n - 1) * np.sqrt(var / n)
        v = decide(mean - half, mean + half, design.margin)
        verdicts[open_] = v[open_]
        done = open_ & (v != "undecided").all(axis=1)
        stop[done] = n
        open_ &= ~done
        if not open_.any():
            break
    return verdicts, stop
