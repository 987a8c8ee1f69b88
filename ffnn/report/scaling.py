"""A scaling law per depth, err(N) = E + A * N^-alpha over parameter count N, with intervals and a hold-out.

The form is Rosenfeld et al. 2020's across width (err in percent, N in units of the smallest cell's
parameters, ``n0``). It is fitted to the cell means in log space: ``scipy.optimize.least_squares`` on
log err(N) - log err_measured with a soft-L1 loss (residuals beyond ``F_SCALE``, about 10 % of the error,
count linearly, so one odd width cannot pull the law), from several starts, the best kept. Intervals come
from a bootstrap over seeds (every cell of a depth resampled with the same seeds, so that their
correlation stays in), percentile intervals of alpha, E and the gain the next doubling of the widest
width would bring. The check (Besiroglu et al. 2024: fits need honest uncertainty and out-of-sample
checks): refit without the widest width and predict it; the fit passes when the bootstrap interval of
measured - predicted contains 0.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
from scipy.optimize import least_squares

MIN_WIDTHS = 4  # widths a fit needs: three parameters, and the hold-out refit on the others
ALPHA_MAX = 4.0  # bound on the exponent (MLPs fit 0.1-1; beyond 4 the form is a step, not a law)
F_SCALE = 0.1  # soft-L1 scale of the log residuals: within ~10 % of the error they count quadratically
N_BOOT = 200  # bootstrap resamples of the seeds
COLUMNS = ["depth", "alpha", "alpha_low", "alpha_high", "E", "next_doubling_gain", "holdout_width",
           "holdout_predicted", "holdout_measured", "holdout_error", "E_low", "E_high", "next_doubling_gain_low",
           "next_doubling_gain_high", "holdout_low", "holdout_high", "holdout_passed", "n_widths", "n_seeds",
           "reason"]


@dataclass(frozen=True)
class Law:
    """err(N) = E + A (N / n0)^-alpha, err in percent."""

    E: float  # error left at infinite N, percent
    A: float  # error above E at N = n0, percent
    alpha: float  # how fast the error falls with N
    n0: float  # parameters N is counted in units of

    def err(self, n: float | np.ndarray) -> np.ndarray:
        """``Law(1.0, 4.0, 1.0, 10.0).err(20.0)`` -> 3.0"""
        return np.asarray(self.E + self.A * (np.asarray(n, float) / self.n0) ** -self.alpha)


def _residuals(x: np.ndarray, u: np.ndarray, log_err: np.ndarray) -> np.ndarray:
    e, log_a, alpha = x
    return np.asarray(np.log(e + np.exp(log_a) * u ** -alpha) - log_err)


def _jacobian(x: np.ndarray, u: np.ndarray, log_err: np.ndarray) -> np.ndarray:
    """d residual / d (E, log A, alpha), written out: the bootstrap refits the law hundreds of times."""
    e, log_a, alpha = x
    t = np.exp(log_a) * u ** -alpha
    g = e + t
    return np.stack([1 / g, t / g, -t * np.log(u) / g], axis=1)


def fit_law(n: Sequence[float] | np.ndarray, err: Sequence[float] | np.ndarray, start: Law | None = None) -> Law:
    """The law through (n, err) in log space with a robust loss; ``start`` (a neighbouring fit) replaces the
    grid of starting points. Every err must be > 0.

    ``fit_law([1, 2, 4, 8], Law(1.0, 4.0, 0.5, 1.0).err([1, 2, 4, 8])).alpha`` -> 0.5 (to 1e-6)
    """
    n_arr, err_arr = np.asarray(n, float), np.asarray(err, float)
    if len(n_arr) < 3 or not (err_arr > 0).all():
        raise ValueError("a law needs at least 3 points, each with an error > 0")
    n0 = float(n_arr.min())
    u, log_err = n_arr / n0, np.log(err_arr)
    # E in [0, the largest error], A > 0 through its log, alpha in [0, ALPHA_MAX]
    lower, upper = np.array([0.0, -30.0, 0.0]), np.array([float(err_arr.max()), 30.0, ALPHA_MAX])
    if start is not None:
        starts = [(start.E, math.log(max(start.A, 1e-12)), start.alpha)]
    else:
        low = float(err_arr.min())
        starts = [(e_frac * low, math.log(max(err_arr[0] - e_frac * low, 1e-6)), a)
                  for e_frac in (0.1, 0.5, 0.9) for a in (0.2, 0.5, 1.0)]
    best = None
    inside = (upper - lower) * 1e-6
    for x0 in starts:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            res = least_squares(_residuals, np.clip(np.array(x0, float), lower + inside, upper - inside),
                                jac=_jacobian, args=(u, log_err), bounds=(lower, upper), method="dogbox",
                                loss="soft_l1", f_scale=F_SCALE)
        if np.isfinite(res.cost) and (best is None or res.cost < best.cost):
            best = res
    if best is None:
        raise ValueError("the fit did not converge")
    e, log_a, alpha = (float(v) for v in best.x)
    return Law(e, math.exp(log_a), alpha, n0)


@dataclass(frozen=True)
class ScalingFit:
    """One depth's law, its bootstrap intervals and its hold-out check (accuracies in percent, gains in points)."""

    depth: int
    alpha: float = math.nan
    alpha_low: float = math.nan
    alpha_high: float = math.nan
    E: float = math.nan  # error at infinite N, percent (100 - E is the accuracy the law tends to)
    next_doubling_gain: float = math.nan  # accuracy the law gives at twice the widest width, minus at the widest
    holdout_width: int | None = None  # the widest width, left out of the hold-out fit
    holdout_predicted: float = math.nan  # its accuracy as the fit without it predicts
    holdout_measured: float = math.nan  # its mean accuracy over the seeds
    holdout_error: float = math.nan  # measured - predicted, points
    E_low: float = math.nan
    E_high: float = math.nan
    next_doubling_gain_low: float = math.nan
    next_doubling_gain_high: float = math.nan
    holdout_low: float = math.nan  # bootstrap interval of measured - predicted
    holdout_high: float = math.nan
    holdout_passed: bool | None = None  # that interval contains 0; None when there is no hold-out
    n_widths: int = 0
    n_seeds: int = 0
    reason: str = ""  # why there is no fit

    def row(self) -> dict[str, object]:
        return asdict(self)


def _quantiles(values: list[float], confidence: float) -> tuple[float, float]:
    v = np.asarray([x for x in values if math.isfinite(x)])
    if len(v) == 0:
        return (math.nan, math.nan)
    q = np.quantile(v, [(1 - confidence) / 2, (1 + confidence) / 2])
    return (float(q[0]), float(q[1]))


def fit_depth(depth: int, widths: Sequence[int], n_params: Sequence[int], next_params: int,
              accuracy: np.ndarray, floor: float = 1e-3, confidence: float = 0.95, n_boot: int = N_BOOT,
              seed: int = 0) -> ScalingFit:
    """The law of one depth from ``accuracy`` (widths x seeds, percent; column j is one seed in every row).

    ``n_params``: each width's parameter count; ``next_params``: at twice the widest width. ``floor``: the
    smallest error a mean is taken to have (percent; half an example of the test set), for the logarithm.
    """
    acc = np.asarray(accuracy, float)
    n_w, n_s = acc.shape if acc.ndim == 2 else (0, 0)
    if n_w < MIN_WIDTHS:
        return ScalingFit(depth, n_widths=n_w, n_seeds=n_s, reason=f"{n_w} widths: a fit needs {MIN_WIDTHS}")
    if n_s < 2:
        return ScalingFit(depth, n_widths=n_w, n_seeds=n_s, reason="a bootstrap over seeds needs 2 seeds")
    n = np.asarray(n_params, float)

    def laws(means: np.ndarray, start: tuple[Law, Law] | None) -> tuple[Law, Law]:
        err = np.maximum(100 - means, floor)
        return (fit_law(n, err, start[0] if start else None), fit_law(n[:-1], err[:-1], start[1] if start else None))

    means = acc.mean(1)
    try:
        full, held = laws(means, None)
    except ValueError as e:
        return ScalingFit(depth, n_widths=n_w, n_seeds=n_s, reason=str(e))
    gain = float(full.err(n[-1]) - full.err(next_params))
    predicted = float(100 - held.err(n[-1]))
    rng = np.random.default_rng(seed)
    alphas, es, gains, misses = [], [], [], []
    for _ in range(n_boot):
        m = acc[:, rng.integers(0, n_s, n_s)].mean(1)
        try:
            f, h = laws(m, (full, held))
        except ValueError:
            continue
        alphas.append(f.alpha)
        es.append(f.E)
        gains.append(float(f.err(n[-1]) - f.err(next_params)))
        misses.append(float(m[-1] - (100 - h.err(n[-1]))))
    a_lo, a_hi = _quantiles(alphas, confidence)
    e_lo, e_hi = _quantiles(es, confidence)
    g_lo, g_hi = _quantiles(gains, confidence)
    h_lo, h_hi = _quantiles(misses, confidence)
    return ScalingFit(depth, full.alpha, a_lo, a_hi, full.E, gain, int(widths[-1]), predicted, float(means[-1]),
                      float(means[-1]) - predicted, e_lo, e_hi, g_lo, g_hi, h_lo, h_hi,
                      bool(h_lo <= 0 <= h_hi) if math.isfinite(h_lo) else None, n_w, n_s)


def scaling_text(f: ScalingFit, where: str) -> str:
    """One sentence: the law, its interval, and whether it passed its hold-out."""
    if f.reason:
        return f"{where}: no scaling fit ({f.reason})."
    check = ("passed its hold-out" if f.holdout_passed else "failed its hold-out" if f.holdout_passed is not None
             else "has no hold-out interval")
    return (f"{where}: err(N) = {f.E:.2f} + A N^-{f.alpha:.2f} (alpha 95% [{f.alpha_low:.2f}, {f.alpha_high:.2f}]); "
            f"widening {f.holdout_width} to {2 * (f.holdout_width or 0)} would add {f.next_doubling_gain:+.2f} points "
            f"[{f.next_doubling_gain_low:+.2f}, {f.next_doubling_gain_high:+.2f}]; the fit {check}: without width "
            f"{f.holdout_width} it predicts {f.holdout_predicted:.2f}%, measured {f.holdout_measured:.2f}% "
            f"({f.holdout_error:+.2f} points, interval [{f.holdout_low:+.2f}, {f.holdout_high:+.2f}]).")
