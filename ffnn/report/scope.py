"""The new-images scope: a comparison's standard error when the test images, too, are a sample (numpy only).

Seeds vary the initialisation and the batch order, never the 10,000 test images, so the seed-to-seed
interval says what the models do on *these* images. On new images from the same distribution the
difference also carries the test set's sampling error. With D[s, i] = correct_b[s, i] - correct_a[s, i]
(1, 0 or -1) for seed s and image i, the two-way crossed random-effects model
D[s, i] = mu + alpha_s + beta_i + eps_si (seeds and images both random) gives

    Var(mean D) = s2_seed / n + s2_image / N + s2_resid / (n N),

estimated without bias from the two-way ANOVA mean squares (MS_seed + MS_image - MS_resid) / (n N)
(S. R. Searle, G. Casella and C. E. McCulloch, Variance Components, Wiley 1992, ch. 4; the test
set as a source of variance as in X. Bouthillier et al., Accounting for variance in machine learning
benchmarks, MLSys 2021). MS_seed / (n N) is exactly the paired t-test's squared standard error, so
the new-images variance is that plus (MS_image - MS_resid) / (n N), the test-image term, kept >= 0.
Degrees of freedom: Welch-Satterthwaite over the two terms (the report uses the seeds' n - 1 instead,
the conservative choice). The tests check it against Owen's
pigeonhole (two-way) bootstrap (A. B. Owen, Ann. Appl. Stat. 1, 2007, 386-411).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class NewImages:
    se: float  # points: standard error of the difference on new images (seeds and test images sampled)
    df: float  # Welch-Satterthwaite degrees of freedom
    images_se: float  # points: the test-image term alone, what no number of seeds removes


def new_images_se(correct_a: np.ndarray, correct_b: np.ndarray) -> NewImages:
    """Per-image correctness (n seeds, N images) of a and b, rows paired by seed -> the new-images error.

    Rows may hold fractions (a failed seed scored at chance: 1 / classes on every image).
    ``new_images_se(np.eye(3)[[0, 1]], np.eye(3)[[1, 2]]).se`` -> 100 * sqrt(var(mean D)) estimate
    """
    d = np.asarray(correct_b, np.float64) - np.asarray(correct_a, np.float64)  # (n, N)
    n, big_n = d.shape
    if n < 2 or big_n < 2:
        return NewImages(math.nan, math.nan, math.nan)
    per_seed, per_image = d.mean(1), d.mean(0)
    ms_seed = big_n * per_seed.var(ddof=1)
    ms_image = n * per_image.var(ddof=1)
    ss_total = float(((d - d.mean()) ** 2).sum())
    ss_resid = ss_total - (n - 1) * ms_seed - (big_n - 1) * ms_image
    ms_resid = max(ss_resid, 0.0) / ((n - 1) * (big_n - 1))
    v_seed = ms_seed / (n * big_n)
    v_image = max(ms_image - ms_resid, 0.0) / (n * big_n)
    total = v_seed + v_image
    if total == 0:
        return NewImages(0.0, math.nan, 0.0)
    df = total ** 2 / (v_seed ** 2 / (n - 1) + v_image ** 2 / (big_n - 1))
    return NewImages(100 * math.sqrt(total), float(df), 100 * math.sqrt(v_image))


def pigeonhole_bootstrap_se(correct_a: np.ndarray, correct_b: np.ndarray, reps: int = 2000,
                            seed: int = 0) -> float:
    """Owen's two-way bootstrap of mean(D): seeds and images resampled independently (for the tests).

    It overstates the variance by about the residual term (Owen 2007, section 3), so it bounds the
    analytic estimate from above by a little.
    """
    d = np.asarray(correct_b, np.float64) - np.asarray(correct_a, np.float64)
    n, big_n = d.shape
    rng = np.random.default_rng(seed)
    means = np.empty(reps)
    for r in range(reps):
        rows = np.bincount(rng.integers(0, n, n), minlength=n)
        cols = np.bincount(rng.integers(0, big_n, big_n), minlength=big_n)
        means[r] = rows @ d @ cols / (n * big_n)
    return float(100 * means.std(ddof=1))
