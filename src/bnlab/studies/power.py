"""The power side of a primary comparison (``bnlab.studies.claims``): its minimum detectable
effect and its equivalence test against the claim's margin.

The minimum detectable effect (MDE): the |b - a| that a two-sided t-test at level
ALPHA / m (Holm's first step over m claims) finds with POWER = 0.8, from the noncentral t
with the observed spread: power(delta) = P(|T'| > t_crit), T' ~ t(df, delta / se); 0 when
the values have no spread (``stats.no_spread``, as ``compare``). Infinite when the exact test
cannot reach ALPHA / m at these seeds (then nothing can be called). It is the t-test's MDE:
below EXACT_BELOW seeds "clear" also needs the exact test, so an effect beyond it can still
be "not shown" ("not shown (the exact test does not agree)": ``claims.wording``).

TOST (two one-sided tests) against +-margin: p_tost = max(P(t <= (diff + margin) / se) upper,
P(t >= (diff - margin) / se) lower) = max of the one-sided p values of H0: diff <= -margin and
H0: diff >= +margin; for n < 8 the exact one-sided tests of the shifted values stand beside
them (the larger p counts). ``claims.judge`` Holm-corrects it over the family like the others.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from scipy import stats as sps
from scipy.optimize import brentq

from bnlab.studies.exact import exact_p
from bnlab.studies.stats import ALPHA, data_scale, no_spread, t_se_df

__all__ = ["EXACT_BELOW", "POWER", "mde", "se_df", "tost"]

EXACT_BELOW = 8  # seeds below which the exact test must agree for "clear"
POWER = 0.8


def mde(se: float, df: float, m: int = 1, *, alpha: float = ALPHA,
        power: float = POWER) -> float:
    """Smallest |diff| a two-sided t-test at level alpha / m detects with `power` (module
    docstring), for standard error `se` and `df` degrees of freedom."""
    if not (math.isfinite(se) and math.isfinite(df)) or df <= 0:
        return math.nan
    if se == 0:
        return 0.0
    level = alpha / max(1, m)
    crit = float(sps.t.ppf(1 - level / 2, df))

    def short(nc: float) -> float:  # power at noncentrality nc, minus the target
        upper = float(sps.nct.sf(crit, df, nc))
        lower = float(sps.nct.cdf(-crit, df, nc))  # the wrong tail: tiny, NaN far out
        return upper + (lower if math.isfinite(lower) else 0.0) - power

    hi = crit + 10.0
    while short(hi) < 0:
        hi *= 2
    return float(brentq(short, 0.0, hi, xtol=1e-10)) * se


def se_df(a: Sequence[float], b: Sequence[float], paired: bool) -> tuple[float, float]:
    """Standard error and degrees of freedom of mean(b) - mean(a), as ``stats.compare`` tests
    it (``stats.t_se_df``; a spread below its threshold, ``no_spread``, is none: 0, with
    Welch's df then n_a + n_b - 2 as there)."""
    se, df = t_se_df(a, b, paired)
    if no_spread(se, data_scale(a, b)):
        return 0.0, (df if paired else float(len(a) + len(b) - 2))
    return se, df


def tost(a: Sequence[float], b: Sequence[float], margin: float, *, paired: bool) -> float:
    """TOST p of |mean(b) - mean(a)| < margin: the larger of the two one-sided t-tests (and,
    for n < EXACT_BELOW, of the two exact one-sided tests of the shifted values)."""
    se, df = se_df(a, b, paired)
    diff = sum(b) / len(b) - sum(a) / len(a)
    if se > 0:
        p_t = max(float(sps.t.sf((diff + margin) / se, df)),
                  float(sps.t.cdf((diff - margin) / se, df)))
    else:  # no spread: t is infinite, so the exact tests below decide
        p_t = 0.0 if abs(diff) < margin else 1.0
    if min(len(a), len(b)) >= EXACT_BELOW:
        return p_t
    up = [v + margin for v in b]  # H0: diff <= -margin, against diff > -margin
    down = [v - margin for v in b]  # H0: diff >= +margin, against diff < +margin
    return max(p_t, exact_p(a, up, paired=paired, alternative="greater"),
               exact_p(a, down, paired=paired, alternative="less"))
