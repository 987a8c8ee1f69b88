"""The --until-decided rule: group-sequential boundaries with alpha spending, and Holm across the family
(pure numpy/scipy).

Each comparison's interval at a planned look is a repeated confidence interval (C. Jennison and
B. W. Turnbull, Interim analyses: the repeated confidence interval approach, JRSS B 51 (1989)
305-361): diff +- c_k se, with c_k the two-sided group-sequential boundary of its level. The
boundaries spend alpha by the seeds seen, t = seeds / max_seeds, with the power family
alpha t^RHO (K. Kim and D. L. DeMets, Design and analysis of group sequential tests based on the
type I error spending rate function, Biometrika 74 (1987) 149-154); RHO = 2 spends earlier than
O'Brien-Fleming, so that the first look can decide a large effect. c_k solves the recursive
integral of Armitage, McPherson and Rowe (1969) on a grid, and is carried to the t scale at the
same nominal level (Jennison & Turnbull 2000, section 11.3); no verdict below MIN_SEEDS seeds.

Across a family of m comparisons, two Holm procedures in their group-sequential form (W. Maurer and
F. Bretz, Multiple testing in group sequential trials using graphical approaches, Stat. Biopharm.
Res. 5 (2013) 311-320; Holm is the graph that passes a rejected hypothesis's alpha on equally): one
for "no difference" (two-sided, rejected when the interval excludes 0), one for "|difference| >=
margin" (TOST: rejected when the interval at 1 - 2a lies within +-margin). Each open hypothesis is
tested at alpha / r, r the hypotheses still open in its procedure; a rejection passes its alpha on,
and every open hypothesis is then tested again at every look so far with the larger level. Each
procedure keeps its family-wise error at alpha however the seeds run out: any false claim of a
difference (helped, hurt, negligible) has probability <= alpha, any false equivalent or negligible
<= alpha. Both rejected: negligible; a verdict once reached is never reversed (a helped that is
later also shown within the margin becomes negligible).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import lru_cache

import numpy as np
from scipy import optimize, stats

from .sequential import Design
from .stats import MIN_SEEDS

METHOD_NAME = ("repeated confidence intervals (Jennison & Turnbull 1989) with Kim-DeMets power-family alpha "
               "spending (rho 2), Holm across the family in its group-sequential form (Maurer & Bretz 2013)")
RHO = 2.0  # the spending function's power: alpha t^2
GRID = 801  # points of the recursive integration's grid; boundaries are exact to ~1e-4


def spent(t: float | np.ndarray, alpha: float, rho: float = RHO) -> np.ndarray:
    """Two-sided alpha spent by information fraction ``t``: ``spent(0.5, 0.05) == 0.0125``"""
    out: np.ndarray = alpha * np.clip(np.asarray(t, float), 0.0, 1.0) ** rho
    return out


def z_boundaries(fractions: Sequence[float], alpha: float, rho: float = RHO) -> np.ndarray:
    """Two-sided z boundaries c_1..c_K at information fractions ``fractions`` (increasing, last <= 1).

    P(|Z_1| < c_1, ..., |Z_{k-1}| < c_{k-1}, |Z_k| >= c_k) = spent(t_k) - spent(t_{k-1}) for the
    z-statistics of Brownian motion. ``z_boundaries([1.0], 0.05)`` -> ``[1.96]``
    """
    t = np.asarray(fractions, float)
    if len(t) == 0:
        return np.array([])
    if np.any(np.diff(t) <= 0) or t[0] <= 0 or t[-1] > 1 + 1e-12:
        raise ValueError(f"information fractions must increase within (0, 1], got {list(t)}")
    increments = np.diff(np.concatenate([[0.0], spent(t, alpha, rho)]))
    c = np.empty(len(t))
    c[0] = stats.norm.isf(max(increments[0], 1e-300) / 2)
    # sub-density of the score S_1 = Z_1 sqrt(t_1) on the continuation region (-b, b), b = c sqrt(t)
    b = c[0] * math.sqrt(t[0])
    x = np.linspace(-b, b, GRID)
    f = stats.norm.pdf(x, scale=math.sqrt(t[0]))
    for k in range(1, len(t)):
        w = _simpson(x)
        s = math.sqrt(t[k] - t[k - 1])
        grid = (float(t[k]), w, f, x, s)
        target = increments[k]
        if _exit_prob(0.0, *grid) <= target:
            c[k] = 0.0
        elif _exit_prob(40.0, *grid) >= target:
            c[k] = 40.0
        else:
            c[k] = optimize.brentq(_exit_excess, 0.0, 40.0, args=(*grid, target), xtol=1e-10)
        bk = c[k] * math.sqrt(t[k])
        new_x = np.linspace(-bk, bk, GRID)
        f = (stats.norm.pdf((new_x[:, None] - x[None, :]) / s) / s) @ (w * f)
        x = new_x
    return c


def _exit_prob(z: float, t_k: float, w: np.ndarray, f: np.ndarray, x: np.ndarray, s: float) -> float:
    """P(the score, on the grid ``x`` with sub-density ``f``, leaves (-z sqrt(t_k), z sqrt(t_k)) in the next step)."""
    bk = z * math.sqrt(t_k)
    return float(np.sum(w * f * (stats.norm.cdf((-bk - x) / s) + stats.norm.sf((bk - x) / s))))


def _exit_excess(z: float, t_k: float, w: np.ndarray, f: np.ndarray, x: np.ndarray, s: float, target: float) -> float:
    """``_exit_prob`` minus ``target``: the root brentq finds is the boundary c_k."""
    return _exit_prob(z, t_k, w, f, x, s) - target


def _simpson(x: np.ndarray) -> np.ndarray:
    """Simpson's weights on an odd-length uniform grid."""
    h = float(x[1] - x[0])
    w = np.ones(len(x))
    w[1:-1:2], w[2:-1:2] = 4, 2
    return w * h / 3


def t_critical(z: float | np.ndarray, df: float | np.ndarray) -> np.ndarray:
    """The t quantile with the same nominal one-sided level as ``z``: ``t_critical(1.96, 1e9)`` -> 1.96."""
    out: np.ndarray = stats.t.isf(stats.norm.sf(z), df)  # scipy is untyped: its result's type stated here
    return out


@lru_cache(maxsize=256)
def _boundaries(looks: tuple[int, ...], max_seeds: int, alpha: float) -> np.ndarray:
    return z_boundaries([k / max_seeds for k in looks], alpha)


def boundary_table(design: Design, looks: tuple[int, ...], m: int, two_sided_factor: float) -> np.ndarray:
    """(m, L) z boundaries at ``looks`` for local levels ``factor * alpha / r``, r = 1..m (row r - 1)."""
    return np.stack([_boundaries(looks, design.max_seeds, two_sided_factor * design.alpha / r)
                     for r in range(1, m + 1)])


def holm_sequential(diff: np.ndarray, se: np.ndarray, n: np.ndarray, design: Design, looks: tuple[int, ...]
                    ) -> dict[str, np.ndarray]:
    """The rule of the module docstring over (experiments, L looks, m comparisons) estimates.

    ``n`` is each comparison's seeds at each look (the estimate there is on that many; NaN diff where it
    has not reached the look). Returns per (experiment, comparison): verdict, look (index of the look
    that decided it, -1 if none), low, high and level of the interval shown (at the deciding look, or the
    last look's wider interval at the final levels when undecided).
    """
    n_exp, n_looks, m = diff.shape
    margin = design.margin
    z_diff = boundary_table(design, looks, m, 1.0)  # (m, L)
    z_eq = boundary_table(design, looks, m, 2.0)  # TOST: each side at alpha / r: two-sided 2 alpha / r
    df = np.maximum(n - 1, 1)
    ok = (n >= MIN_SEEDS) & (se > 0) & np.isfinite(diff)
    with np.errstate(invalid="ignore"):
        half_d = _t_table(z_diff, df) * se[..., None]  # (E, L, m, r)
        half_e = _t_table(z_eq, df) * se[..., None]
    d = diff[..., None]
    cross_d = ok[..., None] & ((d - half_d > 0) | (d + half_d < 0))  # (E, L, m, r)
    cross_e = ok[..., None] & (d - half_e > -margin) & (d + half_e < margin)
    any_d = np.logical_or.accumulate(cross_d, axis=1)  # crossed at any look so far
    any_e = np.logical_or.accumulate(cross_e, axis=1)
    open_d, open_e = np.ones((n_exp, m), bool), np.ones((n_exp, m), bool)
    when_d, when_e = np.full((n_exp, m), -1), np.full((n_exp, m), -1)
    stop = np.full(n_exp, -1)  # the first look index at which every comparison had a verdict
    rows = np.arange(n_exp)[:, None]
    for j in range(n_looks):
        if j:
            stop[(stop < 0) & (~open_d | ~open_e).all(1)] = j - 1
        for _ in range(m):  # Holm: each rejection raises the others' level; at most m rounds
            r_d, r_e = open_d.sum(1, keepdims=True), open_e.sum(1, keepdims=True)
            rej_d = open_d & any_d[rows, j, np.arange(m)[None, :], np.maximum(r_d, 1) - 1]
            rej_e = open_e & any_e[rows, j, np.arange(m)[None, :], np.maximum(r_e, 1) - 1]
            if not (rej_d.any() or rej_e.any()):
                break
            when_d[rej_d], when_e[rej_e] = j, j
            open_d &= ~rej_d
            open_e &= ~rej_e
    stop[(stop < 0) & (~open_d | ~open_e).all(1)] = n_looks - 1
    real, inside = ~open_d, ~open_e
    last = n_looks - 1
    cols = np.arange(m)[None, :]
    sign = np.sign(diff[rows, np.where(when_d >= 0, when_d, last), cols])
    verdict = np.select([real & inside, real & (sign > 0), real & (sign < 0), inside],
                        ["negligible", "helped", "hurt", "equivalent"], "undecided")
    first = np.where(real & inside, np.minimum(when_d, when_e), np.where(real, when_d, when_e))
    decided = verdict != "undecided"
    # the interval shown: at the look that decided it (the equivalence one when that came first, or with it),
    # at the level its procedure had reached by the end; undecided: the wider one at the last look reached
    at = np.where(decided, first, _last_reached(n))
    r_d = np.maximum(open_d.sum(1, keepdims=True), 1).repeat(m, 1) - 1
    r_e = np.maximum(open_e.sum(1, keepdims=True), 1).repeat(m, 1) - 1
    hd, he = half_d[rows, at, cols, r_d], half_e[rows, at, cols, r_e]
    use_e = np.where(decided, inside & (~real | (when_e <= when_d)), he > hd)
    half = np.where(use_e, he, hd)
    z_used = np.where(use_e, z_eq[r_e, at], z_diff[r_d, at])
    centre, shown = diff[rows, at, cols], ok[rows, at, cols]
    nan = np.full((n_exp, m), np.nan)
    return {"verdict": verdict, "look": np.where(decided, first, -1), "at": at, "stop": stop,
            "interval": np.where(shown, np.where(use_e, "equivalence", "difference"), ""),
            "low": np.where(shown, centre - half, nan), "high": np.where(shown, centre + half, nan),
            "level": np.where(shown, 1 - 2 * stats.norm.sf(z_used), nan)}


def _t_table(z_table: np.ndarray, df: np.ndarray) -> np.ndarray:
    """t_critical of every (r, look) boundary at every estimate's df: (E, L, m, r), from few distinct df."""
    u, inv = np.unique(df, return_inverse=True)
    table = t_critical(z_table.T[:, None, :], u[None, :, None])  # (L, U, r)
    return table[np.arange(df.shape[1])[None, :, None], inv.reshape(df.shape), :]


def _last_reached(n: np.ndarray) -> np.ndarray:
    """Per (experiment, comparison): the last look index with an estimate (n >= MIN_SEEDS), else the last."""
    reached = n >= MIN_SEEDS
    idx: np.ndarray = np.where(reached.any(1), n.shape[1] - 1 - np.argmax(reached[:, ::-1, :], axis=1),
                               n.shape[1] - 1)
    return idx


def simulate(diffs: np.ndarray, design: Design) -> tuple[np.ndarray, np.ndarray]:
    """The --until-decided rule on simulated per-seed differences; (verdicts, seeds at the stop).

    ``diffs``: (experiments, max_seeds, m) per-seed differences of a family's m comparisons; every
    comparison sees its first k seeds at look k (the rule's verdicts depend only on those). The
    experiment stops at the first look where all m have a verdict.
    """
    n_exp, n_max, m = diffs.shape
    looks = design.looks()
    if n_max < looks[-1]:
        raise ValueError(f"need {looks[-1]} seeds of differences, got {n_max}")
    csum, csq = np.cumsum(diffs, axis=1), np.cumsum(diffs ** 2, axis=1)
    span = np.maximum.accumulate(diffs, axis=1) - np.minimum.accumulate(diffs, axis=1)
    idx = np.asarray(looks) - 1
    k = np.asarray(looks, float)[None, :, None]
    mean = csum[:, idx] / k
    with np.errstate(invalid="ignore", divide="ignore"):
        var = np.maximum(csq[:, idx] - k * mean ** 2, 0) / np.maximum(k - 1, 1)
        se = np.where(span[:, idx] > 1e-9, np.sqrt(var / k), 0.0)
    n = np.broadcast_to(k, mean.shape)
    out = holm_sequential(mean, se, n, design, looks)
    return out["verdict"], np.asarray(looks)[out["stop"]]
