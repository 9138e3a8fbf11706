"""Exact tests that need no normality: the sign-flip test (paired) and the permutation test.

Paired values: under H0 each difference d_i = b_i - a_i is as likely +|d_i| as -|d_i|, so the
2^n sign patterns s give the null distribution of mean(s * d). Unpaired: under H0 the labels
are exchangeable, so the C(n_a + n_b, n_b) ways to pick the b group from the pooled values give
the null distribution of mean(b) - mean(a). A one-sided p value is the share of patterns at
least as extreme as the observed statistic, counted with a tolerance of float rounding so that
exact ties count (``TIE_RTOL`` times the data's scale: max |d_i| paired, max |value| of the
pooled values unpaired, so scaling the data does not change p); the two-sided p is twice the
smaller one (at most 1), as scipy's ``permutation_test`` has it. That equals the share of
patterns with |stat| >= |observed| when the null distribution is symmetric about 0: always
for the sign-flip test (flipping every sign negates the statistic), and for the permutation
test when n_a == n_b (swapping the groups negates it). With n_a != n_b the permutation null
can be skewed, and the two can differ.
Every pattern is enumerated up to ``MAX_EXACT`` patterns; above that (n > 17 paired, e.g.
10 + 10 unpaired is still exact) ``RESAMPLES`` random patterns from a fixed seed, with
p = (hits + 1) / (RESAMPLES + 1).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from itertools import combinations
from typing import Literal

import numpy as np

__all__ = ["MAX_EXACT", "exact_floor", "exact_p"]

MAX_EXACT = 200_000
RESAMPLES = 100_000
TIE_RTOL = 1e-9  # ties: within this share of the data's scale (max |d|, or max |value|)


def exact_floor(n_a: int, n_b: int, *, paired: bool) -> float:
    """The smallest two-sided p the exact test can give at these seeds."""
    return 2.0 / 2.0 ** n_a if paired else 2.0 / math.comb(n_a + n_b, n_b)


def _p(null: np.ndarray, observed: float, alternative: str, patterns: int, exact: bool,
       scale: float) -> float:
    tol = TIE_RTOL * scale  # relative: the same data in other units gives the same p
    if alternative == "two-sided":  # twice the smaller tail (scipy's rule)
        return min(1.0, 2 * min(_p(null, observed, "greater", patterns, exact, scale),
                                _p(null, observed, "less", patterns, exact, scale)))
    if alternative == "greater":
        hits = int(np.sum(null >= observed - tol))
    else:
        hits = int(np.sum(null <= observed + tol))
    return hits / patterns if exact else (hits + 1) / (patterns + 1)


def exact_p(a: Sequence[float], b: Sequence[float], *, paired: bool,
            alternative: Literal["two-sided", "greater", "less"] = "two-sided") -> float:
    """p of H0 "b and a come from the same distribution" (paired: symmetric differences);
    `alternative` "greater": mean(b) - mean(a) > 0 under the alternative."""
    xa, xb = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if not (np.all(np.isfinite(xa)) and np.all(np.isfinite(xb))):
        raise ValueError("exact_p: every value must be finite (a diverged seed is untestable)")
    if paired:
        if xa.shape != xb.shape:
            raise ValueError(f"exact_p: a paired test needs one value per seed in both arms "
                             f"({xa.size} vs {xb.size})")
        d = xb - xa
        n = d.size
        if 2 ** n <= MAX_EXACT:
            exact = True
            signs = 1 - 2 * ((np.arange(2 ** n)[:, None] >> np.arange(n)) & 1)  # (2^n, n)
        else:
            exact = False
            signs = np.random.default_rng(0).choice([-1, 1], size=(RESAMPLES, n))
        null = signs @ d / n  # (patterns,)
        return _p(null, float(d.mean()), alternative, len(null), exact,
                  float(np.max(np.abs(d))))
    pooled = np.concatenate([xa, xb])
    n, nb = pooled.size, xb.size
    total = pooled.sum()
    if math.comb(n, nb) <= MAX_EXACT:
        exact = True
        picks = np.array(list(combinations(range(n), nb)), dtype=np.int64)  # (C, nb)
    else:
        exact = False
        rng = np.random.default_rng(0)
        picks = np.argsort(rng.random((RESAMPLES, n)), axis=1)[:, :nb]
    sum_b = pooled[picks].sum(axis=1)
    null = sum_b / nb - (total - sum_b) / xa.size
    return _p(null, float(xb.mean() - xa.mean()), alternative, len(null), exact,
              float(np.max(np.abs(pooled))))
