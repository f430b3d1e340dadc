"""A score on 100 items is one draw: intervals for a cell, and paired tests for a change between two rows
scored on the same items."""
from __future__ import annotations

import math

import numpy as np


ALPHA = 0.05  # the card marks a change only when its paired test gives p < ALPHA


def binomial_ci(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval (Wilson 1927) for a share of k successes out of n: the values of p that a z-test
    at k/n would not reject. Unlike k/n ± z sqrt(p (1-p) / n), it stays inside [0, 1] and is not a single
    point at k = 0 or k = n (0 of 10 right still allows a true rate up to 28%)."""
    if n < 1 or not 0 <= k <= n:
        raise ValueError(f"binomial_ci needs n >= 1 and 0 <= k <= n, got k={k}, n={n}")
    p, z2 = k / n, z * z
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / (1 + z2 / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def _bootstrap_means(x: np.ndarray, n_boot: int, seed: int) -> np.ndarray:
    """Means of n_boot resamples of x (n items drawn with replacement) -> (n_boot,)."""
    idx = np.random.default_rng(seed).integers(0, len(x), size=(n_boot, len(x)))
    return x[idx].mean(axis=1)


def bootstrap_ci(values, n_boot: int = 4000, seed: int = 0, level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of `values` (Efron & Tibshirani 1993, ch. 13)."""
    x = np.asarray(values, dtype=np.float64)
    if len(x) < 1:
        raise ValueError("bootstrap_ci needs at least one value")
    lo, hi = np.quantile(_bootstrap_means(x, n_boot, seed), [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)


def score_interval(values) -> tuple[float, float]:
    """The card's 95% interval of a column's mean: Wilson when every item scores 0 or 1, else the bootstrap."""
    x = np.asarray(values, dtype=np.float64)
    if len(x) and np.isin(x, (0.0, 1.0)).all():
        return binomial_ci(int(x.sum()), len(x))
    return bootstrap_ci(x)


def paired_difference(a, b, n_boot: int = 4000, seed: int = 0) -> dict:
    """Is mean(a) - mean(b) real? a[i] and b[i] score the same item i (two checkpoints on one eval split), so
    resample items, not scores: the bootstrap of the per-item differences d = a - b.
    -> dict(diff=mean(d), lo, hi (its 95% percentile interval), p (two-sided)). p comes from the bootstrap
    shifted to the null of no difference (Efron & Tibshirani 1993, sec. 16.4): the share of resampled means
    at least as far from mean(d) as mean(d) is from 0, counting the observed one (so p >= 1/(n_boot+1)).
    Items both get right, or both get wrong, add nothing: only the items that changed carry evidence."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1 or len(a) < 1:
        raise ValueError(f"paired_difference needs two score lists of one equal length, got {a.shape} and {b.shape}")
    d = a - b
    diff = float(d.mean())
    boot = _bootstrap_means(d, n_boot, seed)
    lo, hi = np.quantile(boot, [0.025, 0.975])
    p = 1.0 if diff == 0 else float((1 + np.sum(np.abs(boot - diff) >= abs(diff))) / (n_boot + 1))
    return {"diff": diff, "lo": float(lo), "hi": float(hi), "p": p}


def mcnemar_p(a, b) -> float:
    """Exact McNemar test (McNemar 1947) for two 0/1 score lists on the same items: of the items whose score
    changed, u went up and v went down; under no difference each change is a fair coin, so
    p = P(a Binomial(u + v, 1/2) is as lopsided as min(u, v)), two-sided. 1.0 when nothing changed."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1 or not (np.isin(a, (0.0, 1.0)).all() and np.isin(b, (0.0, 1.0)).all()):
        raise ValueError("mcnemar_p needs two 0/1 score lists of one equal length")
    up, down = int(np.sum(a > b)), int(np.sum(a < b))
    n = up + down
    tail = sum(math.comb(n, i) for i in range(min(up, down) + 1))  # an exact integer; 2**n is too
    return min(1.0, 2 * tail / 2**n)


def paired_test(a, b) -> dict:
    """The card's test of a change on the same items -> dict(diff, lo, hi, p): paired_difference, with p from
    the exact McNemar test when every score is 0 or 1 (the bootstrap's p is too small when few items changed)."""
    test = paired_difference(a, b)
    if np.isin(a, (0.0, 1.0)).all() and np.isin(b, (0.0, 1.0)).all():
        test["p"] = mcnemar_p(a, b)
    return test


# ----------------------------------------------------------------------------------------------------------------
# the report card
